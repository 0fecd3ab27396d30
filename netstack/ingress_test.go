package netstack_test

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/internal/leakcheck"
	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/tun"
)

// ingress is a whole server (our stack, a listener on 9999, the uppercase
// service) whose device the test drives by hand from the far end of an
// in-memory pipe, the way the kernel drives a TUN.
type ingress struct {
	*rawServer
	offload bool
}

var (
	serverIP = netip.MustParseAddr("10.0.2.2")
	peerIP   = netip.MustParseAddr("10.0.1.2")
	// markerIP sends the probes that tell the test an input was handled.
	markerIP = netip.MustParseAddr("10.0.1.250")
)

// newIngress builds the server on a plain pipe, or on one with offloads
// (virtio-net headers: partial checksums and super-segments) like the TUN
// tcp-upper-server opens by default.
func newIngress(tb testing.TB, offload bool) *ingress {
	tb.Helper()
	l := plainLink
	if offload {
		l = offloadLink
	}
	rs := newRawServer(tb, l, netstack.Options{TimeWait: time.Second})
	rs.serve(app.ServerOptions{})
	return &ingress{rawServer: rs, offload: offload}
}

// feed writes pkt (with offload metadata o, on an offload pipe) into the
// stack and waits until the stack has handled it: a SYN to a closed port
// follows it through the same read goroutine, and its RST comes back only
// after pkt went through the IP and TCP layers. It returns the counters'
// growth, or nil if the device refused pkt (as a TUN refuses a write
// longer than its MTU).
func (in *ingress) feed(tb testing.TB, pkt []byte, o tun.Offload) map[string]uint64 {
	tb.Helper()
	before := counters(in.st)
	var err error
	if in.offload {
		_, err = in.far.WriteOffload([][]byte{pkt}, o)
	} else {
		_, err = in.far.Write(pkt)
	}
	if err != nil {
		return nil
	}
	in.barrier(tb)
	after := counters(in.st)
	grew := map[string]uint64{}
	for k, v := range after {
		if v > before[k] {
			grew[k] = v - before[k]
		}
	}
	// The marker itself: one packet in, one RST out.
	grew["link.packets_in"]--
	return grew
}

// drops are the counters of packets the link or the stack threw away as
// bad.
var drops = []string{
	"link.errors_in", "link.checksum_errors_in", "ip.malformed", "ip.wrong_destination", "ip.bad_source",
	"ip.unknown_protocol", "ip.unknown_transport", "ip.malformed_transport",
	"tcp.checksum_errors", "tcp.invalid_segments", "stack.dropped",
}

// check asserts what the counters must show for pkt, judged from its bytes
// (and, with offloads, its virtio-net header o) alone: every packet is
// counted once, and a packet that is not well-formed is counted as dropped
// for the reason it is bad. With offloads the link trusts the kernel for
// what o vouches for (DataValid, a partial checksum) and for IP header
// checksums, as a NIC with checksum offload does; the rest it checks.
func check(tb testing.TB, pkt []byte, offload bool, o tun.Offload, grew map[string]uint64) {
	tb.Helper()
	if grew == nil {
		return // the device refused it
	}
	if n := grew["link.packets_in"] + grew["link.errors_in"] + grew["link.checksum_errors_in"] + grew["link.fragments_dropped_in"]; n != 1 {
		tb.Fatalf("input %x (%+v): link counted %d packets, want 1 (%v)", pkt, o, n, grew)
	}
	if len(pkt) == 0 || (header.IPVersion(pkt) != 4 && header.IPVersion(pkt) != 6) {
		if grew["link.errors_in"] != 1 {
			tb.Fatalf("input %x: not IP, but link.errors_in did not count it (%v)", pkt, grew)
		}
		return
	}
	if header.IPVersion(pkt) == 6 {
		if grew["ip.unknown_protocol"] != 1 {
			tb.Fatalf("input %x: IPv6, but ip.unknown_protocol did not count it (%v)", pkt, grew)
		}
		return
	}
	ip := header.IPv4(pkt)
	if !ip.IsValid(len(pkt)) || (!offload && !ip.IsChecksumValid()) {
		if grew["ip.malformed"] != 1 {
			tb.Fatalf("input %x: malformed IPv4, but ip.malformed did not count it (%v)", pkt, grew)
		}
		return
	}
	if o.GSO != tun.GSONone {
		return // a super-segment: counted once, the stack still answers
	}
	vouched := offload && (o.NeedsCsum || o.DataValid)
	if offload && !ip.IsChecksumValid() {
		return
	}
	if grew["ip.packets_in"] == 0 && grew["link.checksum_errors_in"] == 0 && grew["link.fragments_dropped_in"] == 0 {
		tb.Fatalf("input %x: IPv4 counted neither in ip.packets_in nor as dropped by the link (%v)", pkt, grew)
	}
	// A plain (no options, not a fragment) IPv4 packet to us carrying a
	// TCP segment that is cut short or fails a checksum nobody vouched
	// for is dropped.
	if ip.HeaderLength() != header.IPv4MinimumSize || ip.More() || ip.FragmentOffset() != 0 ||
		ip.DestinationAddress() != tcpip.AddrFrom4(serverIP.As4()) || ip.TransportProtocol() != header.TCPProtocolNumber {
		return
	}
	seg := header.TCP(pkt[header.IPv4MinimumSize:ip.TotalLength()])
	bad := len(seg) < header.TCPMinimumSize || int(seg.DataOffset()) < header.TCPMinimumSize || int(seg.DataOffset()) > len(seg)
	if !bad && !vouched {
		xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(seg)))
		bad = checksum.Checksum(seg, xsum) != 0xffff
	}
	if !bad {
		return
	}
	var n uint64
	for _, d := range drops {
		n += grew[d]
	}
	if n == 0 {
		tb.Fatalf("input %x (%+v): bad TCP segment, but no drop counter moved (%v)", pkt, o, grew)
	}
}

