package pkt_test

import (
	"net/netip"
	"reflect"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tcp-upper/tcp-upper/internal/pkt"
	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
)

// reference decodes b with gVisor's header package, the way our five
// decoders did: the oracle Decode is held to.
func reference(b []byte) pkt.Parsed {
	var p pkt.Parsed
	if len(b) == 0 {
		return p
	}
	p.Version = uint8(b[0] >> 4)
	if header.IPVersion(b) != header.IPv4Version {
		p.Status = pkt.NotIPv4
		return p
	}
	ip := header.IPv4(b)
	p.Status = pkt.BadIPv4
	if len(b) < header.IPv4MinimumSize || int(ip.HeaderLength()) < header.IPv4MinimumSize || int(ip.HeaderLength()) > len(b) {
		return p
	}
	hl := int(ip.HeaderLength())
	p.Status = pkt.IPv4
	p.IPHdrLen, p.IPLen = hl, int(ip.TotalLength())
	p.Proto = ip.TransportProtocol()
	p.FragOff, p.More = ip.FragmentOffset(), ip.More()
	src, dst := netip.AddrFrom4(ip.SourceAddress().As4()), netip.AddrFrom4(ip.DestinationAddress().As4())
	p.Src, p.Dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
	if p.Proto != header.TCPProtocolNumber || p.FragOff != 0 {
		return p
	}
	p.Status = pkt.TCPShort
	if min(len(b), p.IPLen)-hl < header.TCPMinimumSize {
		return p
	}
	t := header.TCP(b[hl:])
	p.Src, p.Dst = netip.AddrPortFrom(src, t.SourcePort()), netip.AddrPortFrom(dst, t.DestinationPort())
	p.TCPHdrLen = int(t.DataOffset())
	p.Seq, p.Ack, p.Flags = t.SequenceNumber(), t.AckNumber(), t.Flags()
	p.Win, p.Urgent = t.WindowSize(), t.UrgentPointer()
	p.Status = pkt.BadTCP
	if p.TCPHdrLen < header.TCPMinimumSize || hl+p.TCPHdrLen > p.IPLen {
		return p
	}
	p.Status = pkt.TCP
	p.PayloadLen = p.IPLen - hl - p.TCPHdrLen
	return p
}

func seeds() [][]byte {
	cli := netip.MustParseAddrPort("10.0.1.2:47762")
	srv := netip.MustParseAddrPort("10.0.2.2:9999")
	syn := rawtcp.Segment{Src: cli, Dst: srv, Seq: 1000, Flags: header.TCPFlagSyn, Window: 64240, Options: rawtcp.SynOptions(1460, 7, true)}.Marshal()
	data := rawtcp.Segment{Src: srv, Dst: cli, Seq: 77, Ack: 1001, Flags: header.TCPFlagAck | header.TCPFlagPsh, Window: 502, Payload: []byte("HELLO WORLD!\n")}.Marshal()
	frag := append([]byte(nil), data...)
	frag[6], frag[7] = 0x00, 0x03 // fragment offset 24 bytes
	first := append([]byte(nil), data...)
	first[6] = 0x20 // more fragments, offset 0
	badOff := append([]byte(nil), data...)
	badOff[20+12] = 0x40 // data offset 16 bytes
	longOff := append([]byte(nil), syn...)
	longOff[20+12] = 0xf0 // data offset 60 bytes, past the packet
	ipOpts := append(append([]byte{0x46}, syn[1:20]...), append([]byte{1, 1, 1, 0}, syn[20:]...)...)
	ipOpts[3] += 4
	return [][]byte{
		syn, syn[:30], syn[:40], data, data[:25], frag, first, badOff, longOff, ipOpts,
		{0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 1, 2, 10, 0, 2, 2, 8, 0, 0, 0, 0, 1, 0, 1},    // ICMP echo
		{0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 1, 2, 10, 0, 2, 2, 0, 53, 0, 53, 0, 8, 0, 0}, // UDP
		{0x60, 0, 0, 0, 0, 20, 6, 64}, // IPv6
		{0x4f}, {0x44, 0, 0, 20}, {},
	}
}

