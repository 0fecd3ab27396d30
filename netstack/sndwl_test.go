package netstack_test

import (
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
	"github.com/tcp-upper/tcp-upper/netstack"
)

// TestWindowUpdateIgnoresOlderSegments guards our patch
// third_party/patches/gvisor/0015-*.patch: the server takes the send
// window (SND.WND) only from a segment newer than the one it last took it
// from, as RFC 9293 3.10.7.4 says: SND.UNA =< SEG.ACK and (SND.WL1 <
// SEG.SEQ, or SND.WL1 = SEG.SEQ and SND.WL2 =< SEG.ACK), and as Linux's
// tcp_ack_update_window (an ACK that advances SND.UNA also counts as
// newer). A reordered or duplicated older segment of the peer's must not
// move the window: neither open it past the edge the peer offered since,
// nor shut it. What the server's sender holds is read from gVisor's TCP
// probe, which runs once after each segment the server processes.
//
//   - "older ACK": the client acknowledges everything with its window
//     closed; then a stale ACK of the first segment, from before, arrives
//     with the large window of then. The server must keep SND.WND 0 and
//     send none of the data waiting in its queue; upstream takes the stale
//     window and sends it all past the closed window (the start of the
//     stall in TestIntegrityUnderFaults that patch 0013 ended). The
//     client's next window update, at the same SEQ and ACK, must still
//     open the window (the rule must not be stricter than the RFC's).
//   - "older SEQ": the client sends two data segments; the second, with
//     the open window, arrives first; the first, sent when its window was
//     shut, arrives after. The server must keep the open window and send
//     what it is given; upstream takes the stale zero window.
//
// Timestamps are off: with them PAWS (patch 0004) drops an old segment
// whose TSval is older, but a duplicate, or a segment sent in the same
// timestamp tick, passes it.
//
// scripts/unpatched.sh go test ./netstack -run TestWindowUpdateIgnoresOlderSegments
// shows it failing without the patch.
func TestWindowUpdateIgnoresOlderSegments(t *testing.T) {
	const deadline = 2 * time.Second
	const port = 46000
	w := newWindowWatch(port)
	srv := newRawServer(t, plainLink, netstack.Options{TCPProbe: w.probe})

	t.Run("older ACK", func(t *testing.T) {
		w.reset()
		c := srv.dial(t, port, 1000, 0)
		conn := srv.accept(t)
		iss := c.rcvNxt // the server's SND.UNA = SND.NXT: it has sent nothing

		const total = 3000
		if _, err := conn.Write(make([]byte, total)); err != nil {
			t.Fatal(err)
		}
		first := c.receive(t, iss, total, deadline)
		if first >= total {
			t.Fatalf("the server sent %d bytes in one segment: an ACK of its first segment would be an ACK of all", first)
		}
		// The client, its buffer full, acknowledges all with its window shut.
		c.rcvNxt = iss.Add(total)
		shut := c.segment(header.TCPFlagAck, nil)
		shut.Window = 0
		c.send(shut)
		s := w.next(t, "the ACK that shuts the window")
		if seqnum.Value(s.SndUna) != c.rcvNxt || s.SndWnd != 0 {
			t.Fatalf("after the ACK of %d with window 0: SND.UNA %d SND.WND %d, want %d and 0", c.rcvNxt, s.SndUna, s.SndWnd, c.rcvNxt)
		}
		// More data for the client: it waits in the server's queue.
		if _, err := conn.Write(make([]byte, total)); err != nil {
			t.Fatal(err)
		}
		// The stale ACK: the client's ACK of the first segment, with the
		// window it offered then, reordered behind the later one.
		stale := shut
		stale.Ack = uint32(iss.Add(first))
		stale.Window = 65535
		c.send(stale)
		s = w.next(t, "the stale ACK")
		if s.SndWnd != 0 || seqnum.Value(s.SndNxt) != iss.Add(total) {
			t.Fatalf("after a stale ACK of %d with window 65535 (SND.UNA %d, the client's window shut): SND.WND %d SND.NXT %d (%d bytes past the client's window), want SND.WND 0 and SND.NXT %d",
				stale.Ack, s.SndUna, s.SndWnd, s.SndNxt, iss.Add(total).Size(seqnum.Value(s.SndNxt)), iss.Add(total))
		}
		// The client opens its window: same SEQ, same ACK, a newer update.
		open := shut
		open.Window = 65535
		c.send(open)
		s = w.next(t, "the window update")
		if s.SndWnd != 65535 {
			t.Fatalf("after the client's window update (SEQ %d ACK %d window 65535, as the ACK that shut it but for the window): SND.WND %d, want 65535", open.Seq, open.Ack, s.SndWnd)
		}
		c.receive(t, iss.Add(total), total, deadline)
	})

	t.Run("older SEQ", func(t *testing.T) {
		w.reset()
		c := srv.dial(t, port+1, 5000, 0)
		conn := srv.accept(t)
		iss := c.rcvNxt

		// Two data segments, both acknowledging nothing new (SEG.ACK =
		// SND.UNA); the client read in between, so the second opens the
		// window the first had shut. The second arrives first.
		older := c.segment(header.TCPFlagAck, make([]byte, 100))
		older.Window = 0
		c.sndNxt = c.sndNxt.Add(100)
		newer := c.segment(header.TCPFlagAck, make([]byte, 100))
		newer.Window = 65535
		c.sndNxt = c.sndNxt.Add(100)
		c.send(newer)
		s := w.next(t, "the newer segment (out of order)")
		if s.SndWnd != 65535 {
			t.Fatalf("after the newer segment (SEQ %d, window 65535): SND.WND %d, want 65535", newer.Seq, s.SndWnd)
		}
		c.send(older)
		s = w.next(t, "the older segment")
		if s.SndWnd != 65535 {
			t.Fatalf("after the older segment (SEQ %d < SND.WL1 %d, window 0), reordered behind the newer: SND.WND %d, want the newer's 65535",
				older.Seq, newer.Seq, s.SndWnd)
		}
		const total = 3000
		if _, err := conn.Write(make([]byte, total)); err != nil {
			t.Fatal(err)
		}
		c.receive(t, iss, total, deadline)
	})
}

