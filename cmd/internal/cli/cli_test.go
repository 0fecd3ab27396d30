package cli

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestHostPrefix(t *testing.T) {
	p, err := ParseHostPrefix("10.0.2.2/24")
	if err != nil {
		t.Fatal(err)
	}
	if FirstHost(p).String() != "10.0.2.1/24" || LastAddr(p).String() != "10.0.2.255" {
		t.Fatalf("first %s last %s", FirstHost(p), LastAddr(p))
	}
	p, _ = ParseHostPrefix("172.16.5.9/12")
	if FirstHost(p).String() != "172.16.0.1/12" || LastAddr(p).String() != "172.31.255.255" {
		t.Fatalf("first %s last %s", FirstHost(p), LastAddr(p))
	}
}

func TestExit(t *testing.T) {
	var b bytes.Buffer
	if Exit(&b, "p", nil) != 0 || b.Len() != 0 {
		t.Fatal("nil error")
	}
	if Exit(&b, "p", Usagef("bad %s\nthing", "x")) != 2 || b.String() != "p: bad x thing\n" {
		t.Fatalf("usage error: %q", b.String())
	}
	b.Reset()
	if Exit(&b, "p", errors.New("boom")) != 1 || b.String() != "p: boom\n" {
		t.Fatalf("error: %q", b.String())
	}
}

// TestParseSaysTheForm: a value of the wrong form gets what the form is,
// not the flag package's bare "parse error".
func TestParseSaysTheForm(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--time-wait", "5"}, `bad --time-wait "5": want a duration such as 10s, 500ms or 1m30s (a number needs its unit)`},
		{[]string{"--time-wait=abc"}, `bad --time-wait "abc": want a duration such as 10s, 500ms`},
		{[]string{"--max-conns", "ten"}, `bad --max-conns "ten": want a whole number`},
		{[]string{"--offload=maybe"}, `bad --offload "maybe": want true or false (--offload=false)`},
	} {
		fs := NewFlagSet("p", &bytes.Buffer{}, "p")
		fs.Duration("time-wait", time.Second, "")
		fs.Int("max-conns", 0, "")
		fs.Bool("offload", true, "")
		err := Parse(fs, tc.args)
		var b bytes.Buffer
		if Exit(&b, "p", err) != 2 || b.String() != "p: "+tc.want+"\n" && !strings.HasPrefix(b.String(), "p: "+tc.want) {
			t.Errorf("%v: %q, want %q", tc.args, b.String(), tc.want)
		}
		if strings.Contains(b.String(), "parse error") {
			t.Errorf("%v: still says parse error: %q", tc.args, b.String())
		}
	}
}

// Only: each known name once, in the list's order; an empty list is nil;
// an unknown name is an error naming it and listing the known ones.
func TestOnly(t *testing.T) {
	known := []string{"rr", "connrate", "paws"}
	got, err := Only("paws, rr,paws", known, "probe")
	if err != nil || !slices.Equal(got, []string{"paws", "rr"}) {
		t.Errorf("Only = %v, %v; want [paws rr]", got, err)
	}
	if got, err := Only("", known, "probe"); err != nil || got != nil {
		t.Errorf("Only(\"\") = %v, %v", got, err)
	}
	if _, err := Only("rr,nope", known, "figure"); err == nil || err.Error() != `unknown figure "nope": want one of rr, connrate, paws` {
		t.Errorf("Only(nope) error %v", err)
	}
}
