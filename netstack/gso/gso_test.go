package gso_test

import (
	"bytes"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tcp-upper/tcp-upper/netstack/gso"
)

// superSegment builds an IPv4 TCP packet with payload and flags, its TCP
// checksum only partial (the pseudo-header sum), as a GSO sender hands it on.
func superSegment(payload []byte, flags header.TCPFlags) []byte {
	const thl = header.TCPMinimumSize + 12 // with a timestamp option
	b := make([]byte, header.IPv4MinimumSize+thl+len(payload))
	ip := header.IPv4(b)
	src, dst := tcpip.AddrFrom4([4]byte{10, 0, 2, 2}), tcpip.AddrFrom4([4]byte{10, 0, 1, 2})
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), ID: 100, TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: src, DstAddr: dst})
	ip.SetChecksum(^ip.CalculateChecksum())
	t := header.TCP(b[header.IPv4MinimumSize:])
	t.Encode(&header.TCPFields{SrcPort: 9999, DstPort: 40000, SeqNum: 1000, AckNum: 7, DataOffset: thl, Flags: flags, WindowSize: 512})
	copy(t[header.TCPMinimumSize:], []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2})
	copy(b[header.IPv4MinimumSize+thl:], payload)
	t.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(b)-header.IPv4MinimumSize)))
	return b
}

func TestSegment(t *testing.T) {
	payload := make([]byte, 10*1448+100)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	in := superSegment(payload, header.TCPFlagAck|header.TCPFlagPsh|header.TCPFlagFin|header.TCPFlagCwr)
	orig := append([]byte(nil), in...)
	segs, err := gso.Segment(in, 1448)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(in, orig) {
		t.Fatal("Segment modified its input")
	}
	if len(segs) != 11 {
		t.Fatalf("%d segments, want 11", len(segs))
	}
	var got []byte
	for i, s := range segs {
		ip := header.IPv4(s)
		if !ip.IsChecksumValid() {
			t.Errorf("segment %d: bad IP checksum", i)
		}
		if int(ip.TotalLength()) != len(s) || ip.ID() != uint16(100+i) {
			t.Errorf("segment %d: total length %d (len %d), id %d", i, ip.TotalLength(), len(s), ip.ID())
		}
		tcp := header.TCP(s[header.IPv4MinimumSize:])
		data := tcp[tcp.DataOffset():]
		if !tcp.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(data, 0), uint16(len(data))) {
			t.Errorf("segment %d: bad TCP checksum", i)
		}
		if want := uint32(1000 + i*1448); tcp.SequenceNumber() != want {
			t.Errorf("segment %d: seq %d, want %d", i, tcp.SequenceNumber(), want)
		}
		f := tcp.Flags()
		last, first := i == len(segs)-1, i == 0
		if (f&header.TCPFlagFin != 0) != last || (f&header.TCPFlagPsh != 0) != last || (f&header.TCPFlagCwr != 0) != first || f&header.TCPFlagAck == 0 {
			t.Errorf("segment %d: flags %v", i, f)
		}
		if !last && len(data) != 1448 {
			t.Errorf("segment %d: %d bytes of payload", i, len(data))
		}
		got = append(got, data...)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("the segments' payloads do not add up to the original")
	}
}

// TestSegmentCompletesChecksum: a packet within the MSS comes back whole,
// with its partial checksum made full.
func TestSegmentCompletesChecksum(t *testing.T) {
	in := superSegment([]byte("hello world!"), header.TCPFlagAck|header.TCPFlagPsh)
	segs, err := gso.Segment(in, 1448)
	if err != nil || len(segs) != 1 {
		t.Fatalf("%d segments, %v", len(segs), err)
	}
	ip := header.IPv4(segs[0])
	tcp := header.TCP(segs[0][header.IPv4MinimumSize:])
	data := tcp[tcp.DataOffset():]
	if string(data) != "hello world!" || !tcp.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(data, 0), uint16(len(data))) {
		t.Fatalf("payload %q, checksum valid %v", data, tcp.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(data, 0), uint16(len(data))))
	}
}

func TestSegmentRejects(t *testing.T) {
	good := superSegment([]byte("x"), header.TCPFlagAck)
	for name, b := range map[string][]byte{
		"empty":     nil,
		"ipv6":      append([]byte{0x60}, good[1:]...),
		"truncated": good[:header.IPv4MinimumSize+10],
		"udp":       func() []byte { b := append([]byte(nil), good...); b[9] = 17; return b }(),
	} {
		if _, err := gso.Segment(b, 1448); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// FuzzSegment: no input panics, and whatever Segment returns is a set of
// valid IPv4 packets.
func FuzzSegment(f *testing.F) {
	f.Add(superSegment(make([]byte, 5000), header.TCPFlagAck), 1448)
	f.Add(superSegment(nil, header.TCPFlagSyn), 0)
	f.Fuzz(func(t *testing.T, b []byte, mss int) {
		segs, err := gso.Segment(b, mss%70000)
		if err != nil {
			return
		}
		for _, s := range segs {
			if !header.IPv4(s).IsChecksumValid() {
				t.Fatal("segment with a bad IP checksum")
			}
		}
	})
}
