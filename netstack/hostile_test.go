package netstack_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/internal/leakcheck"
	"github.com/tcp-upper/tcp-upper/netstack"
)

// TestResetBeforeAccept: a client that completes the handshake and resets
// the connection before the application accepts it used to crash the
// server (gonet's RemoteAddr is nil once the endpoint was reset, and the
// server printed it). An accepted connection keeps the 4-tuple it was
// accepted with: the server prints the peer connecting and leaving, and
// goes on serving.
func TestResetBeforeAccept(t *testing.T) { forLinks(t, testResetBeforeAccept) }

func testResetBeforeAccept(t *testing.T, l link) {
	leakcheck.Check(t)
	rs := newRawServer(t, l, netstack.Options{TimeWait: time.Second})
	c := rs.dial(t, 40001, 40001000, 0)
	c.reset()
	rs.waitResets(t, 1)

	conn := rs.accept(t)
	if got, want := fmt.Sprint(conn.RemoteAddr()), c.me.String(); got != want {
		t.Errorf("RemoteAddr of a reset connection = %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(conn.LocalAddr()), rawServerAddr.String(); got != want {
		t.Errorf("LocalAddr of a reset connection = %s, want %s", got, want)
	}
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Error("read on a reset connection succeeded")
	}
	conn.Close()

	// The same through the service: it prints the peer arriving and
	// leaving, then serves a fresh client.
	c2 := rs.dial(t, 40002, 40002000, 0)
	c2.reset()
	rs.waitResets(t, 2)
	rs.serve(app.ServerOptions{})
	waitFor(t, func() bool { return strings.Contains(rs.out.String(), c2.me.String()+" disconnected") })
	if !strings.Contains(rs.out.String(), c2.me.String()+" connected\n") {
		t.Errorf("server output %q lacks %s connected", rs.out.String(), c2.me)
	}
	rs.dial(t, 40003, 40003000, 0).echo("still serving")
}

// TestResetBeforeAcceptRefused: the same reset connection refused by
// --max-conns (the refusal logged the peer's address, and crashed).
func TestResetBeforeAcceptRefused(t *testing.T) { forLinks(t, testResetBeforeAcceptRefused) }

func testResetBeforeAcceptRefused(t *testing.T, l link) {
	leakcheck.Check(t)
	rs := newRawServer(t, l, netstack.Options{TimeWait: time.Second})
	held := rs.dial(t, 40001, 40001000, 0) // accepted first: the one place is taken
	// Accept takes connections in the order their handshakes completed.
	waitFor(t, func() bool { return rs.established(40001) })
	c := rs.dial(t, 40002, 40002000, 0)
	c.reset()
	rs.waitResets(t, 1)
	rs.serve(app.ServerOptions{MaxConns: 1})
	waitFor(t, func() bool { return rs.srv.Refused() == 1 })
	held.echo("still serving")
}