func check(t *testing.T, b []byte) {
	var got pkt.Parsed
	got.Decode(b)
	want := reference(b)
	gotOpts, complete := got.Options(), got.Complete()
	got = stripBytes(got)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%x:\nDecode    %+v\ngVisor's  %+v", b, got, want)
	}
	if c := complete; c != (want.Status >= pkt.IPv4 && header.IPv4(b).IsValid(len(b))) {
		t.Fatalf("%x: Complete() = %v, gVisor's IPv4.IsValid says otherwise", b, c)
	}
	if want.Status == pkt.TCP {
		hl := want.IPHdrLen
		end := min(hl+want.TCPHdrLen, len(b))
		if string(gotOpts) != string(b[hl+header.TCPMinimumSize:end]) {
			t.Fatalf("%x: Options() = %x, want %x", b, gotOpts, b[hl+header.TCPMinimumSize:end])
		}
	} else if gotOpts != nil {
		t.Fatalf("%x: Options() = %x for a packet that is not good TCP", b, gotOpts)
	}
}

// stripBytes returns p without its reference to the bytes (which the
// reference does not keep), so two Parsed compare by their fields.
func stripBytes(p pkt.Parsed) pkt.Parsed {
	var q pkt.Parsed
	q.Status, q.Version = p.Status, p.Version
	q.IPHdrLen, q.IPLen, q.Proto, q.FragOff, q.More, q.Src, q.Dst = p.IPHdrLen, p.IPLen, p.Proto, p.FragOff, p.More, p.Src, p.Dst
	q.TCPHdrLen, q.Seq, q.Ack, q.Flags, q.Win, q.Urgent, q.PayloadLen = p.TCPHdrLen, p.Seq, p.Ack, p.Flags, p.Win, p.Urgent, p.PayloadLen
	return q
}

func TestDecodeSeeds(t *testing.T) {
	want := map[int]pkt.Status{0: pkt.TCP, 1: pkt.TCPShort, 2: pkt.TCP, 3: pkt.TCP, 4: pkt.TCPShort, 5: pkt.IPv4, 6: pkt.TCP,
		7: pkt.BadTCP, 8: pkt.BadTCP, 9: pkt.TCP, 10: pkt.IPv4, 11: pkt.IPv4, 12: pkt.NotIPv4, 13: pkt.BadIPv4, 14: pkt.BadIPv4, 15: pkt.Empty}
	for i, b := range seeds() {
		check(t, b)
		var p pkt.Parsed
		p.Decode(b)
		if p.Status != want[i] {
			t.Errorf("seed %d (%x): status %d, want %d", i, b, p.Status, want[i])
		}
	}
	var p pkt.Parsed
	p.Decode(seeds()[0])
	if p.Src != netip.MustParseAddrPort("10.0.1.2:47762") || p.Dst != netip.MustParseAddrPort("10.0.2.2:9999") || p.Seq != 1000 ||
		p.Flags != header.TCPFlagSyn || p.Win != 64240 || p.PayloadLen != 0 || p.Proto != tcpip.TransportProtocolNumber(6) {
		t.Fatalf("SYN decoded as %+v", p)
	}
	if o := header.ParseSynOptions(p.Options(), false); o.MSS != 1460 || o.WS != 7 || !o.SACKPermitted {
		t.Fatalf("SYN options %+v", o)
	}
	p.Decode(seeds()[3])
	if p.PayloadLen != len("HELLO WORLD!\n") || p.Flags != header.TCPFlagAck|header.TCPFlagPsh || p.Ack != 1001 {
		t.Fatalf("data segment decoded as %+v", p)
	}
}

func TestDecodeAllocatesNothing(t *testing.T) {
	b := seeds()[0]
	var p pkt.Parsed
	if n := testing.AllocsPerRun(100, func() { p.Decode(b) }); n != 0 {
		t.Fatalf("Decode allocates %v times", n)
	}
}

// FuzzDecode holds Decode to gVisor's header package on any bytes.
func FuzzDecode(f *testing.F) {
	for _, b := range seeds() {
		f.Add(b)
	}
	f.Fuzz(check)
}

func BenchmarkDecode(b *testing.B) {
	seg := seeds()[3]
	var p pkt.Parsed
	for b.Loop() {
		p.Decode(seg)
	}
}
