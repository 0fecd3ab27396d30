package netstack_test

import (
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"

	"github.com/tcp-upper/tcp-upper/internal/leakcheck"
	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
	"github.com/tcp-upper/tcp-upper/netstack"
)

// TestAckSeqInsideShrunkWindow guards our patch
// third_party/patches/gvisor/0013-*.patch: an ACK without data carries
// SEQ = SND.NXT unless the peer's window ends before it (SND.UNA +
// SND.WND), then the window's end, as Linux's tcp_acceptable_seq.
//
// The server sends 4000 bytes; the hand-driven client acknowledges the
// first segment only and closes its window (RCV.NXT+RCV.WND is now far
// behind the server's SND.NXT), then sends data. The server's ACK of that
// data must start at SND.UNA: the client drops a segment starting past its
// window without reading its ACK field (RFC 9293 3.10.7.4), so an ACK at
// SND.NXT would never tell it that its data arrived. In
// TestIntegrityUnderFaults that was a connection whose server retransmitted
// until it reset, or that waited forever (the server's window stayed shut
// because its application, blocked writing, stopped reading).
//
// Upstream gVisor sends every ACK at SND.NXT:
// scripts/unpatched.sh go test ./netstack -run TestAckSeqInsideShrunkWindow
// shows it failing without the patch.
func TestAckSeqInsideShrunkWindow(t *testing.T) {
	const deadline = 2 * time.Second
	leakcheck.Check(t)
	srv := newRawServer(t, plainLink, netstack.Options{})
	c := srv.dial(t, 42000, 1000, 0)
	conn := srv.accept(t)
	iss := c.rcvNxt // the server's SND.UNA = SND.NXT: it has sent nothing

	const total = 4000
	if _, err := conn.Write(make([]byte, total)); err != nil {
		t.Fatal(err)
	}
	// Take the segments in, without acknowledging them.
	var first seqnum.Size
	for got := seqnum.Size(0); got < total; {
		s, ok := c.await(deadline, func(s rawtcp.Segment) bool { return len(s.Payload) > 0 })
		if !ok {
			t.Fatalf("the server sent %d of %d bytes within %v", got, total, deadline)
		}
		if seqnum.Value(s.Seq) != iss.Add(got) {
			t.Fatalf("segment at %d, want %d (in order, nothing lost in memory)", s.Seq, iss.Add(got))
		}
		if first == 0 {
			first = seqnum.Size(len(s.Payload))
		}
		got += seqnum.Size(len(s.Payload))
	}
	sndNxt := iss.Add(total)
	if first >= total {
		t.Fatalf("the server sent %d bytes in one segment: nothing would lie past the shrunk window", first)
	}
	// Acknowledge the first segment and shrink the window to zero: the
	// server's SND.UNA + SND.WND is now first bytes past its ISS, its
	// SND.NXT total bytes past it.
	sndUna := iss.Add(first)
	c.rcvNxt = sndUna
	ack := c.segment(header.TCPFlagAck, nil)
	ack.Window = 0
	c.send(ack)
	data := c.segment(header.TCPFlagAck|header.TCPFlagPsh, []byte("data"))
	data.Window = 0
	c.send(data)
	c.sndNxt = c.sndNxt.Add(seqnum.Size(len(data.Payload)))

	r, ok := c.await(deadline, func(s rawtcp.Segment) bool {
		return len(s.Payload) == 0 && s.Flags == header.TCPFlagAck && seqnum.Value(s.Ack) == c.sndNxt
	})
	if !ok {
		t.Fatalf("the server acknowledged none of the data within %v", deadline)
	}
	switch seqnum.Value(r.Seq) {
	case sndUna:
	case sndNxt:
		t.Fatalf("the server's ACK starts at SND.NXT %d, %d bytes past the client's window (RCV.NXT %d, RCV.WND 0): the client drops it unread; want SND.UNA + SND.WND %d",
			r.Seq, sndUna.Size(sndNxt), sndUna, sndUna)
	default:
		t.Fatalf("the server's ACK starts at %d, want SND.UNA + SND.WND %d (SND.NXT is %d)", r.Seq, sndUna, sndNxt)
	}
}
