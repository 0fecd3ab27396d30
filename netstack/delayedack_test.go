package netstack_test

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"

	"github.com/tcp-upper/tcp-upper/internal/leakcheck"
	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
	"github.com/tcp-upper/tcp-upper/netstack"
)

// Patch 0011 (third_party/patches/gvisor): delayed ACK, RFC 9293 3.8.6.3
// and RFC 1122 4.2.3.2. Upstream acknowledges every segment with data at
// once, so each request costs a pure ACK ahead of the reply.

// request sends payload as the client's next segment; the application
// reads it and, with reply, writes it back. It returns the server's
// segments up to and including the one that acknowledges the request.
func request(t *testing.T, c *rawClient, app net.Conn, payload []byte, reply bool) []rawtcp.Segment {
	t.Helper()
	c.next(header.TCPFlagAck|header.TCPFlagPsh, payload)
	if reply {
		buf := make([]byte, len(payload))
		app.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.ReadFull(app, buf); err != nil {
			t.Fatal(err)
		}
		if _, err := app.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	var got []rawtcp.Segment
	for {
		s, ok := c.awaitAck()
		if !ok {
			t.Fatalf("no ACK of the request within 2s; got %+v", got)
		}
		got = append(got, s)
		c.rcvNxt = seqnum.Value(s.Seq).Add(seqnum.Size(len(s.Payload)))
		if seqnum.Value(s.Ack) == c.sndNxt {
			if len(s.Payload) == 0 && reply {
				// The reply comes after the pure ACK.
				r, ok := c.await(2*time.Second, func(s rawtcp.Segment) bool { return len(s.Payload) > 0 })
				if !ok {
					t.Fatal("no reply within 2s")
				}
				c.rcvNxt = seqnum.Value(r.Seq).Add(seqnum.Size(len(r.Payload)))
			}
			if reply {
				c.next(header.TCPFlagAck, nil)
			}
			return got
		}
	}
}

// interactive opens a connection from port to a fresh rawServer and makes
// it interactive: the application has answered a first request at once.
// It returns the client and the application's end. It checks for leaked
// goroutines, so a test calls it first.
func interactive(t *testing.T, port uint16) (*rawClient, net.Conn) {
	t.Helper()
	leakcheck.Check(t)
	srv := newRawServer(t, plainLink, netstack.Options{})
	c := srv.dial(t, port, 1000, 0)
	app := srv.accept(t)
	request(t, c, app, []byte("interactive now"), true)
	return c, app
}

// Once the connection is interactive (we replied to a request at once),
// the ACK of a request rides on the reply: no pure ACK ahead of it.
func TestDelayedAckRidesOnTheReply(t *testing.T) {
	c, app := interactive(t, 40001)
	for i := range 5 {
		got := request(t, c, app, []byte("ping pong 16b ok"), true)
		if len(got) != 1 || !bytes.Equal(got[0].Payload, []byte("ping pong 16b ok")) {
			t.Fatalf("request %d: the server's first segment after it is %+v, want the reply carrying the ACK", i+2, got[0])
		}
	}
}

// Data nothing replies to is acknowledged by the delayed ACK timer: not
// at once, and well within RFC 1122's 0.5 s.
func TestDelayedAckTimer(t *testing.T) {
	c, app := interactive(t, 40002)
	start := time.Now()
	got := request(t, c, app, []byte("no reply to this"), false)
	el := time.Since(start)
	if len(got) != 1 || len(got[0].Payload) != 0 {
		t.Fatalf("want one pure ACK, got %+v", got)
	}
	wantDelayed(t, "the ACK", el)
}

// wantDelayed fails the test unless what (an ACK) came after el as a
// delayed ACK does: not at once (30 ms or more; gVisor's timer is 40 ms)
// and never past RFC 1122's 500 ms.
func wantDelayed(t *testing.T, what string, el time.Duration) {
	t.Helper()
	if el < 30*time.Millisecond || el > 500*time.Millisecond {
		t.Errorf("%s came after %v, want the delayed ACK: 30ms to 500ms", what, el)
	}
}

// At least every second full-sized segment is acknowledged at once
// (RFC 1122 4.2.3.2), even while ACKs are being delayed.
func TestDelayedAckEverySecondFullSegment(t *testing.T) {
	c, app := interactive(t, 40003)
	full := bytes.Repeat([]byte("x"), 1460)
	c.next(header.TCPFlagAck, full)
	start := time.Now()
	got := request(t, c, app, full, false)
	el := time.Since(start)
	if last := got[len(got)-1]; len(last.Payload) != 0 {
		t.Fatalf("want a pure ACK, got %+v", last)
	}
	if el > 25*time.Millisecond {
		t.Errorf("the ACK of two full-sized segments came after %v: want it at once, not by the 40ms timer", el)
	}
}
