// Package netstack builds the user-space TCP/IP stack (gVisor's netstack)
// that replaces the kernel's TCP for our server and, optionally, our client.
//
// The data path is a pipeline of link endpoints, bottom to top:
//
//	tun.Device → tunlink → fault → (trace/pcap) → gVisor stack → gonet → app
//
// New assembles that pipeline over a device and gives back a Stack with
// net.Listener and net.Conn, so the application code is the same on our stack
// and on the kernel's.
package netstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/tcp-upper/tcp-upper/netstack/fault"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
	"github.com/tcp-upper/tcp-upper/netstack/trace"
	"github.com/tcp-upper/tcp-upper/netstack/tunlink"
	"github.com/tcp-upper/tcp-upper/tun"
)

// The trace layer takes the fault layer's notes on incoming packets.
var _ fault.Noter = (*trace.Link)(nil)

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
	// TunSpin makes the TUN's reader busy-poll an empty device for up to
	// this long before it sleeps (tunlink.Options.Spin).
	TunSpin time.Duration
	// Backlog is the listen backlog (default 4096, Linux's somaxconn).
	// When this many handshakes are pending, further SYNs are answered
	// with SYN cookies (counted as tcp.syn_cookies_sent), so a SYN flood
	// does not lock real clients out.
	Backlog int
	// UserTimeout, when positive, is every accepted connection's
	// TCP_USER_TIMEOUT: a connection whose sent data (or FIN) stays
	// unacknowledged for that long is aborted, so a peer that vanished
	// is freed in bounded time instead of after ~15 retransmissions.
	UserTimeout time.Duration
	// Trace configures the tcpdump-style trace and the pcap file.
	Trace trace.Options
	// Host is where the stack runs (ant or apple in the lab), for its
	// events; empty when not known.
	Host string
	// Inspect turns on the connection tracker (state events, ss -i,
	// TIME-WAIT timers): gVisor's observe hook (our patch 0009) feeds it
	// the stack's events with their numbers, its TCP probe the numbers
	// after each segment, and the trace layer packet summaries.
	Inspect bool
	// ClassicRecovery turns off gVisor's RACK loss detection and its tail
	// loss probes, leaving the textbook mechanisms: duplicate-ACK fast
	// retransmit (with SACK) and the retransmission timer. Lessons about
	// RTO and fast retransmit want it.
	ClassicRecovery bool
	// MaxRTO caps the retransmission timeout's exponential backoff; zero
	// keeps gVisor's 120 s. Under heavy injected loss a retransmission can
	// be lost many times in a row, and each loss doubles the wait.
	MaxRTO time.Duration
	// Fault configures the fault layer (its seed and first rules). The
	// layer is always in the pipeline, so rules can be added at run time;
	// without rules it costs one atomic load per packet.
	Fault fault.Options
	// TCPProbe, if set, is called by gVisor for every segment a TCP
	// endpoint receives, under that endpoint's lock: it must only copy
	// what it needs and return.
	TCPProbe tcp.TCPProbeFunc
	// TCPObserve, if set, is gVisor's observe hook (our patch 0009): it is
	// called at each state change of a TCP endpoint, retransmission
	// timeout, entry to and exit from fast recovery, tail loss probe,
	// zero-window probe, and closing or reopening of the advertised
	// receive window, with a copy of the endpoint's numbers at that
	// instant (tcp.TCPObservation). Like the probe it runs under the
	// endpoint's lock: it must only copy what it needs and return.
	// Built against pristine gVisor (the gvisor_unpatched tag) it can
	// only be nil.
	TCPObserve TCPObserveFunc
}

