package inspect

import (
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/tcp-upper/tcp-upper/internal/handoff"
	"github.com/tcp-upper/tcp-upper/netstack/trace"
)

// Options configure a Tracker.
type Options struct {
	// TimeWait is the stack's TIME-WAIT duration (for ss's timer column).
	TimeWait time.Duration
	// QueueLen is how many packet summaries and probe snapshots may wait
	// for the tracker (default 16384).
	QueueLen int
	// NIC is the stack's NIC (default 1).
	NIC tcpip.NICID
	// Poll is how often the tracker compares its view with the stack's
	// Endpoint.State() and looks for ended TIME-WAITs (default 20ms).
	Poll time.Duration
}

// Stats count what the tracker could not keep.
type Stats struct {
	// Dropped is how many packet summaries and probe snapshots were lost
	// because the tracker was behind.
	Dropped atomic.Uint64
	// EventsDropped is how many events a slow subscriber missed.
	EventsDropped atomic.Uint64
	// Events is how many events were emitted.
	Events atomic.Uint64
}

// Tracker follows every TCP connection of a stack. It is fed from two
// places that must not wait: the trace layer's packet path (ObservePacket)
// and gVisor's TCP probe (Probe), which runs under the endpoint's lock.
// Both only copy a few fields into a bounded queue; one goroutine does the
// rest.
type Tracker struct {
	opts Options
	log  *slog.Logger
	st   atomic.Pointer[stack.Stack]

	in      *handoff.Queue[item]
	reqs    chan func()
	done    chan struct{}
	stopped chan struct{}
	stats   Stats

	subsMu sync.Mutex
	subs   map[*Subscription]struct{}

	// Owned by the tracker goroutine.
	conns    map[ConnID]*conn
	backlogs map[uint16]int
}

type itemKind uint8

const (
	itemPacket itemKind = iota
	itemProbe
	itemEvent
)

type item struct {
	kind  itemKind
	t     time.Time
	dir   trace.Direction
	seg   segInfo
	probe probeSnap
	ev    *Event
}

type segInfo struct {
	src, dst netip.AddrPort
	seq, ack uint32
	flags    header.TCPFlags
	win      uint16
	payload  uint32
	mss      uint16
	wscale   int8 // -1: no option
}

type probeSnap struct {
	id                     ConnID
	sndUna, sndNxt, rcvNxt uint32
	rcvAcc                 uint32
	sndWnd                 uint32
	cwnd, ssthresh         int
	srtt, rto              time.Duration
	sndBufUsed             int
	mss                    int
}

// New returns a tracker. Give its Probe to the TCP protocol and its
// ObservePacket to the trace layer, build the stack, then Attach it.
func New(opts Options, log *slog.Logger) *Tracker {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.NIC == 0 {
		opts.NIC = 1
	}
	if opts.QueueLen <= 0 {
		opts.QueueLen = 16384
	}
	if opts.Poll <= 0 {
		opts.Poll = 20 * time.Millisecond
	}
	t := &Tracker{
		opts: opts, log: log,
		in: handoff.New[item](opts.QueueLen), reqs: make(chan func()),
		done: make(chan struct{}), stopped: make(chan struct{}),
		subs: make(map[*Subscription]struct{}), conns: make(map[ConnID]*conn),
	}
	go t.run()
	return t
}

// Attach gives the tracker the stack whose endpoints it inspects.
func (t *Tracker) Attach(s *stack.Stack) { t.st.Store(s) }

// Stats returns the tracker's counters.
func (t *Tracker) Stats() *Stats { return &t.stats }

// Close stops the tracker goroutine (after what is queued) and ends every
// subscription.
func (t *Tracker) Close() {
	select {
	case <-t.done:
		return
	default:
	}
	close(t.done)
	<-t.stopped
	t.subsMu.Lock()
	for s := range t.subs {
		delete(t.subs, s)
		close(s.ch)
	}
	t.subsMu.Unlock()
}

