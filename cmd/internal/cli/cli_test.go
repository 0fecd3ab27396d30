package cli

import (
	"bytes"
	"errors"
	"testing"
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
