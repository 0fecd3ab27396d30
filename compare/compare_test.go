package compare

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestProbesWellFormed: at least 12 probes, unique names, each with an
// RFC clause, a description and a script.
func TestProbesWellFormed(t *testing.T) {
	ps := Probes()
	if len(ps) < 12 {
		t.Errorf("%d probes, want at least 12", len(ps))
	}
	seen := map[string]bool{}
	for _, p := range ps {
		if seen[p.Name] || p.Name == "" || p.RFC == "" || p.Doc == "" || p.run == nil {
			t.Errorf("probe %+v: duplicate or incomplete", p)
		}
		seen[p.Name] = true
	}
}

func TestVerdict(t *testing.T) {
	for _, c := range []struct {
		p    Probe
		r    Result
		want string
	}{
		{Probe{}, Result{Same: true}, ""},
		{Probe{Allowed: 2}, Result{Kernel: "a", Netstack: "b"}, "allowed (docs/DIFFERENCES.md #2)"},
		{Probe{Expect: "b"}, Result{Kernel: "a", Netstack: "b"}, "kernel differs from the RFC"},
		{Probe{Expect: "a"}, Result{Kernel: "a", Netstack: "b"}, "bug"},
		{Probe{}, Result{Kernel: "a", Netstack: "b"}, "bug"},
		{Probe{Allowed: 2}, Result{Kernel: "a", Netstack: "error: no SYN-ACK within 2s"}, "probe failed"},
		{Probe{}, Result{Kernel: "error: x", Netstack: "error: x", Same: true}, "probe failed"},
	} {
		if got := verdict(c.p, c.r); got != c.want {
			t.Errorf("verdict(%+v, %+v) = %q, want %q", c.p, c.r, got, c.want)
		}
	}
}

func TestOptionNames(t *testing.T) {
	got := strings.Join(optionNames(fullOpts.encode(7)), ", ")
	if got != "MSS 1460, SACK-perm, TS, wscale" {
		t.Errorf("optionNames = %q", got)
	}
	if got := optionNames(nil); len(got) != 0 {
		t.Errorf("no options: %v", got)
	}
	// A truncated option ends the walk instead of looping or panicking.
	if got := optionNames([]byte{header.TCPOptionMSS, 4, 5}); len(got) != 0 {
		t.Errorf("truncated MSS: %v", got)
	}
}

func TestIntervals(t *testing.T) {
	at := func(ms ...int) []timed {
		var s []timed
		t0 := time.Unix(0, 0)
		for _, m := range ms {
			s = append(s, timed{at: t0.Add(time.Duration(m) * time.Millisecond)})
		}
		return s
	}
	for _, c := range []struct {
		segs []timed
		want string
	}{
		{at(0, 200, 600, 1400, 3000), "intervals ×2 ×2"},
		{at(0, 200, 400, 600), "intervals ×1 ×1"},
		{at(0, 210, 590, 1420), "intervals ×2 ×2"}, // jitter
		{at(0, 200), "only 2 segments"},
	} {
		if got := intervals(c.segs); got != c.want {
			t.Errorf("intervals = %q, want %q", got, c.want)
		}
	}
}

func TestReportJSON(t *testing.T) {
	r := &Report{Probes: []Result{{Name: "paws", Kernel: "x", Netstack: "x", Same: true, RFC: "RFC 7323"}}}
	var b bytes.Buffer
	if err := r.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var back struct {
		Probes []map[string]any `json:"probes"`
	}
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || len(back.Probes) != 1 {
		t.Fatalf("%v: %s", err, b.String())
	}
	for _, k := range []string{"name", "kernel", "netstack", "same", "rfc"} {
		if _, ok := back.Probes[0][k]; !ok {
			t.Errorf("no %q in %s", k, b.String())
		}
	}
	b.Reset()
	if err := r.WriteTable(&b); err != nil || !strings.Contains(b.String(), "paws") || !strings.Contains(b.String(), "1 of 1 probes the same") {
		t.Errorf("table: %v\n%s", err, b.String())
	}
}
