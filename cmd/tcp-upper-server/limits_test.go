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

// TestKernelStackFlags: the flags that serve both stacks are accepted with
// --stack kernel (the others are refused, see TestBadFlags).
func TestKernelStackFlags(t *testing.T) {
	c, err := parseFlags([]string{"--stack", "kernel", "-p", "8000", "--idle-close", "1s", "--max-conns", "5", "--user-timeout", "2s", "--log-level", "info"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.stack != "kernel" || c.port != 8000 || c.idle != time.Second || c.maxConns != 5 || c.userTO != 2*time.Second {
		t.Fatalf("got %+v", c)
	}
}
