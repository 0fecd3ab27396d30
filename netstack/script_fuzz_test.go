package netstack_test

import (
	"encoding/binary"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/internal/leakcheck"
	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
	"github.com/tcp-upper/tcp-upper/netstack"
)

// A script is what FuzzServerScript decodes its input into: a whole server
// (our stack, the uppercase service) on an in-memory link, and segments
// from several hand-driven peers. Each peer keeps a view of its connection
// (its own next sequence number, the server's, learned from what the
// server sent it), so a script can follow the protocol or stray from it by
// any amount.
//
// Input layout: byte 0 chooses the link (bit 0: offloads) and when the
// service starts accepting (bits 1-7: after that many steps, 0 at once);
// then 8 bytes per step:
//
//	0  peer (bits 0-1); sequence number (bits 2-3): the peer's next, next
//	   plus the offset, next plus the offset << 16, or its first; bits
//	   4-5 the same for the ACK number, relative to the server's next as
//	   the peer knows it (3: zero); bits 6-7 = 3: send the peer's previous
//	   segment again
//	1  TCP flags, any combination
//	2  payload length
//	3  options: bit 0 MSS, 1 window scale, 2 SACK-permitted, 3 timestamps,
//	   4 a SACK block, 5 a malformed option; bit 6: then wait (up to
//	   50 ms) for the server to send this peer something, as a real peer
//	   waits for the SYN-ACK or the echo before it goes on
//	4-5 offset (signed)
//	6  window's high byte and options' parameter
//	7  timestamp step (signed)
const scriptStep = 8

const (
	scriptPeers = 4
	scriptPort  = 40000
)

type scriptPeer struct {
	port           uint16
	iss, sndNxt    uint32
	srvNxt, srvAck uint32 // the server's next sequence number, and its last ACK to us
	knowsSrv       bool
	tsVal, tsEcr   uint32
	last           *rawtcp.Segment
}

// FuzzServerScript drives the whole server with arbitrary segment
// sequences from several peers (see scriptStep) and asserts: nothing
// panics; the server still accepts and echoes a fresh client; once every
// peer has reset what it opened, the service holds no connection and the
// stack no endpoint outside LISTEN, TIME-WAIT and CLOSED; and no goroutine
// is left when the server has shut down.
func FuzzServerScript(f *testing.F) {
	for _, s := range scriptSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		if len(in) > 1+64*scriptStep {
			in = in[:1+64*scriptStep]
		}
		runScript(t, in)
	})
}

func runScript(t *testing.T, in []byte) {
	leakcheck.Check(t)
	l := plainLink
	if in[0]&1 != 0 {
		l = offloadLink
	}
	serveAfter := int(in[0] >> 1)
	rs := newRawServer(t, l, netstack.Options{TimeWait: time.Second})
	peers := make([]*scriptPeer, scriptPeers)
	for i := range peers {
		peers[i] = &scriptPeer{port: uint16(scriptPort + i), iss: uint32(i+1) * 100000, tsVal: 1000}
		peers[i].sndNxt = peers[i].iss
	}
	byPort := func(p uint16) *scriptPeer {
		if p >= scriptPort && p < scriptPort+scriptPeers {
			return peers[p-scriptPort]
		}
		return nil
	}
	learn := func(s rawtcp.Segment) {
		p := byPort(s.Dst.Port())
		if p == nil {
			return
		}
		end := s.Seq + uint32(len(s.Payload))
		if s.Flags.Contains(header.TCPFlagSyn) || s.Flags.Contains(header.TCPFlagFin) {
			end++
		}
		if !p.knowsSrv || int32(end-p.srvNxt) > 0 {
			p.srvNxt = end
		}
		p.knowsSrv = true
		if s.Flags.Contains(header.TCPFlagAck) {
			p.srvAck = s.Ack
		}
		if ts := header.ParseTCPOptions(s.Options); ts.TS {
			p.tsEcr = ts.TSVal
		}
	}
	served := serveAfter == 0
	if served {
		rs.serve(app.ServerOptions{})
	}
	steps := in[1:]
	for i := 0; len(steps) >= scriptStep; i++ {
		if !served && i == serveAfter {
			rs.serve(app.ServerOptions{})
			served = true
		}
		step := steps[:scriptStep]
		steps = steps[scriptStep:]
		p := peers[step[0]&3]
		seg := p.segment(rs, step)
		rs.send(t, seg)
		for _, s := range rs.barrier(t) {
			learn(s)
		}
		if step[3]&64 != 0 {
			if s, ok := rs.next(seg.Src, 50*time.Millisecond); ok {
				learn(s)
			}
		}
	}
	if !served {
		rs.serve(app.ServerOptions{})
	}

	// A fresh client is served.
	fresh := rs.dial(t, 50000, 50000000, 0)
	fresh.echo("still serving")
	fresh.reset()

	// Every peer resets what it opened; an RST that is not exact earns a
	// challenge ACK (RFC 5961 §3), which tells the peer the exact number.
	// Then nothing may be left.
	var left []string
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, p := range peers {
			if p.knowsSrv {
				rs.send(t, rawtcp.Segment{Src: netip.AddrPortFrom(peerIP, p.port), Dst: netip.AddrPortFrom(serverIP, 9999),
					Seq: p.srvAck, Flags: header.TCPFlagRst})
			}
		}
		for _, s := range rs.barrier(t) {
			learn(s)
		}
		if left = rs.busyEndpoints(); len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after every peer reset: endpoints still open: %v", left)
		}
		time.Sleep(time.Millisecond)
	}
	for rs.srv.Conns() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after every peer reset: the service still holds %d connection(s)", rs.srv.Conns())
		}
		time.Sleep(time.Millisecond)
	}
}

