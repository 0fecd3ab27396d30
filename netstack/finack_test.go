package netstack_test

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"

	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
)

// Patch 0014 (third_party/patches/gvisor): as Linux's tcp_fin, the ACK of
// a FIN that moves us from ESTABLISHED to CLOSE-WAIT is delayed, so an
// application that closes when it reads the end sends one segment, FIN
// and ACK, instead of a pure ACK and then its FIN. Upstream acknowledges
// every FIN at once.

// clientFin sends the client's FIN and has the application read the end.
func clientFin(t *testing.T, c *rawClient, app net.Conn) {
	t.Helper()
	c.next(header.TCPFlagAck|header.TCPFlagFin, nil)
	app.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := app.Read(make([]byte, 16)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("application read after the client's FIN = %d, %v; want 0, EOF", n, err)
	}
}

// An application that closes as soon as it reads the end: its FIN carries
// the ACK of the client's FIN, with no pure ACK ahead of it.
func TestFinAckRidesOnOurFin(t *testing.T) {
	c, app := interactive(t, 40101)
	clientFin(t, c, app)
	app.Close()
	s, ok := c.awaitAck()
	if !ok {
		t.Fatal("no segment from the server within 2s of the client's FIN")
	}
	if !s.Flags.Contains(header.TCPFlagFin) || seqnum.Value(s.Ack) != c.sndNxt {
		t.Fatalf("the server's first segment after the client's FIN is %v ack %d, want our FIN acknowledging the client's (ack %d)", s.Flags, s.Ack, c.sndNxt)
	}
}

// An application that keeps the connection open after reading the end: the
// delayed ACK timer acknowledges the FIN, not at once and well within
// RFC 1122's 0.5 s.
func TestFinAckTimer(t *testing.T) {
	c, app := interactive(t, 40102)
	start := time.Now()
	clientFin(t, c, app)
	s, ok := c.awaitAck()
	el := time.Since(start)
	if !ok {
		t.Fatal("the client's FIN was not acknowledged within 2s")
	}
	if s.Flags.Contains(header.TCPFlagFin) || len(s.Payload) != 0 || seqnum.Value(s.Ack) != c.sndNxt {
		t.Fatalf("got %v ack %d len %d, want a pure ACK of the client's FIN (ack %d)", s.Flags, s.Ack, len(s.Payload), c.sndNxt)
	}
	wantDelayed(t, "the ACK of the FIN", el)
}

// A FIN that comes after ours (FIN-WAIT-2 to TIME-WAIT) is acknowledged at
// once, as before and as Linux does: nothing of ours could carry it.
func TestFinAckAtOnceAfterOurFin(t *testing.T) {
	c, app := interactive(t, 40103)
	app.Close()
	fin, ok := c.await(2*time.Second, func(s rawtcp.Segment) bool { return s.Flags.Contains(header.TCPFlagFin) })
	if !ok {
		t.Fatal("no FIN from the server within 2s of its close")
	}
	c.rcvNxt = seqnum.Value(fin.Seq).Add(1)
	c.next(header.TCPFlagAck, nil)
	start := time.Now()
	c.next(header.TCPFlagAck|header.TCPFlagFin, nil)
	s, ok := c.awaitAck()
	el := time.Since(start)
	if !ok || seqnum.Value(s.Ack) != c.sndNxt {
		t.Fatalf("the client's FIN was not acknowledged within 2s (got %+v)", s)
	}
	if el > 25*time.Millisecond {
		t.Errorf("the ACK of the FIN in FIN-WAIT-2 came after %v: want it at once, not by the 40ms timer", el)
	}
}