func (t *Tracker) enqueue(it item) {
	if !t.in.Push(it) {
		t.stats.Dropped.Add(1)
	}
}

// ObservePacket implements trace.Observer. It parses the IPv4 and TCP
// headers and queues a summary; it never blocks.
func (t *Tracker) ObservePacket(now time.Time, dir trace.Direction, hdr []byte, length int) {
	if len(hdr) < header.IPv4MinimumSize || header.IPVersion(hdr) != header.IPv4Version {
		return
	}
	ip := header.IPv4(hdr)
	hl := int(ip.HeaderLength())
	if ip.TransportProtocol() != header.TCPProtocolNumber || ip.FragmentOffset() != 0 || hl < header.IPv4MinimumSize || len(hdr) < hl+header.TCPMinimumSize {
		return
	}
	tcpHdr := header.TCP(hdr[hl:])
	off := int(tcpHdr.DataOffset())
	if off < header.TCPMinimumSize {
		return
	}
	it := item{kind: itemPacket, t: now, dir: dir}
	s := &it.seg
	s.src = netip.AddrPortFrom(netip.AddrFrom4(ip.SourceAddress().As4()), tcpHdr.SourcePort())
	s.dst = netip.AddrPortFrom(netip.AddrFrom4(ip.DestinationAddress().As4()), tcpHdr.DestinationPort())
	s.seq, s.ack = tcpHdr.SequenceNumber(), tcpHdr.AckNumber()
	s.flags, s.win = tcpHdr.Flags(), tcpHdr.WindowSize()
	if p := int(ip.TotalLength()) - hl - off; p > 0 {
		s.payload = uint32(p)
	}
	s.wscale = -1
	if s.flags&header.TCPFlagSyn != 0 && len(hdr) >= hl+off {
		o := header.ParseSynOptions(hdr[hl+header.TCPMinimumSize:hl+off], s.flags&header.TCPFlagAck != 0)
		s.mss, s.wscale = o.MSS, int8(o.WS)
	}
	t.enqueue(it)
}

// Probe is the TCP probe (tcp.NewProtocolProbe). gVisor calls it for each
// segment an endpoint has processed, with the endpoint locked: it copies
// the numbers we show and returns.
func (t *Tracker) Probe(s *tcp.TCPEndpointState) {
	it := item{kind: itemProbe, t: time.Now()}
	p := &it.probe
	p.id = ConnID{
		Local:  netip.AddrPortFrom(addr4(s.ID.LocalAddress.AsSlice()), s.ID.LocalPort),
		Remote: netip.AddrPortFrom(addr4(s.ID.RemoteAddress.AsSlice()), s.ID.RemotePort),
	}
	p.sndUna, p.sndNxt = uint32(s.Sender.SndUna), uint32(s.Sender.SndNxt)
	p.rcvNxt, p.rcvAcc = uint32(s.Receiver.RcvNxt), uint32(s.Receiver.RcvAcc)
	p.sndWnd = uint32(s.Sender.SndWnd)
	p.cwnd, p.ssthresh = s.Sender.SndCwnd, s.Sender.Ssthresh
	p.srtt, p.rto = s.Sender.RTTState.SRTT, s.Sender.RTO
	p.sndBufUsed = s.SndBufState.SndBufUsed
	p.mss = s.Sender.MaxPayloadSize
	t.enqueue(it)
}

func addr4(b []byte) netip.Addr {
	if len(b) != 4 {
		return netip.IPv4Unspecified()
	}
	return netip.AddrFrom4([4]byte(b))
}

// Sync brings the tracker up to date with the stack now (rather than at
// its next poll): queued packets are handled and ended connections, such
// as a TIME-WAIT whose timer just ran out, are reported.
func (t *Tracker) Sync() {
	t.do(func() { t.poll(time.Now()) })
}

// Inject adds an event from elsewhere (the fault layer) to the stream.
func (t *Tracker) Inject(ev Event) {
	t.enqueue(item{kind: itemEvent, t: ev.Time, ev: &ev})
}

