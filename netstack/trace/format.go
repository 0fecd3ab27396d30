package trace

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tcp-upper/tcp-upper/internal/pkt"
)

// Printer formats packets the way `tcpdump -n` prints them (tcpdump 4.99,
// print-tcp.c), including tcpdump's relative sequence numbers: for each
// conversation, the first segment with the ACK flag (normally the SYN-ACK)
// fixes both sides' initial sequence numbers, and later seq, ack and SACK
// values are printed relative to them. A Printer keeps that table, so it
// must see every packet of a capture in order; it is not safe for
// concurrent use.
type Printer struct {
	convs map[convKey]*conv
	// HexDump adds tcpdump -X's hex and ASCII lines.
	HexDump bool
}

type convKey struct {
	lo, hi netip.Addr
	ports  uint32
}

type conv struct{ seq, ack uint32 }

// NewPrinter returns a Printer with an empty conversation table.
func NewPrinter() *Printer { return &Printer{convs: make(map[convKey]*conv)} }

// Forget drops the relative-sequence state of every conversation (tcpdump
// keeps it for the whole capture; a long-running trace may reset it).
func (p *Printer) Forget() { clear(p.convs) }

// Timestamp formats t as tcpdump's default time stamp (local time,
// microseconds).
func Timestamp(t time.Time) string {
	return t.Format("15:04:05.000000")
}

// Format returns the tcpdump line for the IP packet pkt seen at t, without
// a trailing newline (with HexDump, followed by the hex lines). origLen is
// the packet's length on the wire (pkt may be cut short, as in a capture
// with a snapshot length).
func (p *Printer) Format(t time.Time, pkt []byte) string {
	return string(p.AppendFormat(make([]byte, 0, 256), t, pkt))
}

// AppendFormat appends Format's line to b, without allocating.
func (p *Printer) AppendFormat(b []byte, t time.Time, pkt []byte) []byte {
	b = t.AppendFormat(b, "15:04:05.000000")
	b = append(b, ' ')
	b = p.appendIP(b, pkt)
	if p.HexDump {
		b = AppendHex(b, pkt)
	}
	return b
}

func (p *Printer) appendIP(b []byte, data []byte) []byte {
	var d pkt.Parsed
	d.Decode(data)
	switch d.Status {
	case pkt.Empty:
		return append(b, "[|ip]"...)
	case pkt.NotIPv4:
		if d.Version == header.IPv6Version {
			return append(b, "IP6 (not decoded)"...)
		}
		return append(b, "unknown IP version "+strconv.Itoa(int(d.Version))...)
	case pkt.BadIPv4:
		return append(b, "IP truncated-ip "+strconv.Itoa(len(data))...)
	}
	b = append(b, "IP "...)
	src, dst := d.Src.Addr(), d.Dst.Addr()
	payLen := max(d.IPLen-d.IPHdrLen, 0)
	payload := data[d.IPHdrLen:]
	if len(payload) > payLen {
		payload = payload[:payLen]
	}
	if d.FragOff != 0 {
		return fmt.Appendf(b, "%s > %s: ip-proto-%d", src, dst, uint8(d.Proto))
	}
	switch d.Proto {
	case header.TCPProtocolNumber:
		return p.appendTCP(b, &d, payLen)
	case header.ICMPv4ProtocolNumber:
		return appendICMP(b, src, dst, payload, payLen)
	case header.UDPProtocolNumber:
		if len(payload) >= header.UDPMinimumSize {
			u := header.UDP(payload)
			return fmt.Appendf(b, "%s.%d > %s.%d: UDP, length %d", src, u.SourcePort(), dst, u.DestinationPort(), int(u.Length())-header.UDPMinimumSize)
		}
	}
	return fmt.Appendf(b, "%s > %s: ip-proto-%d %d", src, dst, uint8(d.Proto), payLen)
}