// Stack is a gVisor network stack with one NIC on a link pipeline.
type Stack struct {
	s       *stack.Stack
	addr    netip.Prefix
	log     *slog.Logger
	backlog int
	dev     *tunlink.Endpoint
	tr      *trace.Link
	faults  *fault.Link
	tracker *inspect.Tracker
	top     stack.LinkEndpoint // what the NIC is attached to

	// userTimeout is set on listeners; accepted endpoints inherit it.
	userTimeout time.Duration
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
	st := &Stack{addr: opts.Addr, log: log, backlog: opts.Backlog, userTimeout: opts.UserTimeout}
	if st.backlog <= 0 {
		st.backlog = 4096
	}
	if opts.TimeWait <= 0 {
		opts.TimeWait = DefaultTimeWait
	}

	// The pipeline, bottom up.
	st.dev = tunlink.New(dev, tunlink.Options{OnError: opts.OnLinkError, Spin: opts.TunSpin}, log)
	var link stack.LinkEndpoint = st.dev
	fopts := opts.Fault
	userApply := fopts.OnApply
	fopts.OnApply = func(a fault.Applied) {
		st.noteFault(a)
		if userApply != nil {
			userApply(a)
		}
	}
	st.faults = fault.New(link, fopts, log)
	link = st.faults
	probes := []tcp.TCPProbeFunc{}
	if opts.TCPProbe != nil {
		probes = append(probes, opts.TCPProbe)
	}
	if opts.Inspect {
		st.tracker = inspect.New(inspect.Options{TimeWait: opts.TimeWait, ClassicRecovery: opts.ClassicRecovery, NIC: NICID, Host: opts.Host}, log)
		opts.Trace.Observer = st.tracker
		probes = append(probes, st.tracker.Probe)
	}
	if opts.Trace.Out != nil || opts.Trace.Pcap != nil || opts.Trace.Observer != nil {
		st.tr = trace.New(link, opts.Trace, log)
		link = st.tr
	}
	st.top = link

	var probe tcp.TCPProbeFunc
	switch len(probes) {
	case 0:
	case 1:
		probe = probes[0]
	default:
		probe = func(s *tcp.TCPEndpointState) {
			for _, p := range probes {
				p(s)
			}
		}
	}
	tcpFactory := tcpProtocol(probe, withTracker(opts.TCPObserve, st.tracker))
	st.s = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcpFactory, icmp.NewProtocol4},
	})
	if st.tracker != nil {
		st.tracker.Attach(st.s)
	}
	if err := st.configure(link, opts); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

func (st *Stack) configure(link stack.LinkEndpoint, opts Options) error {
	s := st.s
	twOpt := tcpip.TCPTimeWaitTimeoutOption(opts.TimeWait)
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

	if opts.MaxRTO > 0 {
		maxRTO := tcpip.TCPMaxRTOOption(opts.MaxRTO)
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &maxRTO); err != nil {
			return fmt.Errorf("set TCP max RTO %v: %s", opts.MaxRTO, err)
		}
	}
	if opts.ClassicRecovery {
		rec := tcpip.TCPRecovery(0)
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &rec); err != nil {
			return fmt.Errorf("set TCP recovery: %s", err)
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

// Listen listens on 0.0.0.0:port inside the stack, with the stack's
// backlog. Accept hands out *Conn.
func (st *Stack) Listen(port uint16) (net.Listener, error) {
	var wq waiter.Queue
	ep, terr := st.s.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		return nil, fmt.Errorf("listen on 0.0.0.0:%d in the user-space stack: %s", port, terr)
	}
	if terr := ep.Bind(tcpip.FullAddress{NIC: NICID, Port: port}); terr != nil {
		ep.Close()
		return nil, fmt.Errorf("listen on 0.0.0.0:%d in the user-space stack: %s", port, terr)
	}
	if st.userTimeout > 0 {
		uto := tcpip.TCPUserTimeoutOption(st.userTimeout)
		if terr := ep.SetSockOpt(&uto); terr != nil {
			ep.Close()
			return nil, fmt.Errorf("listen on 0.0.0.0:%d in the user-space stack: set user timeout: %s", port, terr)
		}
	}
	if terr := ep.Listen(st.backlog); terr != nil {
		ep.Close()
		return nil, fmt.Errorf("listen on 0.0.0.0:%d in the user-space stack: %s", port, terr)
	}
	if st.tracker != nil {
		st.tracker.NoteListener(port, st.backlog)
	}
	return newListener(gonet.NewTCPListener(st.s, &wq, ep), ep, &wq, st.dev.Soon), nil
}

// Faults is the fault layer.
func (st *Stack) Faults() *fault.Link { return st.faults }

// noteFault reports an injected fault to the trace (a marked line) and to
// the tracker (a fault event on the connection). It runs on the packet
// path: both only queue.
func (st *Stack) noteFault(a fault.Applied) {
	what := fmt.Sprintf("%s rule #%d (%s): %s > %s: %s", a.Dir, a.RuleID, a.Rule, a.Src, a.Dst, a.Segment)
	if st.tr != nil {
		st.tr.Note(a.Time, "INJECTED "+what)
		dir := trace.In
		if a.Dir == fault.Out {
			dir = trace.Out
		}
		dropped := a.Action == fault.Drop || a.Action == fault.Blackhole
		st.tr.Mark(a.Time, dir, a.Packet, dropped, a.Comment())
	}
	if st.tracker != nil {
		id := inspect.ConnID{Local: a.Dst, Remote: a.Src}
		if a.Dir == fault.Out {
			id = inspect.ConnID{Local: a.Src, Remote: a.Dst}
		}
		st.tracker.Inject(inspect.Event{Time: a.Time, Kind: inspect.KindFault, Conn: id, Rule: a.RuleID,
			Cause: "injected " + a.Action.String() + ", " + what})
	}
}

