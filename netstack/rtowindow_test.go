package netstack_test

import (
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"

	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
	"github.com/tcp-upper/tcp-upper/netstack"
)

// TestRetransmissionTimeoutInASmallWindow guards our patch
// third_party/patches/gvisor/0016-*.patch: a sender whose retransmission
// timer fires while the peer's window is open but smaller than both the
// segment to retransmit and an MSS must retransmit what fits, and keep a
// timer armed while data is unacknowledged (RFC 6298 5.1, 5.4-5.6).
//
// The server sends 3000 bytes (1460, 1460, 80); the client acknowledges
// only the first segment, with a window of 100 bytes (SND.WND 100), and
// then says nothing more, as a peer whose window update was lost. The
// server must retransmit 100 bytes at the start of the second segment
// when its timer fires, and the rest once the window opens. Upstream
// defers a segment that does not fit to the retransmission timer, whose
// handler, retransmitting, then defers it again; after a timeout its
// Outstanding count is 0, so postXmit arms no timer: the server never
// sends again (the stall of TestIntegrityUnderFaults, docs/RELIABILITY.md).
//
// scripts/unpatched.sh go test ./netstack -run TestRetransmissionTimeoutInASmallWindow
// shows it failing without the patch.
func TestRetransmissionTimeoutInASmallWindow(t *testing.T) {
	srv := newRawServer(t, plainLink, netstack.Options{MaxRTO: time.Second})
	c := srv.dial(t, 46100, 1000, 0)
	conn := srv.accept(t)
	iss := c.rcvNxt
	const total = 3000
	if _, err := conn.Write(make([]byte, total)); err != nil {
		t.Fatal(err)
	}
	first := c.receive(t, iss, total, 2*time.Second)
	if first >= total-100 {
		t.Fatalf("the server sent %d bytes in its first segment, want less than %d", first, total-100)
	}
	c.rcvNxt = iss.Add(first)
	small := c.segment(header.TCPFlagAck, nil)
	small.Window = 100
	c.send(small)
	// The timer fires within MaxRTO (1 s); allow for a loaded machine.
	s, ok := c.await(5*time.Second, func(s rawtcp.Segment) bool { return len(s.Payload) > 0 })
	if !ok {
		t.Fatalf("after an ACK of %d (the first segment) with window 100, the server retransmitted nothing within 5 s", first)
	}
	if seqnum.Value(s.Seq) != c.rcvNxt || len(s.Payload) != 100 {
		t.Fatalf("retransmission of %d bytes at %d, want 100 at %d (what the window allows)", len(s.Payload), iss.Size(seqnum.Value(s.Seq)), first)
	}
	// The window opens: the rest follows.
	c.rcvNxt = c.rcvNxt.Add(100)
	c.send(c.segment(header.TCPFlagAck, nil))
	c.receive(t, c.rcvNxt, total-first-100, 5*time.Second)
}
