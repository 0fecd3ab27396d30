package compare

import (
	"fmt"
	"io"
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
	"github.com/tcp-upper/tcp-upper/tun"
)

// peer is the raw TCP peer: it owns a plain TUN in ant whose far side is
// the peer's address, reads every segment the kernel forwards into it and
// hands each to the flow (local port) it belongs to. Ant's kernel only
// forwards: the address is not its own, so it never answers the
// conversation itself.
type peer struct {
	dev   tun.Device
	local netip.Addr

	mu    sync.Mutex
	flows map[uint16]chan timed
	next  uint16

	verbose io.Writer
	start   time.Time
}

// timed is a segment and when it arrived.
type timed struct {
	rawtcp.Segment
	at time.Time
}

func newPeer(dev tun.Device, local netip.Addr, firstPort uint16, verbose io.Writer) *peer {
	p := &peer{dev: dev, local: local, flows: map[uint16]chan timed{}, next: firstPort, verbose: verbose, start: time.Now()}
	go p.read()
	return p
}

func (p *peer) read() {
	buf := make([]byte, 65536)
	for {
		n, err := p.dev.Read(buf)
		if err != nil {
			return
		}
		if n == 0 {
			continue
		}
		s, err := rawtcp.Parse(buf[:n])
		if err != nil || s.Dst.Addr() != p.local {
			continue
		}
		at := time.Now()
		p.mu.Lock()
		ch := p.flows[s.Dst.Port()]
		p.mu.Unlock()
		if ch == nil {
			continue
		}
		select {
		case ch <- timed{s, at}:
		default: // a flow that stopped listening; never block the reader
		}
	}
}

// flow reserves a fresh local port for one conversation with remote.
func (p *peer) flow(stack string, remote netip.AddrPort) *conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	port := p.next
	p.next++
	ch := make(chan timed, 512)
	p.flows[port] = ch
	return &conn{p: p, stack: stack, local: netip.AddrPortFrom(p.local, port), remote: remote, in: ch,
		iss: 1_000_000, tsVal: 1_000_000, ourWS: -1, srvWS: -1}
}

// release stops delivering to c's port.
func (p *peer) release(c *conn) {
	p.mu.Lock()
	delete(p.flows, c.local.Port())
	p.mu.Unlock()
}

// conn is one scripted conversation: the peer's side of a TCP connection
// with its sequence numbers, so probes can say "data at RCV.NXT+100".
type conn struct {
	p             *peer
	stack         string
	local, remote netip.AddrPort
	in            chan timed

	iss, irs       uint32
	sndNxt, rcvNxt uint32 // ours to send; next expected from the server
	lastAck        uint32 // the server's latest ACK: its RCV.NXT
	srvWnd         uint32 // the server's window in bytes
	srvWS, ourWS   int
	win            uint16 // window we advertise (raw)
	ts, sack       bool
	tsVal, tsEcr   uint32
	synAck         rawtcp.Segment
	synced         bool // the server has sent its SYN-ACK: there is something to reset
	reset          bool // a RST went either way: nothing to clean up
}

// synOpts is what the peer's SYN offers.
type synOpts struct {
	mss  uint16 // 0: no MSS option
	ws   int    // -1: no window scale
	sack bool
	ts   bool
}

var fullOpts = synOpts{mss: 1460, ws: 7, sack: true, ts: true}

func (o synOpts) encode(tsVal uint32) []byte {
	b := make([]byte, 40)
	n := 0
	if o.mss != 0 {
		n += header.EncodeMSSOption(uint32(o.mss), b[n:])
	}
	if o.sack {
		n += header.EncodeSACKPermittedOption(b[n:])
	}
	if o.ts {
		n += header.EncodeNOP(b[n:])
		n += header.EncodeNOP(b[n:])
		n += header.EncodeTSOption(tsVal, 0, b[n:])
	}
	if o.ws >= 0 {
		n += header.EncodeNOP(b[n:])
		n += header.EncodeWSOption(o.ws, b[n:])
	}
	return b[:n]
}

func (c *conn) logf(format string, args ...any) {
	if c.p.verbose != nil {
		fmt.Fprintf(c.p.verbose, "  %8.3fs %-8s %s\n", time.Since(c.p.start).Seconds(), c.stack, fmt.Sprintf(format, args...))
	}
}

