package trace_test

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
	"github.com/tcp-upper/tcp-upper/netstack/trace"
)

// FuzzFormat prints arbitrary bytes as a packet, the way the trace layer
// prints whatever crosses the device: it never panics, the line is one
// line of printable text of bounded length, -X adds exactly one hex line
// per 16 bytes, and AppendFormat agrees with Format. Each input is printed
// twice by the same Printer, so the second print uses the relative
// sequence numbers the first one may have fixed.
func FuzzFormat(f *testing.F) {
	cli := netip.MustParseAddrPort("10.0.1.2:47762")
	srv := netip.MustParseAddrPort("10.0.2.2:9999")
	ts := make([]byte, 10)
	header.EncodeTSOption(1, 2, ts)
	sack := make([]byte, 2+8*4)
	sack[0], sack[1] = header.TCPOptionNOP, header.TCPOptionNOP
	header.EncodeSACKBlocks([]header.SACKBlock{{Start: 5000, End: 6000}, {Start: 7000, End: 8000}, {Start: 9000, End: 9100}, {Start: 1, End: 2}}, sack[2:])
	for _, s := range []rawtcp.Segment{
		{Src: cli, Dst: srv, Seq: 1000, Flags: header.TCPFlagSyn, Window: 64240, Options: append(rawtcp.SynOptions(1460, 7, true), ts...)},
		{Src: srv, Dst: cli, Seq: 77, Ack: 1001, Flags: header.TCPFlagSyn | header.TCPFlagAck, Window: 65535, Options: rawtcp.SynOptions(1460, 0, true)},
		{Src: cli, Dst: srv, Seq: 1001, Ack: 78, Flags: header.TCPFlagAck | header.TCPFlagPsh, Window: 502, Payload: []byte("hello world!\n")},
		{Src: cli, Dst: srv, Seq: 1001, Ack: 78, Flags: header.TCPFlagAck, Window: 502, Options: sack},
		{Src: srv, Dst: cli, Seq: 78, Ack: 1014, Flags: header.TCPFlagAck | header.TCPFlagFin, Window: 502},
		{Src: cli, Dst: srv, Seq: 1014, Flags: header.TCPFlagRst | header.TCPFlagUrg | header.TCPFlagEce | header.TCPFlagCwr},
		{Src: cli, Dst: srv, Seq: 1, Flags: header.TCPFlagSyn, Options: []byte{header.TCPOptionMSS, 9, 1, 2, 3, 4, 5, 6, 7, 8}}, // option runs past the header
		{Src: cli, Dst: srv, Seq: 1, Flags: header.TCPFlagSyn, Options: []byte{header.TCPOptionWS, 0}},                          // zero-length option
	} {
		p := s.Marshal()
		f.Add(p)
		f.Add(p[:len(p)-3]) // cut short, as with a snapshot length
	}
	f.Add([]byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 1, 2, 10, 0, 2, 2, 8, 0, 0, 0, 0, 1, 0, 1})    // ICMP echo
	f.Add([]byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 1, 2, 10, 0, 2, 2, 0, 53, 0, 53, 0, 8, 0, 0}) // UDP
	f.Add([]byte{0x60, 0, 0, 0, 0, 20, 6, 64})                                                                  // IPv6, truncated
	f.Add([]byte{0x4f})
	f.Add([]byte{})
	at := time.Date(2026, 11, 25, 18, 52, 19, 613971000, time.Local)
	f.Fuzz(func(t *testing.T, pkt []byte) {
		p := trace.NewPrinter()
		for i := 0; i < 2; i++ {
			line := p.Format(at, pkt)
			if !strings.HasPrefix(line, "18:52:19.613971 ") {
				t.Fatalf("%x: line %q lacks the time stamp", pkt, line)
			}
			if len(line) > 4096+3*len(pkt) {
				t.Fatalf("%x: line of %d bytes", pkt, len(line))
			}
			for _, c := range []byte(line) {
				if c < 0x20 || c > 0x7e {
					t.Fatalf("%x: line %q has the byte %#x: not one printable line", pkt, line, c)
				}
			}
			if got := string(p.AppendFormat([]byte("prefix "), at, pkt)); got != "prefix "+p.Format(at, pkt) {
				t.Fatalf("%x: AppendFormat %q, Format %q", pkt, got, line)
			}
		}
		p.HexDump = true
		x := p.Format(at, pkt)
		if want := (len(pkt) + 15) / 16; strings.Count(x, "\n\t0x") != want || strings.Count(x, "\n") != want {
			t.Fatalf("%x: -X printed %d hex lines, want %d: %q", pkt, strings.Count(x, "\n"), want, x)
		}
		if hex := trace.AppendHex(nil, pkt); !bytes.HasSuffix([]byte(x), hex) {
			t.Fatalf("%x: -X output does not end with AppendHex's lines", pkt)
		}
		p.Forget()
	})
}
