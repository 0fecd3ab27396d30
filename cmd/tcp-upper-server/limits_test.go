package main

import (
	"bytes"
	"testing"
	"time"
)

// TestLimitFlags: --max-conns, --backlog and --user-timeout parse, with
// their defaults (their bad values are in TestBadFlags).
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
}