// rel prints a segment with sequence numbers relative to the ISNs.
func (c *conn) rel(s rawtcp.Segment, out bool) string {
	seq, ack := s.Seq-c.irs, s.Ack-c.iss
	if out {
		seq, ack = s.Seq-c.iss, s.Ack-c.irs
	}
	if s.Flags&header.TCPFlagAck == 0 {
		ack = 0 // a SYN or RST without ACK: the field means nothing
	}
	str := fmt.Sprintf("[%s] seq %d ack %d win %d len %d", flagString(s.Flags), seq, ack, s.Window, len(s.Payload))
	if o := header.ParseTCPOptions(s.Options); o.TS {
		str += fmt.Sprintf(" TS val %d ecr %d", o.TSVal, o.TSEcr)
	}
	if o := header.ParseTCPOptions(s.Options); len(o.SACKBlocks) > 0 {
		base := c.iss // the server's blocks are in our sequence space
		if out {
			base = c.irs
		}
		for _, b := range o.SACKBlocks {
			str += fmt.Sprintf(" sack %d-%d", uint32(b.Start)-base, uint32(b.End)-base)
		}
	}
	return str
}

func flagString(f header.TCPFlags) string {
	var s string
	for _, x := range []struct {
		f header.TCPFlags
		c string
	}{{header.TCPFlagSyn, "S"}, {header.TCPFlagFin, "F"}, {header.TCPFlagRst, "R"}, {header.TCPFlagPsh, "P"}, {header.TCPFlagUrg, "U"}, {header.TCPFlagAck, "."}} {
		if f&x.f != 0 {
			s += x.c
		}
	}
	return s
}

// seg builds a segment at our current position with the options the
// connection negotiated.
func (c *conn) seg(flags header.TCPFlags, payload []byte) rawtcp.Segment {
	s := rawtcp.Segment{Src: c.local, Dst: c.remote, Seq: c.sndNxt, Ack: c.rcvNxt, Flags: flags, Window: c.win, Payload: payload}
	if c.ts {
		b := make([]byte, 12)
		header.EncodeNOP(b)
		header.EncodeNOP(b[1:])
		c.tsVal++
		header.EncodeTSOption(c.tsVal, c.tsEcr, b[2:])
		s.Options = b
	}
	return s
}

// write sends s as it is.
func (c *conn) write(s rawtcp.Segment) error {
	return c.writeRaw(s, s.Marshal())
}

func (c *conn) writeRaw(s rawtcp.Segment, pkt []byte) error {
	c.logf("> %s", c.rel(s, true))
	if s.Flags&header.TCPFlagRst != 0 {
		c.reset = true
	}
	if _, err := c.p.dev.Write(pkt); err != nil {
		return fmt.Errorf("write to the peer's TUN: %w", err)
	}
	return nil
}

// send writes a segment at our position and advances it.
func (c *conn) send(flags header.TCPFlags, payload []byte) error {
	s := c.seg(flags, payload)
	if err := c.write(s); err != nil {
		return err
	}
	c.sndNxt += uint32(len(payload))
	if flags&(header.TCPFlagSyn|header.TCPFlagFin) != 0 {
		c.sndNxt++
	}
	return nil
}

// ack sends a pure ACK of what we have received.
func (c *conn) ack() error { return c.write(c.seg(header.TCPFlagAck, nil)) }

// recv returns the next segment of this flow, or false when none arrives
// within d. It keeps the server's ACK, window and TSval.
func (c *conn) recv(d time.Duration) (timed, bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		var s timed
		select {
		case s = <-c.in:
		case <-t.C:
			return timed{}, false
		}
		if s.Src != c.remote {
			continue // an earlier peer of this port (closed-port changes it)
		}
		c.logf("< %s", c.rel(s.Segment, false))
		if s.Flags&header.TCPFlagRst != 0 {
			c.reset = true
		}
		if s.Flags&header.TCPFlagAck != 0 && int32(s.Ack-c.lastAck) > 0 {
			c.lastAck = s.Ack
		}
		if s.Flags&header.TCPFlagSyn == 0 {
			c.srvWnd = uint32(s.Window) << max(c.srvWS, 0)
		}
		if c.ts {
			if o := header.ParseTCPOptions(s.Options); o.TS {
				c.tsEcr = o.TSVal
			}
		}
		return s, true
	}
}

// collect returns every segment arriving within d.
func (c *conn) collect(d time.Duration) []timed {
	var segs []timed
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return segs
		}
		s, ok := c.recv(left)
		if !ok {
			return segs
		}
		segs = append(segs, s)
	}
}