// Subscription receives events.
type Subscription struct {
	ch      chan Event
	t       *Tracker
	dropped atomic.Uint64
}

// C delivers the events; it is closed when the subscription or the
// tracker ends.
func (s *Subscription) C() <-chan Event { return s.ch }

// Dropped is how many events this subscriber was too slow to take.
func (s *Subscription) Dropped() uint64 { return s.dropped.Load() }

// Close ends the subscription.
func (s *Subscription) Close() {
	s.t.subsMu.Lock()
	defer s.t.subsMu.Unlock()
	if _, ok := s.t.subs[s]; ok {
		delete(s.t.subs, s)
		close(s.ch)
	}
}

// Subscribe returns a subscription to every event from now on, with room
// for buf events; a subscriber that falls further behind loses events
// (counted in its Dropped and in the tracker's EventsDropped).
func (t *Tracker) Subscribe(buf int) *Subscription {
	s := &Subscription{ch: make(chan Event, buf), t: t}
	t.subsMu.Lock()
	defer t.subsMu.Unlock()
	select {
	case <-t.done:
		close(s.ch)
	default:
		t.subs[s] = struct{}{}
	}
	return s
}

func (t *Tracker) emit(ev Event) {
	t.stats.Events.Add(1)
	t.subsMu.Lock()
	defer t.subsMu.Unlock()
	for s := range t.subs {
		select {
		case s.ch <- ev:
		default:
			s.dropped.Add(1)
			t.stats.EventsDropped.Add(1)
		}
	}
}

// do runs f on the tracker goroutine and waits for it.
func (t *Tracker) do(f func()) bool {
	done := make(chan struct{})
	select {
	case t.reqs <- func() { f(); close(done) }:
		<-done
		return true
	case <-t.done:
		return false
	}
}

func (t *Tracker) run() {
	defer close(t.stopped)
	tick := time.NewTicker(t.opts.Poll)
	defer tick.Stop()
	for {
		select {
		case <-t.in.Ready():
			// Let a batch gather: one wake-up per batch, not per packet.
			time.Sleep(handoff.Linger)
			t.drain()
		case f := <-t.reqs:
			t.drain() // answer from a current view
			f()
		case now := <-tick.C:
			t.drain()
			t.poll(now)
		case <-t.done:
			t.drain()
			for _, c := range t.conns {
				c.flush(t)
			}
			return
		}
	}
}

func (t *Tracker) drain() {
	items := t.in.Take()
	for i := range items {
		t.handle(&items[i])
	}
}

func (t *Tracker) handle(it *item) {
	switch it.kind {
	case itemPacket:
		t.onPacket(it)
	case itemProbe:
		if c := t.conns[it.probe.id]; c != nil {
			c.onProbe(t, &it.probe)
		}
	case itemEvent:
		if c := t.conns[it.ev.Conn]; c != nil {
			// Keep a connection's events in order.
			c.add(t, *it.ev, false)
			return
		}
		t.emit(*it.ev)
	}
}

// poll flushes events that waited long enough for their probe, ends
// TIME-WAITs the stack has ended, and reconciles our view with the stack's.
func (t *Tracker) poll(now time.Time) {
	s := t.st.Load()
	quiet := t.in.Len() < 64 // our view is current: disagreements are real
	var missing bool
	for _, c := range t.conns {
		if len(c.pending) > 0 && now.Sub(c.pendingSince) > 10*time.Millisecond {
			c.flush(t)
		}
		if c.ep == nil && c.state >= SynRcvd {
			missing = true
		}
	}
	if missing && s != nil {
		t.findEndpoints(s)
	}
	for id, c := range t.conns {
		switch {
		case c.ep != nil:
			// No continue here: a connection both we and the stack
			// see CLOSED must still be forgotten below (it holds
			// the gVisor endpoint, and with it the connection's
			// buffers).
			st := FromGvisor(tcp.EndpointState(c.ep.State()))
			if st == c.state || !quiet {
				c.mismatch = 0
				break
			}
			c.mismatch++
			if c.state == TimeWait && (st == Closed) {
				c.transition(t, now, Closed, "2MSL timer expired", false)
			} else if c.mismatch >= 3 {
				c.transition(t, now, st, "per the stack's Endpoint.State(); no segment explained it", false)
			}
		case c.state == TimeWait && now.Sub(c.twStart) > t.opts.TimeWait+time.Second:
			c.transition(t, now, Closed, "2MSL timer expired (endpoint gone)", false)
		case c.state <= Listen && now.Sub(c.lastSeen) > 5*time.Second:
			// A SYN never answered (or refused): forget it.
			delete(t.conns, id)
			continue
		}
		if c.state == Closed {
			c.flush(t)
			delete(t.conns, id)
		}
	}
}

