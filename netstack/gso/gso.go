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
)

// Segment returns the wire segments of the IPv4 TCP packet b: b cut into
// segments of at most mss payload bytes (all of it in one when mss is zero
// or the payload fits), with the IP ID counting up, FIN and PSH only on the
// last segment and CWR only on the first, as Linux's TSO does, and every
// IP and TCP checksum computed in full. b is not modified; the segments
// are new slices.
func Segment(b []byte, mss int) ([][]byte, error) {
	if len(b) < header.IPv4MinimumSize || header.IPVersion(b) != header.IPv4Version {
		return nil, errors.New("gso: not an IPv4 packet")
	}
	ip := header.IPv4(b)
	hl := int(ip.HeaderLength())
	total := int(ip.TotalLength())
	if hl < header.IPv4MinimumSize || total > len(b) || total < hl {
		return nil, fmt.Errorf("gso: bad IPv4 lengths (header %d, total %d, have %d)", hl, total, len(b))
	}
	if ip.TransportProtocol() != header.TCPProtocolNumber {
		return nil, errors.New("gso: not a TCP packet")
	}
	if total < hl+header.TCPMinimumSize {
		return nil, errors.New("gso: TCP header cut short")
	}
	thl := int(header.TCP(b[hl:]).DataOffset())
	if thl < header.TCPMinimumSize || hl+thl > total {
		return nil, fmt.Errorf("gso: bad TCP header length %d", thl)
	}
	hdrs := b[:hl+thl]
	payload := b[hl+thl : total]
	if mss <= 0 || len(payload) <= mss {
		mss = max(len(payload), 1)
	}
	n := max((len(payload)+mss-1)/mss, 1)
	out := make([][]byte, 0, n)
	tcp0 := header.TCP(b[hl:])
	seq, id, flags := tcp0.SequenceNumber(), ip.ID(), tcp0.Flags()
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
