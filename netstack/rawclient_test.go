package netstack_test

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/tun"
)

// The tests of our RFC MUST patches (third_party/patches/gvisor/0003 to
// 0006), of hostile peers and FuzzServerScript play the client by hand,
// the way TestReceiveWindowShrinkAcceptsInFlight does: a rawServer is our
// stack listening on 9999 at the near end of an in-memory pipe, with the
// uppercase service started only when the test says so (so connections
// can be made, and broken, while none has been accepted yet), and each
// rawClient is one connection a test drives from the far end, segment by
// segment.

var (
	rawServerAddr = netip.AddrPortFrom(serverIP, 9999)
	rawClientIP   = netip.MustParseAddr("10.0.2.3")
)

// rawServer is our stack with a listener on 9999 over an in-memory device
// built by a link, whose far end the test drives by hand.
type rawServer struct {
	st   *netstack.Stack
	far  *tun.PipeDevice
	segs chan rawtcp.Segment
	ln   net.Listener
	out  *syncBuffer
	srv  *app.Server
	// marker numbers barrier's probes.
	marker uint32
	// passed holds what recv and next read but did not return: another
	// peer's segments, which barrier hands out.
	passed []rawtcp.Segment
	// dropped counts the segments the far end's reader found no room for.
	dropped atomic.Uint64
}

// newRawServer builds a rawServer on l with opts (Addr set to the
// server's, 10.0.2.2/24); it is closed when the test ends, and the test
// fails if the far end had to drop segments (its 4096 unread were full).
func newRawServer(t testing.TB, l link, opts netstack.Options) *rawServer {
	t.Helper()
	near, far := l.pipe("srv0", "far0", 1500)
	opts.Addr = netip.PrefixFrom(rawServerAddr.Addr(), 24)
	st, err := netstack.New(near, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := st.Listen(rawServerAddr.Port())
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	rs := &rawServer{st: st, ln: ln, far: far, segs: make(chan rawtcp.Segment, 4096), out: &syncBuffer{}}
	read := make(chan struct{})
	go func() {
		defer close(read)
		buf := make([]byte, tun.MaxOffloadPacket)
		for {
			n, _, err := far.ReadOffload(buf)
			if err != nil {
				return
			}
			if s, err := rawtcp.Parse(buf[:n]); err == nil {
				select {
				case rs.segs <- s:
				default:
					rs.dropped.Add(1)
				}
			}
		}
	}()
	t.Cleanup(func() {
		if rs.srv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			rs.srv.Shutdown(ctx)
		}
		ln.Close()
		st.Close()
		far.Close()
		<-read
		if n := rs.dropped.Load(); n > 0 {
			t.Errorf("the far end dropped %d segments the test did not read in time", n)
		}
	})
	return rs
}

// serve starts the uppercase service on the listener.
func (rs *rawServer) serve(opts app.ServerOptions) {
	opts.Out = rs.out
	rs.srv = app.NewServer(rs.ln, opts, nil)
	go rs.srv.Serve()
}

// accept returns the next connection the listener accepts, within 2 s:
// the test plays the application.
func (rs *rawServer) accept(t *testing.T) net.Conn {
	t.Helper()
	got := make(chan net.Conn, 1)
	go func() {
		c, _ := rs.ln.Accept() // nil once the listener closes
		got <- c
	}()
	select {
	case c := <-got:
		if c == nil {
			t.Fatal("accept: the listener closed")
		}
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(2 * time.Second):
		t.Fatal("the server accepted no connection within 2s")
		return nil
	}
}

func (rs *rawServer) send(t testing.TB, s rawtcp.Segment) {
	t.Helper()
	if _, err := rs.far.Write(s.Marshal()); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// recv waits up to 5 s for a segment to dst that satisfies ok; the
// segments it passes over are kept for barrier.
func (rs *rawServer) recv(t testing.TB, dst netip.AddrPort, what string, ok func(rawtcp.Segment) bool) rawtcp.Segment {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case s := <-rs.segs:
			if s.Dst == dst && ok(s) {
				return s
			}
			rs.passed = append(rs.passed, s)
		case <-timeout:
			t.Fatalf("%s: no such segment to %v within 5s", what, dst)
		}
	}
}

// next waits up to timeout for a segment to dst, and returns it; what the
// stack sends others meanwhile is kept for barrier.
func (rs *rawServer) next(dst netip.AddrPort, timeout time.Duration) (rawtcp.Segment, bool) {
	expire := time.After(timeout)
	for {
		select {
		case s := <-rs.segs:
			if s.Dst == dst {
				return s, true
			}
			rs.passed = append(rs.passed, s)
		case <-expire:
			return rawtcp.Segment{}, false
		}
	}
}

// waitResets waits until the stack has taken n RSTs.
func (rs *rawServer) waitResets(t *testing.T, n uint64) {
	t.Helper()
	waitFor(t, func() bool { return rs.st.Gvisor().Stats().TCP.ResetsReceived.Value() >= n })
}

// established reports whether the stack holds an ESTABLISHED connection
// from the peer's port.
func (rs *rawServer) established(port uint16) bool {
	for _, ep := range rs.st.Gvisor().RegisteredEndpoints() {
		if e, ok := ep.(*tcp.Endpoint); ok && e.TransportEndpointInfo.ID.RemotePort == port && e.EndpointState() == tcp.StateEstablished {
			return true
		}
	}
	return false
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
	c.srv.send(c.t, s)
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
		s, got := c.srv.next(c.me, left)
		if !got {
			return rawtcp.Segment{}, false
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

// echo sends line and waits for the server's uppercase echo.
func (c *rawClient) echo(line string) {
	c.t.Helper()
	c.next(header.TCPFlagAck|header.TCPFlagPsh, []byte(line))
	got, ok := c.await(5*time.Second, func(s rawtcp.Segment) bool { return len(s.Payload) > 0 })
	if want := strings.ToUpper(line); !ok || string(got.Payload) != want {
		c.t.Fatalf("echo of %q: got %q, want %q", line, got.Payload, want)
	}
	c.rcvNxt = c.rcvNxt.Add(seqnum.Size(len(got.Payload)))
}

// reset sends an exact RST.
func (c *rawClient) reset() {
	c.t.Helper()
	c.send(rawtcp.Segment{Seq: uint32(c.sndNxt), Flags: header.TCPFlagRst})
}