// seeds are meaningful packets: a real SYN with options, a data segment,
// FIN, RST, ICMP echo, and the classic ways to be malformed.
func seeds() map[string][]byte {
	cli := netip.AddrPortFrom(peerIP, 40000)
	srv := netip.AddrPortFrom(serverIP, 9999)
	ts := make([]byte, 10)
	header.EncodeTSOption(1, 0, ts)
	syn := rawtcp.Segment{Src: cli, Dst: srv, Seq: 1000, Flags: header.TCPFlagSyn, Window: 64240,
		Options: append(rawtcp.SynOptions(1460, 7, true), ts...)}.Marshal()
	data := rawtcp.Segment{Src: cli, Dst: srv, Seq: 1001, Ack: 1, Flags: header.TCPFlagAck | header.TCPFlagPsh, Window: 502, Payload: []byte("hello world!\n")}.Marshal()
	sack := make([]byte, 12)
	sack[0], sack[1] = header.TCPOptionNOP, header.TCPOptionNOP
	header.EncodeSACKBlocks([]header.SACKBlock{{Start: 5000, End: 6000}}, sack[2:])
	ackSack := rawtcp.Segment{Src: cli, Dst: srv, Seq: 1001, Ack: 1, Flags: header.TCPFlagAck, Window: 502, Options: sack}.Marshal()
	fin := rawtcp.Segment{Src: cli, Dst: srv, Seq: 1014, Ack: 1, Flags: header.TCPFlagAck | header.TCPFlagFin, Window: 502}.Marshal()
	rst := rawtcp.Segment{Src: cli, Dst: srv, Seq: 1014, Flags: header.TCPFlagRst}.Marshal()

	badTCPSum := append([]byte(nil), data...)
	badTCPSum[len(badTCPSum)-1] ^= 1
	badIPSum := append([]byte(nil), syn...)
	badIPSum[8]-- // TTL changes, checksum does not
	shortOffset := rawtcp.Segment{Src: cli, Dst: srv, Seq: 1, Flags: header.TCPFlagSyn}.Marshal()
	shortOffset[header.IPv4MinimumSize+12] = 0x20 // data offset 8 bytes
	fixTCPSum(shortOffset)
	longOffset := rawtcp.Segment{Src: cli, Dst: srv, Seq: 1, Flags: header.TCPFlagSyn}.Marshal()
	longOffset[header.IPv4MinimumSize+12] = 0xf0 // 60 bytes, the segment has 20
	fixTCPSum(longOffset)

	udp := make([]byte, 28)
	header.IPv4(udp).Encode(&header.IPv4Fields{TotalLength: 28, TTL: 64, Protocol: uint8(header.UDPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4(peerIP.As4()), DstAddr: tcpip.AddrFrom4(serverIP.As4())})
	header.IPv4(udp).SetChecksum(^header.IPv4(udp).CalculateChecksum())
	icmp := make([]byte, 28)
	header.IPv4(icmp).Encode(&header.IPv4Fields{TotalLength: 28, TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber),
		SrcAddr: tcpip.AddrFrom4(peerIP.As4()), DstAddr: tcpip.AddrFrom4(serverIP.As4())})
	header.IPv4(icmp).SetChecksum(^header.IPv4(icmp).CalculateChecksum())
	ic := header.ICMPv4(icmp[20:])
	ic.SetType(header.ICMPv4Echo)
	ic.SetChecksum(^checksum.Checksum(ic, 0))
	wrongDst := rawtcp.Segment{Src: cli, Dst: netip.MustParseAddrPort("10.0.2.9:9999"), Seq: 1, Flags: header.TCPFlagSyn}.Marshal()
	loopSrc := rawtcp.Segment{Src: netip.MustParseAddrPort("127.0.0.1:1"), Dst: srv, Seq: 1, Flags: header.TCPFlagSyn}.Marshal()
	frag := append([]byte(nil), data...)
	header.IPv4(frag).SetFlagsFragmentOffset(header.IPv4FlagMoreFragments, 0)
	header.IPv4(frag).SetChecksum(0)
	header.IPv4(frag).SetChecksum(^header.IPv4(frag).CalculateChecksum())
	v6 := make([]byte, 40)
	v6[0] = 0x60

	return map[string][]byte{
		"syn": syn, "data": data, "ack-sack": ackSack, "fin": fin, "rst": rst,
		"bad-tcp-checksum": badTCPSum, "bad-ip-checksum": badIPSum,
		"tcp-offset-short": shortOffset, "tcp-offset-long": longOffset,
		"truncated-ip": syn[:15], "truncated-tcp": fixIPLen(syn[:30]),
		"total-length-too-big": fixIPSum(setTotalLength(append([]byte(nil), syn...), 2000)),
		"udp":                  udp, "icmp-echo": icmp, "wrong-destination": wrongDst, "loopback-source": loopSrc,
		"fragment": frag, "ipv6": v6, "empty": {}, "not-ip": []byte("\x80 version 8: not a packet"),
	}
}

