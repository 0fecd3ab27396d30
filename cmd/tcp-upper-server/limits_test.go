package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestLimitFlags: --max-conns, --backlog and --user-timeout parse, and bad
// values exit 2 with one line naming the flag.
func TestLimitFlags(t *testing.T) {
	c, err := parseFlags([]string{"--max-conns", "100", "--backlog", "16", "--user-timeout", "2s"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.maxConns != 100 || c.backlog != 16 || c.userTO != 2*time.Second {
		t.Fatalf("got max-conns %d backlog %d user-timeout %v", c.maxConns, c.backlog, c.userTO)
	}
	if c, err = parseFlags(nil, &bytes.Buffer{}); err != nil || c.maxConns != 0 || c.backlog != 4096 || c.userTO != 0 {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--max-conns", "-1"}, "bad --max-conns -1"},
		{[]string{"--backlog", "0"}, "bad --backlog 0"},
		{[]string{"--backlog", "70000"}, "bad --backlog 70000"},
		{[]string{"--user-timeout", "-1s"}, "bad --user-timeout -1s"},
		{[]string{"--stack", "kernel", "--backlog", "16"}, "--backlog is for --stack netstack"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), tc.args, &stdout, &stderr); code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", tc.args, code, stderr.String())
		}
		if msg := stderr.String(); strings.Count(msg, "\n") != 1 || !strings.Contains(msg, tc.want) {
			t.Errorf("%v: stderr %q, want one line containing %q", tc.args, msg, tc.want)
		}
	}
}
