package tun

import (
	"errors"
	"strings"
	"testing"
)

func TestPipe(t *testing.T) {
	a, b := Pipe("a", "b", 100)
	if _, err := a.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	n, err := b.Read(buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read %q %v", buf[:n], err)
	}
	if _, err := a.Write(make([]byte, 101)); err == nil {
		t.Fatal("a packet over the MTU was written")
	}
	for i := 0; i < PipeQueueLen+10; i++ {
		a.Write([]byte{1})
	}
	if a.Dropped() != 10 {
		t.Fatalf("dropped %d, want 10 (queue full)", a.Dropped())
	}
	b.Close()
	if _, err := b.Read(buf); !errors.Is(err, ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
}

func TestValidName(t *testing.T) {
	for _, ok := range []string{"tun0", "a", "up-0_x.y", "123456789012345"} {
		if err := ValidName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for name, want := range map[string]string{
		"":                 "empty",
		"1234567890123456": "at most 15",
		"a/b":              "'/'",
		"a b":              "' '",
		"..":               "not allowed",
		"tün":              "'ü'",
	} {
		if err := ValidName(name); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want error containing %q", name, err, want)
		}
	}
}
