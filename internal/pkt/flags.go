package pkt

import (
	"strings"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// tcpFlagNames are tcpdump's tcp_flag_values, in its order.
var tcpFlagNames = []struct {
	bit  header.TCPFlags
	name string
}{
	{header.TCPFlagFin, "F"},
	{header.TCPFlagSyn, "S"},
	{header.TCPFlagRst, "R"},
	{header.TCPFlagPsh, "P"},
	{header.TCPFlagAck, "."},
	{header.TCPFlagUrg, "U"},
	{header.TCPFlagEce, "E"},
	{header.TCPFlagCwr, "W"},
}

// FlagString is tcpdump's rendering of TCP flags: "S", "S.", "P.", "F."...
func FlagString(f header.TCPFlags) string {
	var s []byte
	for _, fl := range tcpFlagNames {
		if f&fl.bit != 0 {
			s = append(s, fl.name...)
		}
	}
	if len(s) == 0 {
		return "none"
	}
	return string(s)
}

// ParseFlags reads FlagString's spelling back ("P." is PSH|ACK); letters
// it does not know are ignored.
func ParseFlags(s string) header.TCPFlags {
	var f header.TCPFlags
	for _, fl := range tcpFlagNames {
		if strings.Contains(s, fl.name) {
			f |= fl.bit
		}
	}
	return f
}
