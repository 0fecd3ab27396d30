package netstack_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/netstack"
)

// TestIdleConnectionsPark: on our stack an idle connection needs no
// goroutine (app.ReadNotifier): 200 connections that went quiet add far
// fewer than 200 goroutines, each still echoes when data comes, and
// Shutdown still ends every one with a FIN.
func TestIdleConnectionsPark(t *testing.T) {
	srv, cli := pair(t, plainLink, netstack.Options{}, netstack.Options{})
	ln, err := srv.Listen(9999)
	if err != nil {
		t.Fatal(err)
	}
	server := app.NewServer(ln, app.ServerOptions{}, nil)
	served := make(chan error, 1)
	go func() { served <- server.Serve() }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	exchange := func(c net.Conn, msg string) {
		t.Helper()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		if want := []byte(msg); string(got) != string(upper(want)) {
			t.Fatalf("echo %q for %q", got, msg)
		}
	}
	const n = 200
	before := runtime.NumGoroutine()
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := cli.Dial(ctx, netip.MustParseAddrPort("10.0.2.2:9999"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
		exchange(c, "hello\n")
	}
	// Quiet for longer than the server's 100 ms: every connection parks.
	var during int
	deadline := time.Now().Add(5 * time.Second)
	for {
		during = runtime.NumGoroutine()
		if during-before < 10 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("goroutines: %d before, %d with %d idle connections", before, during, n)
	if during-before >= n/4 {
		t.Fatalf("%d more goroutines for %d idle connections: they did not park", during-before, n)
	}
	for i, c := range conns {
		if i%10 == 0 {
			exchange(c, "wake up\n") // a parked connection resumes on data
		}
	}
	if err := server.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("conn %d after Shutdown: %v, want EOF", i, err)
		}
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if server.Conns() != 0 {
		t.Fatalf("%d connections left", server.Conns())
	}
}

// TestParkedIdleClose: IdleClose ends a parked connection on time.
func TestParkedIdleClose(t *testing.T) {
	srv, cli := pair(t, plainLink, netstack.Options{}, netstack.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := echo(ctx, t, srv, cli, app.ServerOptions{IdleClose: 500 * time.Millisecond})
	c.Write([]byte("abc"))
	io.ReadFull(c, make([]byte, 3))
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read: %v, want EOF from the idle close", err)
	}
	if took := time.Since(start); took < 400*time.Millisecond || took > 2*time.Second {
		t.Fatalf("idle close after %v, want about 500ms", took)
	}
}

func upper(b []byte) []byte { app.Upper(b); return b }
