package tests

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/bench"
	"github.com/tcp-upper/tcp-upper/lab"
)

// TestBench runs tcp-upper-lab bench briefly (rr, tun-floor and connrate,
// one round, pinned) and checks its JSON: positive figures on both sides,
// ratios and the targets, connrate's own client ports, and no lab
// left behind.
func TestBench(t *testing.T) {
	requireRoot(t)
	name := labName("bench")
	code, out, stderr := runCmd(t, 60*time.Second, nil, bin("tcp-upper-lab"), "bench", "--name", name,
		"--only", "rr,connrate,tun-floor", "--pin", "--rounds", "1", "--json", "--duration", "500ms", "--rr-count", "2000", "--conns", "300")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep bench.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("JSON: %v\n%s", err, out)
	}
	got := map[string]*bench.Figure{}
	for _, f := range rep.Figures {
		got[f.Name] = f
	}
	names := []string{"rr-p50", "rr-p99", "tun-floor-p50", "tun-floor-p99", "connrate", "connrate-p50", "connrate-p99"}
	for _, name := range names {
		f := got[name]
		if f == nil {
			t.Errorf("no %s in %s", name, out)
			continue
		}
		test := "netstack"
		if strings.HasPrefix(name, "tun-floor") {
			test = "tun-reflector"
		}
		if f.Base.Label != "kernel" || f.Test.Label != test {
			t.Errorf("%s: sides %q/%q", name, f.Base.Label, f.Test.Label)
		}
		if len(f.Base.Values) != 1 || len(f.Test.Values) != 1 || f.Base.Median <= 0 || f.Test.Median <= 0 || f.Ratio.Median <= 0 {
			t.Errorf("%s: want one positive value per stack and a ratio: %+v", name, f)
		}
	}
	if f := got["rr-p50"]; f != nil && (f.Target == nil || f.Target.Op != "<=" || f.Target.Value != 1.2) {
		t.Errorf("rr-p50 target %+v, want <= 1.2", f.Target)
	}
	if len(rep.Figures) != len(names) {
		t.Errorf("%d figures, want only %v", len(rep.Figures), names)
	}
	if rep.Pinned != "client on CPU 0, servers on CPU 1" {
		t.Errorf("pinned %q", rep.Pinned)
	}
	for _, want := range []string{"bench: round 1/1 connrate netstack:", "(client ports 33024-49279, none used before;", "(client ports 49280-65535, none used before;"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("no %q on stderr: %q", want, stderr)
		}
	}
	if l, _ := lab.New(name, nil); l.Exists() {
		l.Down()
		t.Errorf("bench left its lab %s behind", name)
	}
}

// TestBenchErrors: bad flags give one line (a missing root: see
// TestLabCommandsNeedRoot).
func TestBenchErrors(t *testing.T) {
	code, _, stderr := runCmd(t, 10*time.Second, nil, bin("tcp-upper-lab"), "bench", "--only", "nope")
	if code != 2 {
		t.Errorf("--only nope: exit %d, want 2", code)
	}
	oneLine(t, "--only nope", stderr, "tcp-upper-lab bench", "connrate")
	code, _, stderr = runCmd(t, 10*time.Second, nil, bin("tcp-upper-lab"), "bench", "--name", "Bad_Name")
	if code != 2 {
		t.Errorf("--name Bad_Name: exit %d, want 2", code)
	}
	oneLine(t, "--name Bad_Name", stderr, "tcp-upper-lab bench", "bad lab name")
}