// segment builds the peer's next segment from a script step and updates
// its view.
func (p *scriptPeer) segment(rs *rawServer, step []byte) rawtcp.Segment {
	if step[0]>>6 == 3 && p.last != nil {
		return *p.last
	}
	off := uint32(int32(int16(binary.BigEndian.Uint16(step[4:6]))))
	flags := header.TCPFlags(step[1])
	s := rawtcp.Segment{
		Src:    netip.AddrPortFrom(peerIP, p.port),
		Dst:    netip.AddrPortFrom(serverIP, 9999),
		Flags:  flags,
		Window: uint16(step[6])<<8 | 0xff,
	}
	switch (step[0] >> 2) & 3 {
	case 0:
		s.Seq = p.sndNxt
	case 1:
		s.Seq = p.sndNxt + off
	case 2:
		s.Seq = p.sndNxt + off<<16
	case 3:
		s.Seq = p.iss
	}
	if flags.Contains(header.TCPFlagSyn) && !flags.Contains(header.TCPFlagAck) && (step[0]>>2)&3 == 0 {
		// A new connection from this port: a fresh ISN above the last.
		p.iss = p.sndNxt + 1<<20
		p.sndNxt = p.iss
		p.knowsSrv = false
		s.Seq = p.iss
	}
	switch (step[0] >> 4) & 3 {
	case 0:
		s.Ack = p.srvNxt
	case 1:
		s.Ack = p.srvNxt + off
	case 2:
		s.Ack = p.srvNxt + off<<16
	}
	var opts []byte
	param := step[6]
	if step[3]&1 != 0 {
		b := make([]byte, header.TCPOptionMSSLength)
		header.EncodeMSSOption(uint32(param)<<4, b)
		opts = append(opts, b...)
	}
	if step[3]&2 != 0 {
		b := make([]byte, 3)
		header.EncodeWSOption(int(param&15), b)
		opts = append(opts, b...)
	}
	if step[3]&4 != 0 {
		opts = append(opts, header.TCPOptionSACKPermitted, 2)
	}
	if step[3]&8 != 0 {
		p.tsVal += uint32(int32(int8(step[7])))
		b := make([]byte, header.TCPOptionTSLength)
		header.EncodeTSOption(p.tsVal, p.tsEcr, b)
		opts = append(opts, b...)
	}
	if step[3]&16 != 0 {
		b := make([]byte, 10)
		header.EncodeSACKBlocks([]header.SACKBlock{{Start: seqnum.Value(p.srvNxt - off), End: seqnum.Value(p.srvNxt - off + uint32(param)<<4)}}, b)
		opts = append(opts, b...)
	}
	if step[3]&32 != 0 {
		opts = append(opts, param, step[7]) // a kind and a length of any value
	}
	if len(opts) > 40 {
		opts = opts[:40]
	}
	s.Options = opts
	if n := int(step[2]); n > 0 {
		s.Payload = make([]byte, n)
		for i := range s.Payload {
			s.Payload[i] = 'a' + byte(i%26)
		}
	}
	if (step[0]>>2)&3 == 0 && !flags.Contains(header.TCPFlagRst) {
		p.sndNxt += uint32(len(s.Payload))
		if flags.Contains(header.TCPFlagSyn) {
			p.sndNxt++
		}
		if flags.Contains(header.TCPFlagFin) {
			p.sndNxt++
		}
	}
	p.last = &s
	return s
}