// appendTCP renders the TCP segment d (Status TCPShort, BadTCP or TCP) of
// segLen bytes (what the IP header says).
func (p *Printer) appendTCP(b []byte, d *pkt.Parsed, segLen int) []byte {
	src, dst := d.Src.Addr(), d.Dst.Addr()
	if d.Status == pkt.TCPShort {
		return fmt.Appendf(b, "%s > %s: tcp %d [|tcp]", src, dst, segLen)
	}
	sport, dport := d.Src.Port(), d.Dst.Port()
	b = src.AppendTo(b)
	b = append(b, '.')
	b = strconv.AppendUint(b, uint64(sport), 10)
	b = append(b, " > "...)
	b = dst.AppendTo(b)
	b = append(b, '.')
	b = strconv.AppendUint(b, uint64(dport), 10)
	b = append(b, ": "...)
	hlen := d.TCPHdrLen
	if hlen < header.TCPMinimumSize {
		return fmt.Appendf(b, " tcp %d [bad hdr length %d - too short, < %d]", segLen, hlen, header.TCPMinimumSize)
	}
	flags := d.Flags
	seq, ack := d.Seq, d.Ack
	win, urp := d.Win, d.Urgent
	b = append(b, "Flags ["...)
	b = append(b, pkt.FlagString(flags)...)
	b = append(b, ']')

	var thseq, thack uint32
	rev := false
	if flags&header.TCPFlagAck != 0 {
		rev = sport > dport || (sport == dport && src.Compare(dst) > 0)
		var key convKey
		if rev {
			key = convKey{lo: dst, hi: src, ports: uint32(dport)<<16 | uint32(sport)}
		} else {
			key = convKey{lo: src, hi: dst, ports: uint32(sport)<<16 | uint32(dport)}
		}
		c, ok := p.convs[key]
		if !ok || flags&header.TCPFlagSyn != 0 {
			if !ok {
				c = &conv{}
				p.convs[key] = c
			}
			if rev {
				c.ack, c.seq = seq, ack-1
			} else {
				c.seq, c.ack = seq, ack-1
			}
		} else if rev {
			seq -= c.ack
			ack -= c.seq
		} else {
			seq -= c.seq
			ack -= c.ack
		}
		thseq, thack = c.seq, c.ack
	}

	if hlen > segLen {
		return fmt.Appendf(b, " [bad hdr length %d - too long, > %d]", hlen, segLen)
	}
	length := segLen - hlen
	if length > 0 || flags&(header.TCPFlagSyn|header.TCPFlagFin|header.TCPFlagRst) != 0 {
		b = append(b, ", seq "...)
		b = strconv.AppendUint(b, uint64(seq), 10)
		if length > 0 {
			b = append(b, ':')
			b = strconv.AppendUint(b, uint64(seq+uint32(length)), 10)
		}
	}
	if flags&header.TCPFlagAck != 0 {
		b = append(b, ", ack "...)
		b = strconv.AppendUint(b, uint64(ack), 10)
	}
	b = append(b, ", win "...)
	b = strconv.AppendUint(b, uint64(win), 10)
	if flags&header.TCPFlagUrg != 0 {
		b = fmt.Appendf(b, ", urg %d", urp)
	}
	if hlen > header.TCPMinimumSize {
		opts := d.Options()
		var ok bool
		b, ok = appendTCPOptions(b, opts, rev, thseq, thack)
		if !ok {
			return b
		}
	}
	b = append(b, ", length "...)
	return strconv.AppendInt(b, int64(length), 10)
}

// appendTCPOptions renders options as tcpdump does; ok is false when the
// options were malformed and the line ends there ("[bad opt]").
func appendTCPOptions(b, opts []byte, rev bool, thseq, thack uint32) ([]byte, bool) {
	b = append(b, ", options ["...)
	hlen := len(opts)
	cp := 0
	ch := byte(0)
	for hlen > 0 {
		if ch != 0 {
			b = append(b, ch)
		}
		opt := opts[cp]
		cp++
		var length int
		zeroLen := opt == header.TCPOptionEOL || opt == header.TCPOptionNOP
		if zeroLen {
			length = 1
		} else {
			if cp >= len(opts) {
				return badOpt(b, ch), false
			}
			length = int(opts[cp])
			cp++
			if length < 2 || length > hlen {
				return badOpt(b, ch), false
			}
			hlen--
		}
		hlen--
		datalen := 0
		b = append(b, optionName(opt)...)
		data := opts[cp:]
		need := func(l int) bool { return l <= hlen && l <= len(data) }
		switch opt {
		case header.TCPOptionMSS:
			datalen = 2
			if !need(datalen) {
				return badOpt(b, ch), false
			}
			b = fmt.Appendf(b, " %d", binary.BigEndian.Uint16(data))
		case header.TCPOptionWS:
			datalen = 1
			if !need(datalen) {
				return badOpt(b, ch), false
			}
			b = fmt.Appendf(b, " %d", data[0])
		case header.TCPOptionSACK:
			datalen = length - 2
			if datalen%8 != 0 {
				b = append(b, " invalid sack"...)
			} else {
				b = fmt.Appendf(b, " %d ", datalen/8)
				for i := 0; i < datalen; i += 8 {
					if !need(i + 8) {
						return badOpt(b, ch), false
					}
					s := binary.BigEndian.Uint32(data[i:])
					e := binary.BigEndian.Uint32(data[i+4:])
					if rev {
						s -= thseq
						e -= thseq
					} else {
						s -= thack
						e -= thack
					}
					b = fmt.Appendf(b, "{%d:%d}", s, e)
				}
			}
		case header.TCPOptionTS:
			datalen = 8
			if !need(datalen) {
				return badOpt(b, ch), false
			}
			b = append(b, " val "...)
			b = strconv.AppendUint(b, uint64(binary.BigEndian.Uint32(data)), 10)
			b = append(b, " ecr "...)
			b = strconv.AppendUint(b, uint64(binary.BigEndian.Uint32(data[4:])), 10)
		case header.TCPOptionEOL, header.TCPOptionNOP, header.TCPOptionSACKPermitted:
		default:
			datalen = length - 2
			if datalen > 0 {
				b = append(b, " 0x"...)
			}
			for i := 0; i < datalen; i++ {
				if !need(i + 1) {
					return badOpt(b, ch), false
				}
				b = fmt.Appendf(b, "%02x", data[i])
			}
		}
		cp += datalen
		hlen -= datalen
		datalen++
		if !zeroLen {
			datalen++
		}
		if datalen != length {
			b = fmt.Appendf(b, "[len %d]", length)
		}
		ch = ','
		if opt == header.TCPOptionEOL {
			break
		}
	}
	return append(b, ']'), true
}

