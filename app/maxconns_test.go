package app

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// TestMaxConns: at MaxConns open connections one more is closed at once
// (EOF, no "connected" line) and counted; when one leaves there is room
// again. On loopback with the kernel's TCP, no privileges needed.
func TestMaxConns(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(ln, ServerOptions{MaxConns: 2}, nil)
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		if err := <-served; err != nil {
			t.Error(err)
		}
	}()
	dial := func() net.Conn {
		t.Helper()
		c, err := net.DialTimeout("tcp4", ln.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		return c
	}
	echo := func(c net.Conn) error {
		if _, err := io.WriteString(c, "abc\n"); err != nil {
			return err
		}
		b := make([]byte, 4)
		if _, err := io.ReadFull(c, b); err != nil {
			return err
		}
		if string(b) != "ABC\n" {
			t.Fatalf("reply %q", b)
		}
		return nil
	}
	a, b := dial(), dial()
	defer a.Close()
	defer b.Close()
	for _, c := range []net.Conn{a, b} {
		if err := echo(c); err != nil {
			t.Fatalf("one of the first two: %v", err)
		}
	}
	c := dial()
	defer c.Close()
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("third at MaxConns 2: read %d bytes, %v; want EOF", n, err)
	}
	if n := srv.Refused(); n != 1 {
		t.Fatalf("Refused() = %d, want 1", n)
	}
	a.Close()
	deadline := time.Now().Add(5 * time.Second)
	for srv.Conns() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("Conns() = %d after one client left, want 1", srv.Conns())
		}
		time.Sleep(5 * time.Millisecond)
	}
	d := dial()
	defer d.Close()
	if err := echo(d); err != nil {
		t.Fatalf("after one left: %v", err)
	}
}
