package fault_test

import (
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/tcp-upper/tcp-upper/internal/pkt"
	"github.com/tcp-upper/tcp-upper/netstack/fault"
	"github.com/tcp-upper/tcp-upper/netstack/tunlink"
	"github.com/tcp-upper/tcp-upper/tun"
)

type nopDispatcher struct{ n int }

func (d *nopDispatcher) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) { d.n++ }
func (d *nopDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer)    {}

// BenchmarkNoRules is what the fault layer costs a packet on its way in
// when no rule is set, next to handing the packet straight to the layer
// above (compare the two lines; about 5 ns here, against ~1 µs for the TUN
// read that brought the packet), and with a rule that never matches (the
// bench's fault-overhead: every packet is decoded and looked at).
//
//	go test ./netstack/fault -run '^$' -bench NoRules
func BenchmarkNoRules(b *testing.B) {
	p := pkt.New(segment(1, 1400))
	defer p.DecRef()
	near, far := tun.Pipe("near", "far", 1500)
	defer far.Close()
	l := fault.New(tunlink.New(near, tunlink.Options{}, nil), fault.Options{}, nil)
	defer l.Close()
	d := &nopDispatcher{}
	l.Attach(d)
	b.Run("direct", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			d.DeliverNetworkPacket(header.IPv4ProtocolNumber, p)
		}
	})
	b.Run("fault-layer", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			l.DeliverNetworkPacket(header.IPv4ProtocolNumber, p)
		}
	})
	r, err := fault.Parse("in rst drop port=1")
	if err != nil {
		b.Fatal(err)
	}
	l.Add(r)
	b.Run("rule-never-matches", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			l.DeliverNetworkPacket(header.IPv4ProtocolNumber, p)
		}
	})
	if d.n == 0 {
		b.Fatal("no packet went through")
	}
}
