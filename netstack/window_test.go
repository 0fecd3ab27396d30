package netstack_test

import (
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/tcp-upper/tcp-upper/internal/leakcheck"
	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/tun"
)

// TestReceiveWindowShrinkAcceptsInFlight is the deterministic regression
// test for the zero-window stall (gVisor issues 10243, 10312, 9153; our
// patch third_party/patches/gvisor/0001-*.patch). A hand-driven peer fills
// the window of a server that never reads, in 1000-byte segments, always
// staying inside the latest advertised window. netstack rounds each
// advertisement down by the window scale, so the right edge creeps left
// (the window shrinks) and finally reads zero. Then the peer does what a
// kernel does with data it sent under the larger, earlier window: it
// (re)sends it, followed by a pure ACK whose sequence number is its snd.nxt.
//
// Unpatched gVisor drops both as out of window: the data is never
// acknowledged, and the ACK field (acknowledging the server's own data) is
// never processed, which is what stalls a bidirectional transfer for good.
// scripts/unpatched.sh go test ./netstack -run TestReceiveWindowShrink shows
// it failing without the patch.
func TestReceiveWindowShrinkAcceptsInFlight(t *testing.T) {
	leakcheck.Check(t)
	srvDev, peerDev := tun.Pipe("srv0", "peer0", 1500)
	var sndUna atomic.Uint32 // the server's snd.una, as the TCP probe saw it
	st, err := netstack.New(srvDev, netstack.Options{
		Addr: netip.MustParsePrefix("10.0.2.2/24"),
		TCPProbe: func(s *tcp.TCPEndpointState) {
			if s.ID.LocalPort == 9999 {
				sndUna.Store(uint32(s.Sender.SndUna))
			}
		},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ln, err := st.Listen(9999)
	if err != nil {
		t.Fatal(err)
	}
	const greeting = "hello peer"
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write([]byte(greeting)) // server data the peer acknowledges only at the end
		accepted <- c             // and never read: the receive buffer fills
	}()
	defer func() {
		select {
		case c := <-accepted:
			c.Close()
		default:
		}
	}()

	peer := rawtcp.NewPeer(peerDev)
	defer peerDev.Close()
	me, srv := netip.MustParseAddrPort("10.0.2.3:40000"), netip.MustParseAddrPort("10.0.2.2:9999")
	iss := seqnum.Value(1000)
	send := func(seq, ack seqnum.Value, flags header.TCPFlags, payload []byte) {
		t.Helper()
		if err := peer.Send(rawtcp.Segment{Src: me, Dst: srv, Seq: uint32(seq), Ack: uint32(ack), Flags: flags, Window: 65535, Payload: payload}); err != nil {
			t.Fatal(err)
		}
	}
	if err := peer.Send(rawtcp.Segment{Src: me, Dst: srv, Seq: uint32(iss), Flags: header.TCPFlagSyn, Window: 65535, Options: rawtcp.SynOptions(1460, 7, false)}); err != nil {
		t.Fatal(err)
	}
	synack, ok := peer.Recv(2 * time.Second)
	if !ok || synack.Flags != header.TCPFlagSyn|header.TCPFlagAck {
		t.Fatalf("no SYN-ACK (got %+v)", synack)
	}
	scale := synack.WindowScale()
	if scale <= 0 {
		t.Fatalf("server offered window scale %d; the test needs scaling", scale)
	}
	irs := seqnum.Value(synack.Seq)
	sndNxt := iss + 1
	send(sndNxt, irs+1, header.TCPFlagAck, nil)

	// Fill the window. edge is the latest advertised right edge, maxEdge the
	// furthest one ever advertised.
	edge := sndNxt.Add(seqnum.Size(synack.Window)) // a SYN-ACK's window is not scaled
	maxEdge := edge
	shrinks := 0
	payload := make([]byte, 1000)
	for i := 0; i < 10000; i++ {
		if sndNxt.LessThan(edge) {
			n := min(seqnum.Size(len(payload)), sndNxt.Size(edge))
			send(sndNxt, irs+1, header.TCPFlagAck|header.TCPFlagPsh, payload[:n])
			sndNxt = sndNxt.Add(n)
		}
		s, ok := peer.Recv(300 * time.Millisecond)
		if !ok {
			if !sndNxt.LessThan(edge) {
				break // window full and the server is quiet
			}
			continue
		}
		if !s.Flags.Contains(header.TCPFlagAck) {
			continue
		}
		e := seqnum.Value(s.Ack).Add(seqnum.Size(s.Window) << scale)
		if e.LessThan(edge) {
			shrinks++
		}
		edge = e
		if maxEdge.LessThan(edge) {
			maxEdge = edge
		}
	}
	t.Logf("window scale %d: %d shrinking advertisements; peer sent up to %d, latest edge %d, furthest edge %d",
		scale, shrinks, sndNxt-iss, edge-iss, maxEdge-iss)
	if !sndNxt.LessThan(maxEdge) {
		t.Fatalf("the window never shrank below an earlier right edge: gVisor may have stopped rounding windows down; " +
			"re-check whether third_party/patches/gvisor/0001 is still needed, then update this test")
	}

	// The data the earlier window allowed, then a pure ACK at snd.nxt that
	// acknowledges the server's greeting.
	inflight := sndNxt.Size(maxEdge)
	send(sndNxt, irs+1, header.TCPFlagAck|header.TCPFlagPsh, payload[:inflight])
	sndNxt = maxEdge
	greetEnd := irs + 1 + seqnum.Value(len(greeting))
	send(sndNxt, greetEnd, header.TCPFlagAck, nil)

	acked := false
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) && !acked {
		s, ok := peer.Recv(100 * time.Millisecond)
		if ok && s.Flags.Contains(header.TCPFlagAck) && !seqnum.Value(s.Ack).LessThan(maxEdge) {
			acked = true
		}
	}
	if !acked {
		t.Errorf("the server dropped %d bytes that its earlier window (right edge %d) allowed: never acknowledged", inflight, maxEdge-iss)
	}
	// The pure ACK is processed after the data it follows: give it time.
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end) && seqnum.Value(sndUna.Load()).LessThan(greetEnd); {
		time.Sleep(5 * time.Millisecond)
	}
	if got := seqnum.Value(sndUna.Load()); got.LessThan(greetEnd) {
		t.Errorf("the server ignored the peer's ACK of its data (seq %d, past the shrunk edge): snd.una %d, want %d",
			sndNxt-iss, got-irs, greetEnd-irs)
	}
}
