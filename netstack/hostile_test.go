package netstack_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/internal/leakcheck"
	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/tun"
)

// rawService is our stack listening on 10.0.2.2:9999 over an in-memory
// device whose far end the test drives by hand, with the uppercase service
// started only when the test says so (so connections can be made, and
// broken, while none has been accepted yet).
type rawService struct {
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
}

func newRawService(t testing.TB, l link) *rawService {
	t.Helper()
	near, far := l.pipe("srv0", "far0", 1500)
	st, err := netstack.New(near, netstack.Options{Addr: netip.PrefixFrom(serverIP, 24), TimeWait: time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := st.Listen(9999)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	rs := &rawService{st: st, ln: ln, far: far, segs: make(chan rawtcp.Segment, 4096), out: &syncBuffer{}}
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
	})
	return rs
}

// serve starts the uppercase service on the listener.
func (rs *rawService) serve(opts app.ServerOptions) {
	opts.Out = rs.out
	rs.srv = app.NewServer(rs.ln, opts, nil)
	go rs.srv.Serve()
}

func (rs *rawService) send(t testing.TB, s rawtcp.Segment) {
	t.Helper()
	if _, err := rs.far.Write(s.Marshal()); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// recv waits up to 5 s for a segment to dst that satisfies ok; the
// segments it passes over are kept for barrier.
func (rs *rawService) recv(t testing.TB, dst netip.AddrPort, what string, ok func(rawtcp.Segment) bool) rawtcp.Segment {
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

// rawConn is a connection a raw peer opened by hand.
type rawConn struct {
	me, srv        netip.AddrPort
	sndNxt, rcvNxt uint32
}

// handshake opens a connection from port: SYN, the server's SYN-ACK, ACK.
func (rs *rawService) handshake(t *testing.T, port uint16) *rawConn {
	t.Helper()
	c := &rawConn{me: netip.AddrPortFrom(peerIP, port), srv: netip.AddrPortFrom(serverIP, 9999), sndNxt: uint32(port) * 1000}
	rs.send(t, rawtcp.Segment{Src: c.me, Dst: c.srv, Seq: c.sndNxt, Flags: header.TCPFlagSyn, Window: 65535,
		Options: rawtcp.SynOptions(1460, -1, false)})
	c.sndNxt++
	synack := rs.recv(t, c.me, "SYN-ACK", func(s rawtcp.Segment) bool {
		return s.Flags == header.TCPFlagSyn|header.TCPFlagAck && s.Ack == c.sndNxt
	})
	c.rcvNxt = synack.Seq + 1
	rs.send(t, rawtcp.Segment{Src: c.me, Dst: c.srv, Seq: c.sndNxt, Ack: c.rcvNxt, Flags: header.TCPFlagAck, Window: 65535})
	return c
}

// echoes sends line on c and waits for the server's uppercase echo.
func (rs *rawService) echoes(t *testing.T, c *rawConn, line string) {
	t.Helper()
	rs.send(t, rawtcp.Segment{Src: c.me, Dst: c.srv, Seq: c.sndNxt, Ack: c.rcvNxt, Flags: header.TCPFlagAck | header.TCPFlagPsh,
		Window: 65535, Payload: []byte(line)})
	c.sndNxt += uint32(len(line))
	want := strings.ToUpper(line)
	got := rs.recv(t, c.me, "echo of "+line, func(s rawtcp.Segment) bool { return len(s.Payload) > 0 })
	if string(got.Payload) != want {
		t.Fatalf("echo: got %q, want %q", got.Payload, want)
	}
	c.rcvNxt += uint32(len(got.Payload))
}

// reset sends an exact RST on c.
func (rs *rawService) reset(t *testing.T, c *rawConn) {
	t.Helper()
	rs.send(t, rawtcp.Segment{Src: c.me, Dst: c.srv, Seq: c.sndNxt, Flags: header.TCPFlagRst})
}

// waitResets waits until the stack has taken n RSTs.
func (rs *rawService) waitResets(t *testing.T, n uint64) {
	t.Helper()
	waitFor(t, func() bool { return rs.st.Gvisor().Stats().TCP.ResetsReceived.Value() >= n })
}

// established reports whether the stack holds an ESTABLISHED connection
// from the peer's port.
func (rs *rawService) established(port uint16) bool {
	for _, ep := range rs.st.Gvisor().RegisteredEndpoints() {
		if e, ok := ep.(*tcp.Endpoint); ok && e.TransportEndpointInfo.ID.RemotePort == port && e.EndpointState() == tcp.StateEstablished {
			return true
		}
	}
	return false
}

// TestResetBeforeAccept: a client that completes the handshake and resets
// the connection before the application accepts it used to crash the
// server (gonet's RemoteAddr is nil once the endpoint was reset, and the
// server printed it). An accepted connection keeps the 4-tuple it was
// accepted with: the server prints the peer connecting and leaving, and
// goes on serving.
func TestResetBeforeAccept(t *testing.T) { forLinks(t, testResetBeforeAccept) }

func testResetBeforeAccept(t *testing.T, l link) {
	leakcheck.Check(t)
	rs := newRawService(t, l)
	c := rs.handshake(t, 40001)
	rs.reset(t, c)
	rs.waitResets(t, 1)

	conn, err := rs.ln.Accept()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	if got, want := fmt.Sprint(conn.RemoteAddr()), c.me.String(); got != want {
		t.Errorf("RemoteAddr of a reset connection = %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(conn.LocalAddr()), c.srv.String(); got != want {
		t.Errorf("LocalAddr of a reset connection = %s, want %s", got, want)
	}
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Error("read on a reset connection succeeded")
	}
	conn.Close()

	// The same through the service: it prints the peer arriving and
	// leaving, then serves a fresh client.
	c2 := rs.handshake(t, 40002)
	rs.reset(t, c2)
	rs.waitResets(t, 2)
	rs.serve(app.ServerOptions{})
	waitFor(t, func() bool { return strings.Contains(rs.out.String(), c2.me.String()+" disconnected") })
	if !strings.Contains(rs.out.String(), c2.me.String()+" connected\n") {
		t.Errorf("server output %q lacks %s connected", rs.out.String(), c2.me)
	}
	rs.echoes(t, rs.handshake(t, 40003), "still serving")
}

// TestResetBeforeAcceptRefused: the same reset connection refused by
// --max-conns (the refusal logged the peer's address, and crashed).
func TestResetBeforeAcceptRefused(t *testing.T) { forLinks(t, testResetBeforeAcceptRefused) }

func testResetBeforeAcceptRefused(t *testing.T, l link) {
	leakcheck.Check(t)
	rs := newRawService(t, l)
	held := rs.handshake(t, 40001) // accepted first: the one place is taken
	// Accept takes connections in the order their handshakes completed.
	waitFor(t, func() bool { return rs.established(40001) })
	c := rs.handshake(t, 40002)
	rs.reset(t, c)
	rs.waitResets(t, 1)
	rs.serve(app.ServerOptions{MaxConns: 1})
	waitFor(t, func() bool { return rs.srv.Refused() == 1 })
	rs.echoes(t, held, "still serving")
}
