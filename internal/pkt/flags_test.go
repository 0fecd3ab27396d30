package pkt

import (
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

func TestFlagStringIsTcpdumps(t *testing.T) {
	for _, c := range []struct {
		f    header.TCPFlags
		want string
	}{
		{header.TCPFlagSyn, "S"},
		{header.TCPFlagSyn | header.TCPFlagAck, "S."},
		{header.TCPFlagPsh | header.TCPFlagAck, "P."},
		{header.TCPFlagFin | header.TCPFlagAck, "F."},
		{header.TCPFlagRst | header.TCPFlagAck, "R."},
		{header.TCPFlagFin | header.TCPFlagSyn | header.TCPFlagRst | header.TCPFlagPsh | header.TCPFlagAck | header.TCPFlagUrg | header.TCPFlagEce | header.TCPFlagCwr, "FSRP.UEW"},
		{0, "none"},
	} {
		if got := FlagString(c.f); got != c.want {
			t.Errorf("FlagString(%#x) = %q, want %q", uint8(c.f), got, c.want)
		}
	}
}

// ParseFlags reads back every combination FlagString writes.
func TestParseFlagsReadsFlagString(t *testing.T) {
	for f := range 256 {
		if got := ParseFlags(FlagString(header.TCPFlags(f))); got != header.TCPFlags(f) {
			t.Errorf("ParseFlags(%q) = %#x, want %#x", FlagString(header.TCPFlags(f)), uint8(got), f)
		}
	}
}
