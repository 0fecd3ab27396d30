// Package pkt holds what our link layers share about packets: the one
// IPv4/TCP header decoder (Parsed.Decode) that tunlink, fault, trace,
// inspect, gso and rawtcp use; reading a gVisor packet buffer's first bytes
// without allocating, taking a copy, making a new packet from bytes; and
// tcpdump's names for TCP flags.
package pkt

import (
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Gather copies the packet's first len(dst) bytes (from its IP header on)
// into dst, walking gVisor's views without allocating, and returns how many
// it copied.
func Gather(dst []byte, p *stack.PacketBuffer) int {
	vl, off := p.AsViewList()
	n := 0
	for v := vl.Front(); v != nil && n < len(dst); v = v.Next() {
		b := v.AsSlice()
		if off >= len(b) {
			off -= len(b)
			continue
		}
		n += copy(dst[n:], b[off:])
		off = 0
	}
	return n
}

// Bytes returns a copy of the whole packet.
func Bytes(p *stack.PacketBuffer) []byte {
	b := make([]byte, p.Size())
	Gather(b, p)
	return b
}

// New returns a new packet holding b (which it takes over). The caller
// owns the reference and must DecRef it.
func New(b []byte) *stack.PacketBuffer {
	return stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
}
