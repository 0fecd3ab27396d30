// Package netstack builds the user-space TCP/IP stack (gVisor's netstack)
// that replaces the kernel's TCP for our server and, optionally, our client.
//
// The data path is a pipeline of link endpoints, bottom to top:
//
//	tun.Device → tunlink → (fault layer) → (trace/pcap) → gVisor stack → gonet → app
//
// New assembles that pipeline over a device and gives back a Stack with
// net.Listener and net.Conn, so the application code is the same on our stack
// and on the kernel's.
package netstack

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/tcp-upper/tcp-upper/netstack/tunlink"
	"github.com/tcp-upper/tcp-upper/tun"
)

// NICID is the one NIC every Stack has.
const NICID tcpip.NICID = 1

// DefaultTimeWait is how long a connection stays in TIME-WAIT, as on Linux.
const DefaultTimeWait = 60 * time.Second

// Options configure a Stack.
type Options struct {
	// Addr is the stack's own address and prefix, for example 10.0.2.2/24.
	Addr netip.Prefix
	// TimeWait is the TIME-WAIT duration; zero means DefaultTimeWait.
	TimeWait time.Duration
	// OnLinkError is called once if the device fails underneath the stack
	// (for example the TUN was deleted).
	OnLinkError func(error)
	// TCPProbe, if set, is called by gVisor for every segment a TCP
	// endpoint receives, under that endpoint's lock: it must only copy
	// what it needs and return.
	TCPProbe tcp.TCPProbeFunc
}

// Stack is a gVisor network stack with one NIC on a link pipeline.
type Stack struct {
	s    *stack.Stack
	addr netip.Prefix
	log  *slog.Logger
	link *tunlink.Endpoint
}

// New builds the link pipeline over dev and a stack on top of it, gives it opts.Addr and a default route through
// its only NIC (a TUN has no ARP and no gateway: everything not local goes
// out of the device).
func New(dev tun.Device, opts Options, log *slog.Logger) (*Stack, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !opts.Addr.IsValid() || !opts.Addr.Addr().Is4() {
		return nil, fmt.Errorf("stack address %v: need an IPv4 address with prefix, such as 10.0.2.2/24", opts.Addr)
	}
	tcpFactory := tcp.NewProtocol
	if opts.TCPProbe != nil {
		tcpFactory = tcp.NewProtocolProbe(opts.TCPProbe)
	}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcpFactory, icmp.NewProtocol4},
	})
	st := &Stack{s: s, addr: opts.Addr, log: log}
	st.link = tunlink.New(dev, tunlink.Options{OnError: opts.OnLinkError}, log)
	var link stack.LinkEndpoint = st.link
	if err := st.configure(link, opts); err != nil {
		s.Destroy()
		return nil, err
	}
	return st, nil
}

func (st *Stack) configure(link stack.LinkEndpoint, opts Options) error {
	s := st.s
	tw := opts.TimeWait
	if tw <= 0 {
		tw = DefaultTimeWait
	}
	twOpt := tcpip.TCPTimeWaitTimeoutOption(tw)
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	for name, o := range map[string]tcpip.SettableTransportProtocolOption{
		"TIME-WAIT timeout":         &twOpt,
		"SACK":                      &sack,
		"receive buffer moderation": &moderate,
	} {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, o); err != nil {
			return fmt.Errorf("set TCP %s: %s", name, err)
		}
	}

	if err := s.CreateNIC(NICID, link); err != nil {
		return fmt.Errorf("create NIC: %s", err)
	}
	pa := tcpip.ProtocolAddress{
		Protocol: ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{
			Address:   tcpip.AddrFrom4(opts.Addr.Addr().As4()),
			PrefixLen: opts.Addr.Bits(),
		},
	}
	if err := s.AddProtocolAddress(NICID, pa, stack.AddressProperties{}); err != nil {
		return fmt.Errorf("add address %s: %s", opts.Addr, err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: NICID}})
	return nil
}

// Addr is the stack's address.
func (st *Stack) Addr() netip.Addr { return st.addr.Addr() }

// Gvisor gives the underlying gVisor stack, for the tracing and
// inspection layers.
func (st *Stack) Gvisor() *stack.Stack { return st.s }

// Listen listens on 0.0.0.0:port inside the stack.
func (st *Stack) Listen(port uint16) (net.Listener, error) {
	ln, err := gonet.ListenTCP(st.s, tcpip.FullAddress{NIC: NICID, Port: port}, ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("listen on 0.0.0.0:%d in the user-space stack: %w", port, err)
	}
	return ln, nil
}

// Dial opens a TCP connection from the stack to addr.
func (st *Stack) Dial(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	if !addr.Addr().Is4() {
		return nil, fmt.Errorf("dial %s: only IPv4 is supported", addr)
	}
	full := tcpip.FullAddress{NIC: NICID, Addr: tcpip.AddrFrom4(addr.Addr().As4()), Port: addr.Port()}
	c, err := gonet.DialContextTCP(ctx, st.s, full, ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return c, nil
}

// Drain waits until every closing connection has finished its FIN
// exchange (no endpoint in SYN-SENT, SYN-RECV, FIN-WAIT-1, FIN-WAIT-2,
// CLOSING or LAST-ACK: each is closed or in TIME-WAIT), or ctx ends. Call it
// after closing the application's connections so their FINs are delivered
// and acknowledged before the device goes away.
func (st *Stack) Drain(ctx context.Context) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		busy := 0
		for _, ep := range st.s.RegisteredEndpoints() {
			te, ok := ep.(*tcp.Endpoint)
			if !ok {
				continue
			}
			switch tcp.EndpointState(te.State()) {
			case tcp.StateSynSent, tcp.StateSynRecv, tcp.StateFinWait1, tcp.StateFinWait2, tcp.StateClosing, tcp.StateLastAck:
				busy++
			}
		}
		if busy == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d connection(s) still closing: %w", busy, ctx.Err())
		case <-tick.C:
		}
	}
}

// Close tears the stack down: any connection still open is reset, the NIC
// is removed and the link pipeline (and its device) closed.
func (st *Stack) Close() {
	st.s.Close()
	// gVisor waits for link endpoints before it closes them; ours stops its
	// read goroutine only when closed, so close it first.
	st.link.Close()
	st.s.Wait()
}
