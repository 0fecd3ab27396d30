package pkt

import (
	"strconv"
	"strings"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Label is what a segment's label says, as tcpdump prints a TCP header
// with relative sequence numbers; the ladder's arrows and the segment
// events' text both write it with AppendLabel.
type Label struct {
	Flags header.TCPFlags
	// Seq is relative to the sender's initial sequence number, Ack to the
	// receiver's; Len is the payload's length.
	Seq, Ack, Len uint32
	// NoWin: the window and the options are not known (a segment known
	// from a fault event only): the label stops after the ack.
	NoWin bool
	Win   uint32
	// A SYN's options: MSS, window scale (-1: none), SACK permitted.
	MSS    uint16
	WScale int
	SACKOK bool
	// SACK blocks, relative like Ack.
	SACK [][2]uint32
	// Retransmit adds " retx".
	Retransmit bool
}

// AppendLabel writes l to b: "P. 1:8(7) ack 1 win 64512", "S 0 win 65535
// mss 1460 ws 7 sackOK", ". ack 8 win 502 sack 9:17 retx".
func AppendLabel(b *strings.Builder, l *Label) {
	b.WriteString(FlagString(l.Flags))
	if l.Len > 0 || l.Flags&(header.TCPFlagSyn|header.TCPFlagFin|header.TCPFlagRst) != 0 {
		b.WriteByte(' ')
		b.WriteString(strconv.FormatUint(uint64(l.Seq), 10))
		if l.Len > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.FormatUint(uint64(l.Seq+l.Len), 10))
			b.WriteByte('(')
			b.WriteString(strconv.FormatUint(uint64(l.Len), 10))
			b.WriteByte(')')
		}
	}
	if l.Flags&header.TCPFlagAck != 0 {
		b.WriteString(" ack ")
		b.WriteString(strconv.FormatUint(uint64(l.Ack), 10))
	}
	if !l.NoWin {
		b.WriteString(" win ")
		b.WriteString(strconv.FormatUint(uint64(l.Win), 10))
		if l.Flags&header.TCPFlagSyn != 0 {
			b.WriteString(" mss ")
			b.WriteString(strconv.FormatUint(uint64(l.MSS), 10))
			if l.WScale >= 0 {
				b.WriteString(" ws ")
				b.WriteString(strconv.Itoa(l.WScale))
			}
			if l.SACKOK {
				b.WriteString(" sackOK")
			}
		}
		for _, blk := range l.SACK {
			b.WriteString(" sack ")
			b.WriteString(strconv.FormatUint(uint64(blk[0]), 10))
			b.WriteByte(':')
			b.WriteString(strconv.FormatUint(uint64(blk[1]), 10))
		}
	}
	if l.Retransmit {
		b.WriteString(" retx")
	}
}
