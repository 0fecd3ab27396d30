package netstack_test

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"

	"github.com/tcp-upper/tcp-upper/internal/leakcheck"
	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
	"github.com/tcp-upper/tcp-upper/netstack"
)

// Patch 0012 (third_party/patches/gvisor): srtt in microseconds, and the
// tail loss probe's floor on the probe timeout instead (2 SRTT + 2 ms, as
// Linux). Upstream floors srtt at 1 ms, so a path of microseconds reads
// 1 ms in ss and in the events. On the in-memory path (tens of
// microseconds) srtt must go below a millisecond, and a flight whose ACK
// takes a millisecond must not be probed.
func TestMicrosecondSRTTWithoutEarlyProbes(t *testing.T) {
	const port = 45100
	w := newSenderWatch(port)
	leakcheck.Check(t)
	srv := newRawServer(t, plainLink, netstack.Options{TCPProbe: w.probe})
	start := time.Now()
	c := dialSACK(t, srv, port, 1000, 1000)
	// bound is the longest any RTT sample of the warm-up can have been:
	// from before the server sent (the dial, or a Write) until the test saw
	// the server take the ACK. On a busy machine it can pass a millisecond;
	// srtt must follow it, not a floor.
	bound := time.Since(start)
	conn := srv.accept(t)
	var warm time.Duration
	flight := bytes.Repeat([]byte("x"), 3000) // three segments of MSS 1448
	for i := range 10 {
		wrote := time.Now()
		if _, err := conn.Write(flight); err != nil {
			t.Fatal(err)
		}
		want := c.rcvNxt.Add(seqnum.Size(len(flight)))
		for c.rcvNxt != want {
			d, ok := c.await(2*time.Second, func(s rawtcp.Segment) bool { return len(s.Payload) > 0 })
			if !ok {
				t.Fatalf("flight %d: no data within 2s", i)
			}
			if seqnum.Value(d.Seq).LessThan(c.rcvNxt) {
				// A probe of the previous flight: on a busy machine our
				// ACK can come later than its timeout (2 ms and up). The
				// check that counts is the 1 ms window below.
				continue
			}
			if seqnum.Value(d.Seq) != c.rcvNxt {
				t.Fatalf("flight %d: segment at %d, want %d", i, d.Seq, c.rcvNxt)
			}
			c.rcvNxt = seqnum.Value(d.Seq).Add(seqnum.Size(len(d.Payload)))
			c.tsVal++
			if i < 5 {
				// Warming up: each segment acknowledged at once.
				c.next(header.TCPFlagAck, nil)
			}
		}
		if i >= 5 {
			// The ACK of the whole flight takes a millisecond: no probe
			// may come before it. A segment that reaches us later than
			// that by the clock (this goroutine was not scheduled for a
			// while on a busy machine) came after a legitimate timeout
			// (2 srtt + 2 ms) and is no failure.
			flightEnd := time.Now()
			if s, ok := c.await(time.Millisecond, func(s rawtcp.Segment) bool { return true }); ok {
				if d := time.Since(flightEnd); d < time.Millisecond {
					t.Fatalf("flight %d: %+v from the server %v after its flight, before our ACK: a tail loss probe too early", i, s, d)
				} else {
					t.Logf("flight %d: a segment %v after its flight (this test was late to look)", i, d)
				}
			}
			c.next(header.TCPFlagAck, nil)
		}
		w.waitUna(t, c.rcvNxt, fmt.Sprintf("the ACK of flight %d", i))
		if i < 5 {
			bound = max(bound, time.Since(wrote))
		}
		if i == 4 {
			warm = w.SRTT()
		}
	}
	t.Logf("srtt %v after 5 flights acknowledged at once; no sample can have exceeded %v", warm, bound)
	if warm <= 0 || warm > bound {
		t.Errorf("srtt %v on an in-memory path with prompt ACKs, where no RTT sample exceeded %v: a floor, not the path", warm, bound)
	}
}

// dialSACK is rawServer.dial with SACK permitted, which gVisor's RACK and
// tail loss probes need.
func dialSACK(t *testing.T, s *rawServer, port uint16, iss seqnum.Value, tsVal uint32) *rawClient {
	t.Helper()
	c := &rawClient{t: t, srv: s, me: netip.AddrPortFrom(rawClientIP, port), sndNxt: iss, ts: true, tsVal: tsVal}
	opts := append(rawtcp.SynOptions(1460, -1, true), tsOption(tsVal, 0)...)
	c.send(rawtcp.Segment{Seq: uint32(iss), Flags: header.TCPFlagSyn, Window: 65535, Options: opts})
	synack, ok := c.await(2*time.Second, func(r rawtcp.Segment) bool { return r.Flags.Contains(header.TCPFlagSyn) })
	if !ok || synack.Flags != header.TCPFlagSyn|header.TCPFlagAck || seqnum.Value(synack.Ack) != iss+1 {
		t.Fatalf("no SYN-ACK for the SYN from %v (got %+v)", c.me, synack)
	}
	if o := header.ParseSynOptions(synack.Options, true); !o.SACKPermitted || !o.TS {
		t.Fatalf("SYN-ACK options %+v: want SACK permitted and timestamps", o)
	}
	c.sndNxt = iss + 1
	c.rcvNxt = seqnum.Value(synack.Seq) + 1
	c.next(header.TCPFlagAck, nil)
	return c
}
