package netstack_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/tcp-upper/tcp-upper/internal/leakcheck"
	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
	"github.com/tcp-upper/tcp-upper/netstack"
)

// TestRTTFromTransmitTime guards our patch
// third_party/patches/gvisor/0007-*.patch: with timestamps, the RTT sample
// of an ACK is the time since the oldest segment it acknowledges was sent,
// on the monotonic clock (nanoseconds), as Linux takes it; the echoed
// timestamp (milliseconds) only when the ACK covers a retransmission
// (Karn). A hand-driven client with timestamps acknowledges each segment
// of the server at once, but echoes a TSval a second old, as a peer that
// holds TS.Recent too long does (upstream gVisor's own ACK of a FIN did,
// patch 0005). The server's srtt must stay near what the in-memory path
// takes (tens of microseconds; upstream gVisor floors srtt at 1 ms, patch
// 0012 at 1 µs), not a second.
//
// Upstream gVisor takes every RTT sample of a connection with timestamps
// from TSecr, in whole milliseconds (each sample on a sub-millisecond
// path reads 0 or 1 ms), and a stale echo inflates srtt and RTO.
// scripts/unpatched.sh go test ./netstack -run TestRTTFromTransmitTime
// shows it failing without the patch.
func TestRTTFromTransmitTime(t *testing.T) {
	const port = 45000
	w := newSenderWatch(port)
	leakcheck.Check(t)
	srv := newRawServer(t, plainLink, netstack.Options{TCPProbe: w.probe})
	c := srv.dial(t, port, 1000, 1000)
	conn := srv.accept(t)
	for i := 0; i < 8; i++ {
		if _, err := conn.Write([]byte("data from the server")); err != nil {
			t.Fatal(err)
		}
		d, ok := c.await(2*time.Second, func(s rawtcp.Segment) bool { return len(s.Payload) > 0 })
		if !ok {
			t.Fatal("no data from the server within 2s")
		}
		c.rcvNxt = seqnum.Value(d.Seq).Add(seqnum.Size(len(d.Payload)))
		ack := c.segment(header.TCPFlagAck, nil)
		ack.Options = tsOption(c.tsVal, c.tsRecent-1000) // a TSval of the server's from a second ago
		c.send(ack)
		w.waitUna(t, c.rcvNxt, fmt.Sprintf("the ACK of its segment %d", i))
	}
	got := w.SRTT()
	t.Logf("srtt %v", got)
	if got <= 0 || got > 100*time.Millisecond {
		t.Errorf("srtt %v after 8 ACKs that came at once but echoed a TSval a second old: want the path's RTT, well under 100ms", got)
	}
}

// senderWatch follows the server's sender for one peer port, as gVisor's
// TCP probe reports it at each segment the server receives.
type senderWatch struct {
	port   uint16
	srtt   atomic.Int64
	sndUna atomic.Uint32
	probed chan struct{}
}

func newSenderWatch(port uint16) *senderWatch {
	return &senderWatch{port: port, probed: make(chan struct{}, 1)}
}

// probe is the netstack.Options.TCPProbe to give the server.
func (w *senderWatch) probe(s *tcp.TCPEndpointState) {
	if s.ID.RemotePort != w.port {
		return
	}
	w.srtt.Store(int64(s.Sender.RTTState.SRTT))
	w.sndUna.Store(uint32(s.Sender.SndUna))
	select {
	case w.probed <- struct{}{}:
	default:
	}
}

// SRTT is the sender's smoothed RTT at the last segment received.
func (w *senderWatch) SRTT() time.Duration { return time.Duration(w.srtt.Load()) }

// waitUna waits up to 2 s until the server has taken an ACK of want.
func (w *senderWatch) waitUna(t *testing.T, want seqnum.Value, what string) {
	t.Helper()
	for deadline := time.After(2 * time.Second); seqnum.Value(w.sndUna.Load()) != want; {
		select {
		case <-w.probed:
		case <-deadline:
			t.Fatalf("the server did not process %s within 2s", what)
		}
	}
}