// barrier waits until the stack's input has taken everything sent so far
// (a SYN to a closed port from another address follows it through the
// same read goroutine, and its RST comes back only after), and returns
// what the stack sent meanwhile (and what recv and next passed over).
func (rs *rawServer) barrier(t testing.TB) []rawtcp.Segment {
	t.Helper()
	rs.marker++
	seq := rs.marker * 7919
	marker := netip.AddrPortFrom(markerIP, uint16(20000+rs.marker%40000))
	rs.send(t, rawtcp.Segment{Src: marker, Dst: netip.AddrPortFrom(serverIP, 1), Seq: seq, Flags: header.TCPFlagSyn, Window: 1024})
	got := rs.passed
	rs.passed = nil
	timeout := time.After(5 * time.Second)
	for {
		select {
		case s := <-rs.segs:
			if s.Dst == marker && s.Flags.Contains(header.TCPFlagRst) && s.Ack == seq+1 {
				return got
			}
			got = append(got, s)
		case <-timeout:
			t.Fatal("the stack stopped answering")
		}
	}
}

// busyEndpoints lists the stack's TCP endpoints in a state other than
// LISTEN, TIME-WAIT and CLOSED.
func (rs *rawServer) busyEndpoints() []string {
	var busy []string
	for _, ep := range rs.st.Gvisor().RegisteredEndpoints() {
		e, ok := ep.(*tcp.Endpoint)
		if !ok {
			continue
		}
		switch st := e.EndpointState(); st {
		case tcp.StateListen, tcp.StateTimeWait, tcp.StateClose, tcp.StateError:
		default:
			id := e.TransportEndpointInfo.ID
			busy = append(busy, id.RemoteAddress.String()+":"+strconv.Itoa(int(id.RemotePort))+" "+st.String())
		}
	}
	return busy
}

// scriptSeeds are scripts worth starting from: the seed's session, a
// reset before accept (once a remote crash), a half-close, a retransmitted
// SYN, data beyond the window, and a port reused at once.
func scriptSeeds() [][]byte {
	const ack, syn, fin, rst, psh = byte(header.TCPFlagAck), byte(header.TCPFlagSyn), byte(header.TCPFlagFin), byte(header.TCPFlagRst), byte(header.TCPFlagPsh)
	const wait = 64
	step := func(peer, mode, flags, n, opts byte, off int16, param, ts byte) []byte {
		b := []byte{peer | mode<<2, flags, n, opts, 0, 0, param, ts}
		binary.BigEndian.PutUint16(b[4:], uint16(off))
		return b
	}
	script := func(head byte, steps ...[]byte) []byte {
		b := []byte{head}
		for _, s := range steps {
			b = append(b, s...)
		}
		return b
	}
	open := func(peer byte) [][]byte {
		return [][]byte{step(peer, 0, syn, 0, 1|2|4|8|wait, 0, 0x5a, 1), step(peer, 0, ack, 0, 8, 0, 0xff, 1)}
	}
	session := append(open(0), step(0, 0, ack|psh, 12, 8|wait, 0, 0xff, 1), step(0, 0, ack|fin, 0, 8|wait, 0, 0xff, 1), step(0, 0, ack, 0, 8, 0, 0xff, 1))
	resetBeforeAccept := append(open(1), step(1, 0, rst, 0, 0, 0, 0, 0))
	halfClose := append(open(2), step(2, 0, ack|fin, 0, 0, 0, 0xff, 0), step(2, 0, ack|psh, 5, 0, 0, 0xff, 0))
	synAgain := [][]byte{step(3, 0, syn, 0, 1, 0, 0x5a, 0), step(3, 3, syn, 0, 1|wait, 0, 0x5a, 0), step(3, 0, ack, 0, 0, 0, 0xff, 0)}
	beyond := append(open(0), step(0, 1, ack|psh, 200, 0, 30000, 0x01, 0), step(0, 0, ack, 0, 16, 100, 0xff, 0))
	badAck := append(open(1), step(1, 1<<2, ack|psh, 10, 8, 3000, 0xff, 0))
	reuse := append(append(open(2), step(2, 0, rst, 0, 0, 0, 0, 0)), open(2)...)
	var seeds [][]byte
	for _, link := range []byte{0, 1} {
		seeds = append(seeds,
			script(link, session...),
			script(link|3<<1, resetBeforeAccept...), // served after the RST
			script(link|4<<1, append(open(0), resetBeforeAccept...)...),
			script(link, halfClose...),
			script(link, synAgain...),
			script(link, beyond...),
			script(link, badAck...),
			script(link, reuse...),
		)
	}
	return seeds
}