func badOpt(b []byte, ch byte) []byte {
	b = append(b, "[bad opt]"...)
	if ch != 0 {
		b = append(b, ']')
	}
	return b
}

// optionName is tcpdump's tcp_option_values.
func optionName(opt byte) string {
	switch opt {
	case 0:
		return "eol"
	case 1:
		return "nop"
	case 2:
		return "mss"
	case 3:
		return "wscale"
	case 4:
		return "sackOK"
	case 5:
		return "sack"
	case 6:
		return "echo"
	case 7:
		return "echoreply"
	case 8:
		return "TS"
	case 11:
		return "cc"
	case 12:
		return "ccnew"
	case 13:
		return "ccecho"
	case 19:
		return "md5"
	case 20:
		return "scps"
	case 27:
		return "snack"
	case 28:
		return "uto"
	case 29:
		return "tcp-ao"
	case 30:
		return "mptcp"
	case 34:
		return "tfo"
	case 253, 254:
		return "exp"
	}
	return "unknown-" + strconv.Itoa(int(opt))
}

func appendICMP(b []byte, src, dst netip.Addr, msg []byte, length int) []byte {
	b = fmt.Appendf(b, "%s > %s: ICMP ", src, dst)
	if len(msg) < header.ICMPv4MinimumSize {
		return append(b, "[|icmp]"...)
	}
	icmp := header.ICMPv4(msg)
	switch icmp.Type() {
	case header.ICMPv4Echo, header.ICMPv4EchoReply:
		kind := "echo request"
		if icmp.Type() == header.ICMPv4EchoReply {
			kind = "echo reply"
		}
		return fmt.Appendf(b, "%s, id %d, seq %d, length %d", kind, icmp.Ident(), icmp.Sequence(), length)
	case header.ICMPv4DstUnreachable:
		return fmt.Appendf(b, "unreachable (code %d), length %d", icmp.Code(), length)
	}
	return fmt.Appendf(b, "type-#%d, length %d", icmp.Type(), length)
}

// AppendHex appends tcpdump -X's hex and ASCII lines for pkt: each line is
// a newline, a tab, the offset, eight groups of two bytes and the bytes as
// ASCII (graphic characters, '.' otherwise).
func AppendHex(b, pkt []byte) []byte {
	const perLine = 16
	for off := 0; off < len(pkt); off += perLine {
		line := pkt[off:min(off+perLine, len(pkt))]
		b = fmt.Appendf(b, "\n\t0x%04x: ", off)
		hexStart := len(b)
		for i := 0; i+1 < len(line); i += 2 {
			b = fmt.Appendf(b, " %02x%02x", line[i], line[i+1])
		}
		if len(line)%2 == 1 {
			b = fmt.Appendf(b, " %02x", line[len(line)-1])
		}
		for len(b)-hexStart < 40 {
			b = append(b, ' ')
		}
		b = append(b, "  "...)
		for _, c := range line {
			if c > 0x20 && c <= 0x7e {
				b = append(b, c)
			} else {
				b = append(b, '.')
			}
		}
	}
	return b
}
