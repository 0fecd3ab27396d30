// Package gso does in software what a NIC (or the kernel, behind a TUN with
// offloads) does to packets that are not yet wire packets: it completes a
// partial transport checksum and cuts a TCP super-segment into wire-sized
// segments, each with its own IP and TCP headers and full checksums.
//
// The fast data path never needs it: with offloads the kernel does this work.
// Layers that must see wire segments (the fault layer, which drops or
// corrupts exactly one segment) call it.
package gso

import (
	"errors"
	"fmt"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tcp-upper/tcp-upper/internal/pkt"
)

// Segment returns the wire segments of the IPv4 TCP packet b: b cut into
// segments of at most mss payload bytes (all of it in one when mss is zero
// or the payload fits), with the IP ID counting up, FIN and PSH only on the
// last segment and CWR only on the first, as Linux's TSO does, and every
// IP and TCP checksum computed in full. b is not modified; the segments
// are new slices.
func Segment(b []byte, mss int) ([][]byte, error) {
	var d pkt.Parsed
	d.Decode(b)
	switch {
	case d.Status < pkt.IPv4:
		return nil, errors.New("gso: not an IPv4 packet")
	case !d.Complete():
		return nil, fmt.Errorf("gso: bad IPv4 lengths (header %d, total %d, have %d)", d.IPHdrLen, d.IPLen, len(b))
	case d.Proto != header.TCPProtocolNumber:
		return nil, errors.New("gso: not a TCP packet")
	case d.FragOff != 0:
		return nil, errors.New("gso: an IP fragment")
	case d.Status == pkt.TCPShort:
		return nil, errors.New("gso: TCP header cut short")
	case d.Status == pkt.BadTCP:
		return nil, fmt.Errorf("gso: bad TCP header length %d", d.TCPHdrLen)
	}
	ip := header.IPv4(b)
	hl, thl, total := d.IPHdrLen, d.TCPHdrLen, d.IPLen
	hdrs := b[:hl+thl]
	payload := b[hl+thl : total]
	if mss <= 0 || len(payload) <= mss {
		mss = max(len(payload), 1)
	}
	n := max((len(payload)+mss-1)/mss, 1)
	out := make([][]byte, 0, n)
	seq, id, flags := d.Seq, ip.ID(), d.Flags
	for i := 0; i < n; i++ {
		chunk := payload[min(i*mss, len(payload)):min((i+1)*mss, len(payload))]
		s := make([]byte, len(hdrs)+len(chunk))
		copy(s, hdrs)
		copy(s[len(hdrs):], chunk)
		sip := header.IPv4(s)
		sip.SetTotalLength(uint16(len(s)))
		if n > 1 {
			sip.SetID(id + uint16(i))
		}
		sip.SetChecksum(0)
		sip.SetChecksum(^sip.CalculateChecksum())
		t := header.TCP(s[hl:])
		t.SetSequenceNumber(seq + uint32(i*mss))
		f := flags
		if i != n-1 {
			f &^= header.TCPFlagFin | header.TCPFlagPsh
		}
		if i != 0 {
			f &^= header.TCPFlagCwr
		}
		t.SetFlags(uint8(f))
		setTCPChecksum(sip, t, hl)
		out = append(out, s)
	}
	return out, nil
}

// setTCPChecksum computes t's checksum in full, over the pseudo-header,
// the TCP header and the payload.
func setTCPChecksum(ip header.IPv4, t header.TCP, hl int) {
	length := uint16(len(ip) - hl)
	t.SetChecksum(0)
	x := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), length)
	x = checksum.Checksum(t, x)
	t.SetChecksum(^x)
}
