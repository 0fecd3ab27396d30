// Package rawtcp builds and parses raw IPv4/TCP segments, so a test can play
// a TCP peer by hand (the way packetdrill does) against our stack through
// the far end of a tun.Pipe.
package rawtcp

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tcp-upper/tcp-upper/internal/pkt"
	"github.com/tcp-upper/tcp-upper/tun"
)

// Segment is one TCP segment in an IPv4 packet.
type Segment struct {
	Src, Dst netip.AddrPort
	Seq, Ack uint32
	Flags    header.TCPFlags
	Window   uint16
	// Options are raw TCP options; Marshal pads them to 4 bytes.
	Options []byte
	Payload []byte
}

// Marshal encodes s as an IPv4 packet with correct checksums.
func (s Segment) Marshal() []byte {
	opts := append([]byte(nil), s.Options...)
	for len(opts)%4 != 0 {
		opts = append(opts, header.TCPOptionNOP)
	}
	tcpLen := header.TCPMinimumSize + len(opts) + len(s.Payload)
	pkt := make([]byte, header.IPv4MinimumSize+tcpLen)
	ip := header.IPv4(pkt)
	src, dst := tcpip.AddrFrom4(s.Src.Addr().As4()), tcpip.AddrFrom4(s.Dst.Addr().As4())
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(pkt)),
		TTL:         64,
		Protocol:    uint8(header.TCPProtocolNumber),
		SrcAddr:     src,
		DstAddr:     dst,
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	t := header.TCP(pkt[header.IPv4MinimumSize:])
	t.Encode(&header.TCPFields{
		SrcPort:    s.Src.Port(),
		DstPort:    s.Dst.Port(),
		SeqNum:     s.Seq,
		AckNum:     s.Ack,
		DataOffset: uint8(header.TCPMinimumSize + len(opts)),
		Flags:      s.Flags,
		WindowSize: s.Window,
	})
	copy(t[header.TCPMinimumSize:], opts)
	copy(t[header.TCPMinimumSize+len(opts):], s.Payload)
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(tcpLen))
	xsum = checksum.Checksum(s.Payload, xsum)
	t.SetChecksum(^t.CalculateChecksum(xsum))
	return pkt
}

// Parse decodes an IPv4/TCP packet. It does not verify checksums.
func Parse(b []byte) (Segment, error) {
	var d pkt.Parsed
	d.Decode(b)
	switch {
	case !d.Complete():
		return Segment{}, errors.New("not a valid IPv4 packet")
	case d.Proto != header.TCPProtocolNumber:
		return Segment{}, fmt.Errorf("IP protocol %d, not TCP", d.Proto)
	case d.FragOff != 0:
		return Segment{}, errors.New("an IP fragment, not a TCP segment")
	case !d.IsTCP():
		return Segment{}, errors.New("truncated TCP header")
	}
	payload := b[d.IPHdrLen+d.TCPHdrLen : d.IPLen]
	return Segment{
		Src:     d.Src,
		Dst:     d.Dst,
		Seq:     d.Seq,
		Ack:     d.Ack,
		Flags:   d.Flags,
		Window:  d.Win,
		Options: append([]byte(nil), d.Options()...),
		Payload: append([]byte(nil), payload...),
	}, nil
}

// SynOptions encodes MSS, window scale (wscale < 0 leaves it out) and
// SACK-permitted options for a SYN.
func SynOptions(mss uint16, wscale int, sackPermitted bool) []byte {
	b := make([]byte, 40)
	n := header.EncodeMSSOption(uint32(mss), b)
	if wscale >= 0 {
		n += header.EncodeWSOption(wscale, b[n:])
	}
	if sackPermitted {
		n += header.EncodeSACKPermittedOption(b[n:])
	}
	return b[:n]
}

// WindowScale returns the window scale option of a SYN segment, or -1.
func (s Segment) WindowScale() int {
	return header.ParseSynOptions(s.Options, s.Flags.Contains(header.TCPFlagAck)).WS
}

// Peer plays a TCP peer on a device: it sends hand-built segments and
// receives what the stack sends back.
type Peer struct {
	Dev tun.Device
	in  chan Segment
}

// NewPeer starts reading dev. Close dev to stop it.
func NewPeer(dev tun.Device) *Peer {
	p := &Peer{Dev: dev, in: make(chan Segment, 1024)}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, err := dev.Read(buf)
			if err != nil {
				close(p.in)
				return
			}
			if s, err := Parse(buf[:n]); err == nil {
				p.in <- s
			}
		}
	}()
	return p
}

// Send writes s to the device.
func (p *Peer) Send(s Segment) error {
	_, err := p.Dev.Write(s.Marshal())
	return err
}

// Recv returns the next segment from the stack, or false after timeout.
func (p *Peer) Recv(timeout time.Duration) (Segment, bool) {
	select {
	case s, ok := <-p.in:
		return s, ok
	case <-time.After(timeout):
		return Segment{}, false
	}
}