// Tracker is the connection tracker, or nil without Options.Inspect.
func (st *Stack) Tracker() *inspect.Tracker { return st.tracker }

// Trace is the trace layer, or nil when nothing traces.
func (st *Stack) Trace() *trace.Link { return st.tr }

// Dial opens a TCP connection from the stack to addr. It hands out a
// *Conn, as Accept does (gonet's DialContextTCP, with the connection's
// addresses kept).
func (st *Stack) Dial(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	if !addr.Addr().Is4() {
		return nil, fmt.Errorf("dial %s: only IPv4 is supported", addr)
	}
	full := tcpip.FullAddress{NIC: NICID, Addr: tcpip.AddrFrom4(addr.Addr().As4()), Port: addr.Port()}
	fail := func(err error) (net.Conn, error) {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	var wq waiter.Queue
	ep, terr := st.s.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		return fail(errors.New(terr.String()))
	}
	entry, ch := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	terr = ep.Connect(full)
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return fail(ctx.Err())
		case <-ch:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return fail(&net.OpError{Op: "connect", Net: "tcp", Addr: net.TCPAddrFromAddrPort(addr), Err: errors.New(terr.String())})
	}
	local, _ := ep.GetLocalAddress()
	return newConn(ep, &wq, local, full, st.dev.Soon), nil
}

// Drain waits until every closing connection has finished its FIN
// exchange (no endpoint in SYN-SENT, SYN-RECV, FIN-WAIT-1, FIN-WAIT-2,
// CLOSING or LAST-ACK: each is closed or in TIME-WAIT), or ctx ends. Call it
// after closing the application's connections so their FINs are delivered
// and acknowledged before the device goes away.
func (st *Stack) Drain(ctx context.Context) error {
	return st.waitNone(ctx, "still closing",
		tcp.StateSynSent, tcp.StateSynRecv, tcp.StateFinWait1, tcp.StateFinWait2, tcp.StateClosing, tcp.StateLastAck)
}

// WaitTimeWait waits until no connection is in TIME-WAIT (its 2MSL timer
// has run out), or ctx ends.
func (st *Stack) WaitTimeWait(ctx context.Context) error {
	if err := st.waitNone(ctx, "still in TIME-WAIT", tcp.StateTimeWait); err != nil {
		return err
	}
	if st.tracker != nil {
		st.tracker.Sync() // report the TIME-WAIT's end before anything closes
	}
	return nil
}

// waitNone polls every 10ms until no TCP endpoint is in any of states, or
// ctx ends.
func (st *Stack) waitNone(ctx context.Context, what string, states ...tcp.EndpointState) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		n := 0
		for _, ep := range st.s.RegisteredEndpoints() {
			if te, ok := ep.(*tcp.Endpoint); ok && slices.Contains(states, tcp.EndpointState(te.State())) {
				n++
			}
		}
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d connection(s) %s: %w", n, what, ctx.Err())
		case <-tick.C:
		}
	}
}

// Close tears the stack down: any connection still open is reset, the NIC
// is removed and the link pipeline (and its device) closed. Connections in
// TIME-WAIT end quietly when nothing else is left (see quietTimeWait).
func (st *Stack) Close() {
	if st.s != nil {
		st.quietTimeWait()
		st.s.Close()
	}
	// gVisor waits for link endpoints before it closes them; ours stops its
	// read goroutine only when closed, so close the pipeline first.
	st.top.Close()
	if st.s != nil {
		st.s.Wait()
	}
	if st.tracker != nil {
		st.tracker.Close()
	}
}

// quietTimeWait disables the NIC, so that aborting the endpoints sends
// nothing, when every connection left is in TIME-WAIT (as after a clean
// shutdown: every peer has closed). gVisor resets every connected endpoint
// on Close, TIME-WAIT included; the kernel never sends a RST from
// TIME-WAIT, and one after a clean four-way close would only puzzle
// whoever reads the capture. With any other connection left (a drain that
// timed out), the NIC stays up and those peers get their RST.
func (st *Stack) quietTimeWait() {
	for _, ep := range st.s.RegisteredEndpoints() {
		te, ok := ep.(*tcp.Endpoint)
		if !ok {
			continue
		}
		switch tcp.EndpointState(te.State()) {
		case tcp.StateTimeWait, tcp.StateListen, tcp.StateClose, tcp.StateInitial, tcp.StateBound, tcp.StateError:
		default:
			return
		}
	}
	st.s.DisableNIC(NICID)
}