// receive takes total bytes of data from the server, in order from seq,
// without acknowledging them, within timeout; it returns the size of the
// first segment.
func (c *rawClient) receive(t *testing.T, seq seqnum.Value, total seqnum.Size, timeout time.Duration) seqnum.Size {
	t.Helper()
	var first seqnum.Size
	for got := seqnum.Size(0); got < total; {
		s, ok := c.await(timeout, func(s rawtcp.Segment) bool { return len(s.Payload) > 0 })
		if !ok {
			t.Fatalf("the server sent %d of %d bytes within %v", got, total, timeout)
		}
		if seqnum.Value(s.Seq) != seq.Add(got) {
			t.Fatalf("segment at %d, want %d (in order, nothing lost in memory)", s.Seq, seq.Add(got))
		}
		if first == 0 {
			first = seqnum.Size(len(s.Payload))
		}
		got += seqnum.Size(len(s.Payload))
	}
	return first
}

// windowWatch passes the test the server's sender state, as gVisor's TCP
// probe reports it after each segment the server receives from a client
// port at or after port (one connection per port), in order.
type windowWatch struct {
	port    uint16
	states  chan tcp.TCPSenderState
	dropped atomic.Uint64 // states that did not fit in states: the test fails
}

func newWindowWatch(port uint16) *windowWatch {
	return &windowWatch{port: port, states: make(chan tcp.TCPSenderState, 64)}
}

// probe is the netstack.Options.TCPProbe to give the server.
func (w *windowWatch) probe(s *tcp.TCPEndpointState) {
	if s.ID.RemotePort < w.port {
		return
	}
	select {
	case w.states <- s.Sender:
	default:
		w.dropped.Add(1)
	}
}

// reset forgets the states reported so far.
func (w *windowWatch) reset() {
	for len(w.states) > 0 {
		<-w.states
	}
}

// next is the state after the next segment the server processes, within
// 2 s. A test sends one segment and then takes its state, so the state is
// that segment's.
func (w *windowWatch) next(t *testing.T, what string) tcp.TCPSenderState {
	t.Helper()
	select {
	case s := <-w.states:
		if n := w.dropped.Load(); n > 0 {
			t.Fatalf("%d probe reports did not fit in the queue: which segment a report follows is unknown", n)
		}
		if len(w.states) > 0 {
			t.Fatalf("%d more probe reports after %s: the server processed segments the test did not send", len(w.states), what)
		}
		return s
	case <-time.After(2 * time.Second):
		t.Fatalf("the server did not process %s within 2s", what)
		return tcp.TCPSenderState{}
	}
}