func setTotalLength(p []byte, n uint16) []byte { header.IPv4(p).SetTotalLength(n); return p }

func fixIPSum(p []byte) []byte {
	ip := header.IPv4(p)
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
	return p
}

func fixIPLen(p []byte) []byte {
	p = append([]byte(nil), p...)
	return fixIPSum(setTotalLength(p, uint16(len(p))))
}

func fixTCPSum(p []byte) {
	ip := header.IPv4(p)
	seg := header.TCP(p[header.IPv4MinimumSize:])
	seg.SetChecksum(0)
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(seg)))
	seg.SetChecksum(^checksum.Checksum(seg, xsum))
}

// TestIngressGarbageCounted feeds each seed, on a plain link and on one
// with offloads, and checks the exact counter that must count it;
// afterwards a handshake and an echo still work.
func TestIngressGarbageCounted(t *testing.T) {
	for _, offload := range []bool{false, true} {
		t.Run(fmt.Sprintf("offload=%v", offload), func(t *testing.T) {
			leakcheck.Check(t)
			in := newIngress(t, offload)
			want := map[string]string{
				"bad-tcp-checksum": "tcp.checksum_errors", // the listener's endpoint drops it
				"bad-ip-checksum":  "ip.malformed", "tcp-offset-short": "tcp.invalid_segments",
				"tcp-offset-long": "tcp.invalid_segments", "truncated-ip": "ip.malformed",
				"truncated-tcp": "ip.malformed_transport", "total-length-too-big": "ip.malformed",
				"udp": "ip.unknown_transport", "wrong-destination": "ip.wrong_destination",
				"loopback-source": "ip.bad_source", "ipv6": "ip.unknown_protocol",
				"empty": "link.errors_in", "not-ip": "link.errors_in",
			}
			if offload {
				// The link checks transport checksums the kernel did not
				// vouch for, before the stack sees them; it trusts IP
				// header checksums (the kernel checked them).
				want["bad-tcp-checksum"] = "link.checksum_errors_in"
				want["truncated-tcp"] = "link.checksum_errors_in"
				want["fragment"] = "link.fragments_dropped_in"
				delete(want, "bad-ip-checksum")
			}
			for name, pkt := range seeds() {
				grew := in.feed(t, pkt, tun.Offload{})
				check(t, pkt, offload, tun.Offload{}, grew)
				if c, ok := want[name]; ok && grew[c] != 1 {
					t.Errorf("%s: %s grew by %d, want 1 (%v)", name, c, grew[c], grew)
				}
			}
			// Still serving: a handshake and an echo by hand.
			cli := netip.AddrPortFrom(peerIP, 41000)
			srv := netip.AddrPortFrom(serverIP, 9999)
			in.send(t, rawtcp.Segment{Src: cli, Dst: srv, Seq: 100, Flags: header.TCPFlagSyn, Window: 65535, Options: rawtcp.SynOptions(1460, -1, false)})
			synAck := in.recv(t, cli, "SYN-ACK", func(s rawtcp.Segment) bool { return s.Flags == header.TCPFlagSyn|header.TCPFlagAck })
			in.send(t, rawtcp.Segment{Src: cli, Dst: srv, Seq: 101, Ack: synAck.Seq + 1, Flags: header.TCPFlagAck | header.TCPFlagPsh, Window: 65535, Payload: []byte("abc\n")})
			reply := in.recv(t, cli, "echo", func(s rawtcp.Segment) bool { return len(s.Payload) > 0 })
			if string(reply.Payload) != "ABC\n" {
				t.Fatalf("reply %q, want ABC", reply.Payload)
			}
			in.send(t, rawtcp.Segment{Src: cli, Dst: srv, Seq: 105, Ack: reply.Seq + 4, Flags: header.TCPFlagRst | header.TCPFlagAck})
		})
	}
}

