package pkt

import (
	"strings"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

func TestAppendLabel(t *testing.T) {
	for _, c := range []struct {
		l    Label
		want string
	}{
		{Label{Flags: header.TCPFlagSyn, Win: 65535, MSS: 1460, WScale: 7, SACKOK: true}, "S 0 win 65535 mss 1460 ws 7 sackOK"},
		{Label{Flags: header.TCPFlagSyn | header.TCPFlagAck, Ack: 1, Win: 64240, MSS: 1460, WScale: -1}, "S. 0 ack 1 win 64240 mss 1460"},
		{Label{Flags: header.TCPFlagPsh | header.TCPFlagAck, Seq: 1, Len: 7, Ack: 1, Win: 64512}, "P. 1:8(7) ack 1 win 64512"},
		{Label{Flags: header.TCPFlagAck, Seq: 8, Ack: 8, Win: 502, SACK: [][2]uint32{{9, 17}}, Retransmit: true}, ". ack 8 win 502 sack 9:17 retx"},
		{Label{Flags: header.TCPFlagFin | header.TCPFlagAck, Seq: 34, Ack: 20, Win: 502}, "F. 34 ack 20 win 502"},
		{Label{Flags: header.TCPFlagPsh | header.TCPFlagAck, Seq: 1, Len: 4, Ack: 1, NoWin: true, Win: 502, SACK: [][2]uint32{{1, 2}}, Retransmit: true}, "P. 1:5(4) ack 1 retx"},
	} {
		var b strings.Builder
		AppendLabel(&b, &c.l)
		if b.String() != c.want {
			t.Errorf("AppendLabel(%+v) = %q, want %q", c.l, b.String(), c.want)
		}
	}
}
