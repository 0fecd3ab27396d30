package pkt

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// MaxHeaders is how many bytes hold the longest IPv4 header (60) and the
// longest TCP header (60): enough of a packet for Decode to see all of it
// that matters.
const MaxHeaders = 120

// Status says how far Decode got. Each status implies the ones before it
// succeeded: a packet that is TCP is a good IPv4 packet.
type Status uint8

const (
	// Empty: no bytes at all.
	Empty Status = iota
	// NotIPv4: the version nibble is not 4 (Parsed.Version says what it is).
	NotIPv4
	// BadIPv4: fewer bytes than an IPv4 header, or a header length under
	// 20 or beyond the bytes given.
	BadIPv4
	// IPv4: a good IPv4 header whose payload is not a TCP segment Decode
	// reads: another protocol, or a fragment after the first.
	IPv4
	// TCPShort: a TCP segment with fewer than 20 bytes of its header in
	// the bytes given (or in the IP packet's length).
	TCPShort
	// BadTCP: a TCP header whose data offset is under 20 bytes or runs
	// past the IP packet's length.
	BadTCP
	// TCP: good IPv4 and TCP headers; every field of Parsed is set.
	TCP
)

// Parsed is an IPv4 packet's headers, decoded by Decode into a struct the
// caller owns (on its stack: Decode allocates nothing). Fields past what
// Status says was decoded are zero.
type Parsed struct {
	b []byte // the bytes decoded

	Status  Status
	Version uint8 // the IP version nibble (set unless Empty)

	// IPv4 (Status >= IPv4, and Proto, Src and Dst from TCPShort on too).
	IPHdrLen int                           // the IP header's length in bytes
	IPLen    int                           // the IP header's total length (the packet on the wire, which may be more than was given)
	Proto    tcpip.TransportProtocolNumber // the IP header's protocol
	FragOff  uint16                        // the fragment offset in bytes
	More     bool                          // the more-fragments flag
	Src, Dst netip.AddrPort                // addresses; the ports only for TCP

	// TCP (Status TCP; all but PayloadLen also for BadTCP: the fixed
	// header was there, its data offset is wrong).
	TCPHdrLen  int // the TCP header's length in bytes (data offset)
	Seq, Ack   uint32
	Flags      header.TCPFlags
	Win        uint16 // the window field as on the wire (not scaled)
	Urgent     uint16
	PayloadLen int // the TCP payload's length on the wire: IPLen - IPHdrLen - TCPHdrLen
}

// Decode decodes the IPv4 and TCP headers at the front of b (a whole
// packet, or its first bytes: MaxHeaders is enough). It does not check
// checksums. p keeps a reference to b (Options).
func (p *Parsed) Decode(b []byte) {
	*p = Parsed{b: b}
	if len(b) == 0 {
		return
	}
	p.Version = b[0] >> 4
	if p.Version != header.IPv4Version {
		p.Status = NotIPv4
		return
	}
	p.Status = BadIPv4
	hl := int(b[0]&0x0f) * 4
	if len(b) < header.IPv4MinimumSize || hl < header.IPv4MinimumSize || hl > len(b) {
		return
	}
	p.Status = IPv4
	p.IPHdrLen = hl
	p.IPLen = int(binary.BigEndian.Uint16(b[2:]))
	p.Proto = tcpip.TransportProtocolNumber(b[9])
	frag := binary.BigEndian.Uint16(b[6:])
	p.FragOff = (frag & 0x1fff) * 8
	p.More = frag&0x2000 != 0
	src, dst := netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
	p.Src, p.Dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
	if p.Proto != header.TCPProtocolNumber || p.FragOff != 0 {
		return
	}
	p.Status = TCPShort
	seg := min(len(b), p.IPLen) - hl
	if seg < header.TCPMinimumSize {
		return
	}
	t := b[hl:]
	p.Src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(t[0:]))
	p.Dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(t[2:]))
	p.TCPHdrLen = int(t[12]>>4) * 4
	p.Seq = binary.BigEndian.Uint32(t[4:])
	p.Ack = binary.BigEndian.Uint32(t[8:])
	p.Flags = header.TCPFlags(t[13])
	p.Win = binary.BigEndian.Uint16(t[14:])
	p.Urgent = binary.BigEndian.Uint16(t[18:])
	if p.TCPHdrLen < header.TCPMinimumSize || hl+p.TCPHdrLen > p.IPLen {
		p.Status = BadTCP
		return
	}
	p.Status = TCP
	p.PayloadLen = p.IPLen - hl - p.TCPHdrLen
}

// Complete reports whether the bytes decoded hold the whole IPv4 packet
// its header describes (IPHdrLen <= IPLen <= len(b)): gVisor's
// header.IPv4.IsValid(len(b)).
func (p *Parsed) Complete() bool {
	return p.Status >= IPv4 && p.IPHdrLen <= p.IPLen && p.IPLen <= len(p.b)
}

// IsTCP reports whether p is a well-formed IPv4 TCP segment (Status TCP).
func (p *Parsed) IsTCP() bool { return p.Status == TCP }

// Options returns the TCP options that are in the bytes decoded: all of
// them when len(Options()) == TCPHdrLen-20, fewer when the bytes given were
// cut short. Nil unless Status is TCP.
func (p *Parsed) Options() []byte {
	if p.Status != TCP {
		return nil
	}
	start := p.IPHdrLen + header.TCPMinimumSize
	return p.b[start:min(p.IPHdrLen+p.TCPHdrLen, len(p.b))]
}