// FuzzIngress feeds arbitrary bytes as packets into a whole server stack
// through its device: nothing panics, the stack keeps answering, every
// packet is counted and every malformed one is counted as dropped.
func FuzzIngress(f *testing.F) {
	for _, p := range seeds() {
		f.Add(p)
	}
	in := newIngress(f, false)
	f.Fuzz(func(t *testing.T, pkt []byte) {
		if len(pkt) > 1500 {
			pkt = pkt[:1500] // the device's MTU: a TUN never hands us more
		}
		check(t, pkt, false, tun.Offload{}, in.feed(t, pkt, tun.Offload{}))
	})
}

// FuzzIngressOffload is FuzzIngress on a device with offloads, the TUN
// tcp-upper-server opens by default: each input is a virtio-net header
// (10 bytes: flags, GSO type, header length, GSO size, checksum start and
// offset, as the kernel would write them) and a packet, so partial
// checksums and super-segments of up to 64 KiB with any metadata arrive.
func FuzzIngressOffload(f *testing.F) {
	hdr := func(o tun.Offload) []byte {
		b := make([]byte, tun.VnetHdrLen)
		o.Marshal(b)
		return b
	}
	for _, p := range seeds() {
		f.Add(append(hdr(tun.Offload{}), p...))
		f.Add(append(hdr(tun.Offload{DataValid: true}), p...))
	}
	cli := netip.AddrPortFrom(peerIP, 40000)
	srv := netip.AddrPortFrom(serverIP, 9999)
	// A partial checksum (pseudo-header only), as a local sender leaves it.
	syn := rawtcp.Segment{Src: cli, Dst: srv, Seq: 1000, Flags: header.TCPFlagSyn, Window: 64240, Options: rawtcp.SynOptions(1460, 7, true)}.Marshal()
	partial(syn)
	f.Add(append(hdr(tun.Offload{NeedsCsum: true, CsumStart: 20, CsumOffset: 16}), syn...))
	// A super-segment: 4,000 bytes of data in one, for 1,448-byte segments.
	big := rawtcp.Segment{Src: cli, Dst: srv, Seq: 1001, Ack: 1, Flags: header.TCPFlagAck | header.TCPFlagPsh, Window: 502, Payload: bytes.Repeat([]byte("x"), 4000)}.Marshal()
	partial(big)
	f.Add(append(hdr(tun.Offload{NeedsCsum: true, CsumStart: 20, CsumOffset: 16, GSO: tun.GSOTCPv4, GSOSize: 1448, HdrLen: 40}), big...))
	f.Add(append(hdr(tun.Offload{NeedsCsum: true, CsumStart: 65535, CsumOffset: 65535, GSO: tun.GSOTCPv4, GSOSize: 0, HdrLen: 65535}), big...))
	f.Add(append(hdr(tun.Offload{GSO: tun.GSOTCPv6, GSOSize: 1}), syn...))
	in := newIngress(f, true)
	f.Fuzz(func(t *testing.T, b []byte) {
		var o tun.Offload
		if len(b) >= tun.VnetHdrLen {
			o, _ = tun.ParseOffload(b)
			b = b[tun.VnetHdrLen:]
		}
		if len(b) > tun.MaxOffloadPacket {
			b = b[:tun.MaxOffloadPacket]
		}
		if o.GSO == tun.GSONone && len(b) > 1500 {
			b = b[:1500]
		}
		check(t, b, true, o, in.feed(t, b, o))
	})
}

// partial replaces an IPv4/TCP packet's TCP checksum with the
// pseudo-header sum alone, as a sender that offloads the checksum leaves
// it.
func partial(p []byte) {
	ip := header.IPv4(p)
	seg := header.TCP(p[header.IPv4MinimumSize:])
	seg.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(seg))))
}
