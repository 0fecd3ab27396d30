package netstack_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"

	"github.com/tcp-upper/tcp-upper/internal/leakcheck"
	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/tun"
)

// The tests of our RFC MUST patches (third_party/patches/gvisor/0003 to
// 0006) play the client by hand, the way TestReceiveWindowShrinkAcceptsInFlight
// does: a rawServer is our stack listening on 9999 at the near end of an
// in-memory pipe, and each rawClient is one connection a test drives from
// the far end, segment by segment.

var (
	rawServerAddr = netip.MustParseAddrPort("10.0.2.2:9999")
	rawClientIP   = netip.MustParseAddr("10.0.2.3")
)

// rawServer is our stack with a listener on 9999; accepted hands the test
// each connection the listener accepts.
type rawServer struct {
	st       *netstack.Stack
	peer     *rawtcp.Peer
	accepted chan net.Conn
}

func newRawServer(t *testing.T, opts netstack.Options) *rawServer {
	t.Helper()
	leakcheck.Check(t)
	srvDev, peerDev := tun.Pipe("srv0", "peer0", 1500)
	opts.Addr = netip.PrefixFrom(rawServerAddr.Addr(), 24)
	st, err := netstack.New(srvDev, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := st.Listen(rawServerAddr.Port())
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	s := &rawServer{st: st, peer: rawtcp.NewPeer(peerDev), accepted: make(chan net.Conn, 16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for len(s.accepted) > 0 {
			(<-s.accepted).Close()
		}
		st.Close()
		peerDev.Close()
	})
	return s
}

// accept returns the next connection the server's application accepted.
func (s *rawServer) accept(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-s.accepted:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(2 * time.Second):
		t.Fatal("the server accepted no connection within 2s")
		return nil
	}
}

// rawClient is one hand-driven connection to a rawServer.
type rawClient struct {
	t      *testing.T
	srv    *rawServer
	me     netip.AddrPort
	sndNxt seqnum.Value // the client's SND.NXT
	rcvNxt seqnum.Value // the client's RCV.NXT: the server's next sequence number
	ts     bool         // timestamps negotiated
	// tsVal is the client's timestamp clock: what its segments carry as
	// TSval. A test moves it (forward, or back to replay an old segment).
	tsVal uint32
	// tsRecent is the latest TSval the server sent (what the client echoes).
	tsRecent uint32
}

// synOptions are the client's SYN options: MSS 1460, no window scaling (so
// windows read as they are), no SACK, and timestamps if tsVal is not zero.
func synOptions(tsVal uint32) []byte {
	opts := rawtcp.SynOptions(1460, -1, false)
	if tsVal != 0 {
		b := make([]byte, header.TCPOptionTSLength)
		header.EncodeTSOption(tsVal, 0, b)
		opts = append(opts, b...)
	}
	return opts
}

// dial opens a connection from port with initial sequence number iss and,
// if tsVal is not zero, timestamps (the SYN's TSval). It fails the test
// unless the server answers with a SYN-ACK that agrees.
func (s *rawServer) dial(t *testing.T, port uint16, iss seqnum.Value, tsVal uint32) *rawClient {
	t.Helper()
	c := &rawClient{t: t, srv: s, me: netip.AddrPortFrom(rawClientIP, port), sndNxt: iss, ts: tsVal != 0, tsVal: tsVal}
	c.send(rawtcp.Segment{Seq: uint32(iss), Flags: header.TCPFlagSyn, Window: 65535, Options: synOptions(tsVal)})
	synack, ok := c.await(2*time.Second, func(r rawtcp.Segment) bool { return r.Flags.Contains(header.TCPFlagSyn) })
	if !ok || synack.Flags != header.TCPFlagSyn|header.TCPFlagAck || seqnum.Value(synack.Ack) != iss+1 {
		t.Fatalf("no SYN-ACK for the SYN from %v (got %+v)", c.me, synack)
	}
	if got := header.ParseSynOptions(synack.Options, true).TS; got != c.ts {
		t.Fatalf("SYN-ACK timestamps %v, want %v", got, c.ts)
	}
	c.sndNxt = iss + 1
	c.rcvNxt = seqnum.Value(synack.Seq) + 1
	c.next(header.TCPFlagAck, nil)
	return c
}

// segment is the client's next segment: at SND.NXT, acknowledging RCV.NXT,
// with a timestamp if negotiated. A test may change it before sending.
func (c *rawClient) segment(flags header.TCPFlags, payload []byte) rawtcp.Segment {
	s := rawtcp.Segment{Seq: uint32(c.sndNxt), Ack: uint32(c.rcvNxt), Flags: flags, Window: 65535, Payload: payload}
	if c.ts {
		s.Options = tsOption(c.tsVal, c.tsRecent)
	}
	return s
}

// tsOption is a timestamps option.
func tsOption(tsVal, tsEcr uint32) []byte {
	b := make([]byte, header.TCPOptionTSLength)
	header.EncodeTSOption(tsVal, tsEcr, b)
	return b
}

// send writes s from the client to the server.
func (c *rawClient) send(s rawtcp.Segment) {
	c.t.Helper()
	s.Src, s.Dst = c.me, rawServerAddr
	if err := c.srv.peer.Send(s); err != nil {
		c.t.Fatal(err)
	}
}

// next sends the client's next segment and moves SND.NXT past it.
func (c *rawClient) next(flags header.TCPFlags, payload []byte) rawtcp.Segment {
	c.t.Helper()
	s := c.segment(flags, payload)
	c.send(s)
	c.sndNxt = c.sndNxt.Add(seqnum.Size(len(payload)))
	if flags.Contains(header.TCPFlagFin) {
		c.sndNxt++
	}
	return s
}

// await waits up to timeout for a segment from the server to this client
// that satisfies ok, skipping others. It notes the server's TSval.
func (c *rawClient) await(timeout time.Duration, ok func(rawtcp.Segment) bool) (rawtcp.Segment, bool) {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return rawtcp.Segment{}, false
		}
		s, open := c.srv.peer.Recv(left)
		if !open {
			return rawtcp.Segment{}, false
		}
		if s.Dst != c.me {
			continue
		}
		if o := header.ParseTCPOptions(s.Options); o.TS {
			c.tsRecent = o.TSVal
		}
		if ok(s) {
			return s, true
		}
	}
}

// awaitAck waits up to 2 s for an ACK from the server (any segment with
// the ACK flag and no SYN).
func (c *rawClient) awaitAck() (rawtcp.Segment, bool) {
	return c.await(2*time.Second, func(s rawtcp.Segment) bool {
		return s.Flags.Contains(header.TCPFlagAck) && !s.Flags.Contains(header.TCPFlagSyn)
	})
}

// tsEcr is the TSecr of s, or false if it has no timestamps option.
func tsEcr(s rawtcp.Segment) (uint32, bool) {
	o := header.ParseTCPOptions(s.Options)
	return o.TSEcr, o.TS
}