// dial runs the handshake with o. It returns an error naming what came
// back instead of a SYN-ACK.
func (c *conn) dial(o synOpts) error {
	c.sndNxt = c.iss
	c.ourWS = o.ws
	c.win = 65535
	syn := rawtcp.Segment{Src: c.local, Dst: c.remote, Seq: c.iss, Flags: header.TCPFlagSyn, Window: c.win, Options: o.encode(c.tsVal)}
	if err := c.write(syn); err != nil {
		return err
	}
	c.sndNxt++
	deadline := time.Now().Add(2 * time.Second)
	for {
		s, ok := c.recv(time.Until(deadline))
		if !ok {
			return fmt.Errorf("no SYN-ACK within 2s")
		}
		if s.Flags&header.TCPFlagRst != 0 {
			return fmt.Errorf("SYN answered with RST")
		}
		if s.Flags != header.TCPFlagSyn|header.TCPFlagAck || s.Ack != c.iss+1 {
			continue
		}
		c.synAck = s.Segment
		c.irs, c.synced = s.Seq, true
		c.rcvNxt = s.Seq + 1
		c.lastAck = s.Ack
		so := header.ParseSynOptions(s.Options, true)
		c.ts = o.ts && so.TS
		c.sack = o.sack && so.SACKPermitted
		if o.ws >= 0 && so.WS >= 0 {
			c.srvWS = so.WS
		} else {
			c.srvWS, c.ourWS = -1, -1
		}
		c.srvWnd = uint32(s.Window)
		if c.ts {
			c.tsEcr = so.TSVal
		}
		return c.ack()
	}
}

// close resets the connection (at the server's RCV.NXT, so it is
// accepted) unless a RST already went, and stops its flow.
func (c *conn) close() {
	if !c.reset && c.synced {
		s := c.seg(header.TCPFlagRst|header.TCPFlagAck, nil)
		s.Seq = c.lastAck
		c.write(s)
	}
	c.p.release(c)
}

// readEcho reads the server's data in order until n bytes (and with
// wantFin a FIN after them) have come or d has passed, ACKing each data
// segment at once. It returns the data, the largest segment's payload and
// whether a FIN came.
func (c *conn) readEcho(n int, wantFin bool, d time.Duration) (data []byte, largest int, fin bool) {
	deadline := time.Now().Add(d)
	for len(data) < n || (wantFin && !fin) {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		s, ok := c.recv(left)
		if !ok {
			break
		}
		if s.Flags&header.TCPFlagRst != 0 {
			break
		}
		advanced := false
		if len(s.Payload) > 0 && s.Seq == c.rcvNxt {
			data = append(data, s.Payload...)
			largest = max(largest, len(s.Payload))
			c.rcvNxt += uint32(len(s.Payload))
			advanced = true
		}
		if s.Flags&header.TCPFlagFin != 0 && s.Seq+uint32(len(s.Payload)) == c.rcvNxt {
			c.rcvNxt++
			fin, advanced = true, true
		}
		if advanced || len(s.Payload) > 0 {
			c.ack()
		}
	}
	return data, largest, fin
}

// alive sends a byte of data at our position and reports whether the
// server still has the connection: true if it echoes, false on a RST or
// silence.
func (c *conn) alive() bool {
	// A RST the probe sent does not settle it: the server's answer does.
	c.reset = false
	if err := c.send(header.TCPFlagAck|header.TCPFlagPsh, []byte("q")); err != nil {
		return false
	}
	deadline := time.Now().Add(time.Second)
	for {
		s, ok := c.recv(time.Until(deadline))
		if !ok {
			return false
		}
		if s.Flags&header.TCPFlagRst != 0 {
			return false
		}
		if len(s.Payload) > 0 && s.Seq == c.rcvNxt {
			c.rcvNxt += uint32(len(s.Payload))
			c.ack()
			if s.Payload[len(s.Payload)-1] == 'Q' {
				return true
			}
		}
	}
}

// setUrgent puts an urgent pointer into a marshalled IPv4/TCP packet and
// recomputes its TCP checksum (rawtcp.Segment has no urgent pointer).
func setUrgent(pkt []byte, ptr uint16) {
	ip := header.IPv4(pkt)
	t := header.TCP(pkt[header.IPv4MinimumSize:])
	t.SetUrgentPointer(ptr)
	t.SetChecksum(0)
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(t)))
	xsum = checksum.Checksum(t.Payload(), xsum)
	t.SetChecksum(^t.CalculateChecksum(xsum))
}