// endpoint finds c's gVisor endpoint (nil if it has none any more).
func (t *Tracker) endpoint(c *conn) *tcp.Endpoint {
	if c.ep != nil {
		return c.ep
	}
	s := t.st.Load()
	if s == nil {
		return nil
	}
	id := stack.TransportEndpointID{
		LocalPort: c.id.Local.Port(), LocalAddress: tcpip.AddrFrom4(c.id.Local.Addr().As4()),
		RemotePort: c.id.Remote.Port(), RemoteAddress: tcpip.AddrFrom4(c.id.Remote.Addr().As4()),
	}
	for _, nic := range []tcpip.NICID{t.opts.NIC, 0} {
		if te := s.FindTransportEndpoint(header.IPv4ProtocolNumber, header.TCPProtocolNumber, id, nic); te != nil {
			if ep, ok := te.(*tcp.Endpoint); ok {
				c.ep = ep
				return ep
			}
		}
	}
	return nil
}

// findEndpoints links connections to their gVisor endpoints.
func (t *Tracker) findEndpoints(s *stack.Stack) {
	for _, te := range s.RegisteredEndpoints() {
		ep, ok := te.(*tcp.Endpoint)
		if !ok {
			continue
		}
		id, ok := endpointID(ep)
		if !ok {
			continue
		}
		if c := t.conns[id]; c != nil && c.ep == nil {
			c.ep = ep
		}
	}
}

func endpointID(ep *tcp.Endpoint) (ConnID, bool) {
	info, ok := ep.Info().(*stack.TransportEndpointInfo)
	if !ok {
		return ConnID{}, false
	}
	return ConnID{
		Local:  netip.AddrPortFrom(addr4(info.ID.LocalAddress.AsSlice()), info.ID.LocalPort),
		Remote: netip.AddrPortFrom(addr4(info.ID.RemoteAddress.AsSlice()), info.ID.RemotePort),
	}, true
}

func (t *Tracker) onPacket(it *item) {
	s := &it.seg
	id := ConnID{Local: s.src, Remote: s.dst}
	if it.dir == trace.In {
		id = ConnID{Local: s.dst, Remote: s.src}
	}
	c := t.conns[id]
	syn := s.flags&header.TCPFlagSyn != 0 && s.flags&header.TCPFlagAck == 0
	if c != nil && syn && (c.state == TimeWait || c.state == Closed) && !(it.dir == trace.In && c.irsKnown && s.seq == c.irs) {
		// The port pair is used again: the old connection is over.
		c.transition(t, it.t, Closed, "a new SYN reuses the port pair", false)
		c.flush(t)
		delete(t.conns, id)
		c = nil
	}
	if c == nil {
		if !syn || s.flags&header.TCPFlagRst != 0 {
			return // not the start of a connection: nothing to follow
		}
		c = &conn{id: id, state: Closed}
		if it.dir == trace.In {
			c.state = Listen
		}
		t.conns[id] = c
	}
	c.lastSeen = it.t
	if it.dir == trace.In {
		c.rx(t, it)
	} else {
		c.tx(t, it)
	}
}

// seqLess reports a < b in sequence space.
func seqLess(a, b uint32) bool { return int32(a-b) < 0 }
