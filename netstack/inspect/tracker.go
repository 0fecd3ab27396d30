package inspect

import (
	"encoding/binary"
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
	"github.com/tcp-upper/tcp-upper/internal/pkt"
	"github.com/tcp-upper/tcp-upper/netstack/trace"
)

// Options configure a Tracker.
type Options struct {
	// TimeWait is the stack's TIME-WAIT duration (for ss's timer column).
	TimeWait time.Duration
	// ClassicRecovery says the stack runs without RACK (netstack's
	// Options.ClassicRecovery): then only duplicate ACKs and the SACK
	// scoreboard start fast recovery, which the events say.
	ClassicRecovery bool
	// QueueLen is how many packet summaries, probe snapshots and
	// observations may wait for the tracker (default 16384).
	QueueLen int
	// NIC is the stack's NIC (default 1).
	NIC tcpip.NICID
	// Poll is how often the tracker forgets connections the stack never
	// took up (a SYN refused or never answered, 5 s after their last
	// packet; default 1s).
	Poll time.Duration
	// Host is where the stack runs (ant or apple in the lab; empty when
	// not known), for the events' Host.
	Host string
}

// Stats count what the tracker could not keep.
type Stats struct {
	// Dropped is how many packet summaries, probe snapshots and
	// observations were lost because the tracker was behind.
	Dropped atomic.Uint64
	// EventsDropped is how many events (segment events included) a slow
	// subscriber missed.
	EventsDropped atomic.Uint64
	// Events is how many events were emitted (segment events not counted).
	Events atomic.Uint64
}

// Tracker follows every TCP connection of a stack. It is fed from three
// places that must not wait: gVisor's observe hook (Observe, our patch
// 0009), which reports each state change, RTO, recovery, loss probe and
// window event with the stack's numbers at that instant; gVisor's TCP
// probe (Probe), the stack's numbers after each segment it processed (both
// run under the endpoint's lock); and the trace layer's packet path
// (ObservePacket), what the wire shows. Each only copies a few fields into
// a bounded queue; one goroutine does the rest. States and numbers come
// from the stack only; the wire adds annotations (duplicate ACKs,
// segments sent again, the peer's windows) and ss -i's counters.
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
	// segSubs is how many subscriptions asked for segments: with none the
	// packet path and the tracker do no segment work.
	segSubs atomic.Int32

	// Owned by the tracker goroutine.
	conns    map[ConnID]*conn
	backlogs map[uint16]int
	batches  int // drains that found items (tests)
}

type itemKind uint8

const (
	itemPacket itemKind = iota
	itemProbe
	itemObserve
	itemEvent
)

type item struct {
	kind itemKind
	t    time.Time
	dir  trace.Direction
	seg  segInfo
	snap snap // itemProbe, itemObserve
	ev   *Event
}

type segInfo struct {
	src, dst netip.AddrPort
	seq, ack uint32
	flags    header.TCPFlags
	win      uint16
	payload  uint32
	mss      uint16
	wscale   int8 // -1: no option
	sackOK   bool
	// SACK blocks as on the wire (only while a subscriber wants segments).
	nsack uint8
	sack  [4][2]uint32
}

// snap is the stack's numbers for one connection at one instant: from the
// observe hook (an event) or the TCP probe (after a segment).
type snap struct {
	id ConnID
	ep *tcp.Endpoint // observations only

	// What the observe hook reported (observations only).
	kind             observeKind
	from, to         tcp.EndpointState
	iss, irs         uint32
	haveISS, haveIRS bool
	sackOK           bool
	connected        bool // the rest is the stack's (else unknown)
	sndUna, sndNxt   uint32
	rcvNxt, rcvWnd   uint32
	sndWnd           uint32
	cwnd, ssthresh   int
	srtt, rto        time.Duration
	rttvar           time.Duration
	srttKnown        bool
	sndBufUsed, mss  int
	recoveryFirst    uint32
	dupAcks          int // the sender's duplicate-ACK count (probe snapshots only)
}

// observeKind mirrors tcp.TCPObserveKind, which pristine gVisor lacks.
type observeKind uint8

const (
	obsNone observeKind = iota
	obsState
	obsRTO
	obsRecoveryEnter
	obsRecoveryLeave
	obsTailLossProbe
	obsZeroWindowProbe
	obsRcvWindowClosed
	obsRcvWindowOpened
)

// New returns a tracker. Give its Observe (the observe hook) and Probe to
// the TCP protocol and its ObservePacket to the trace layer, build the
// stack, then Attach it.
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
		opts.Poll = time.Second
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
		if s.segments {
			t.segSubs.Add(-1)
		}
	}
	t.subsMu.Unlock()
}

func (t *Tracker) enqueue(it item) {
	if !t.in.Push(it) {
		t.stats.Dropped.Add(1)
	}
}

// ObservePacket implements trace.Observer. It decodes the IPv4 and TCP
// headers (pkt.Decode) and queues a summary of a TCP segment; it never
// blocks.
func (t *Tracker) ObservePacket(now time.Time, dir trace.Direction, hdr []byte, length int) {
	var d pkt.Parsed
	d.Decode(hdr)
	if !d.IsTCP() {
		return
	}
	it := item{kind: itemPacket, t: now, dir: dir}
	s := &it.seg
	s.src, s.dst = d.Src, d.Dst
	s.seq, s.ack = d.Seq, d.Ack
	s.flags, s.win = d.Flags, d.Win
	s.payload = uint32(d.PayloadLen)
	s.wscale = -1
	if opts := d.Options(); s.flags&header.TCPFlagSyn != 0 && len(opts) == d.TCPHdrLen-header.TCPMinimumSize {
		o := header.ParseSynOptions(opts, s.flags&header.TCPFlagAck != 0)
		s.mss, s.wscale, s.sackOK = o.MSS, int8(o.WS), o.SACKPermitted
	} else if len(opts) > 0 && t.segSubs.Load() > 0 {
		s.nsack = parseSACK(opts, &s.sack)
	}
	t.enqueue(it)
}

// Probe is the TCP probe (tcp.NewProtocolProbe). gVisor calls it for each
// segment an endpoint has processed, with the endpoint locked: it copies
// the numbers we show and returns.
func (t *Tracker) Probe(s *tcp.TCPEndpointState) {
	it := item{kind: itemProbe, t: time.Now()}
	p := &it.snap
	p.id = connID(s.ID)
	p.connected = true
	p.sndUna, p.sndNxt = uint32(s.Sender.SndUna), uint32(s.Sender.SndNxt)
	p.rcvNxt = uint32(s.Receiver.RcvNxt)
	// The probe does not copy the window last advertised: the tracker
	// takes it from our latest segment on the wire.
	p.sndWnd = uint32(s.Sender.SndWnd)
	p.cwnd, p.ssthresh = s.Sender.SndCwnd, s.Sender.Ssthresh
	p.srtt, p.srttKnown, p.rto = s.Sender.RTTState.SRTT, s.Sender.RTTState.SRTTInited, s.Sender.RTO
	p.rttvar = s.Sender.RTTState.RTTVar
	p.sndBufUsed = s.SndBufState.SndBufUsed
	p.mss = s.Sender.MaxPayloadSize
	p.dupAcks = s.Sender.DupAckCount
	t.enqueue(it)
}

// parseSACK copies the SACK blocks of a TCP header's options into blocks
// (at most 4 fit in 40 bytes) without allocating, and returns how many.
func parseSACK(opts []byte, blocks *[4][2]uint32) uint8 {
	for i := 0; i < len(opts); {
		switch kind := opts[i]; kind {
		case header.TCPOptionEOL:
			return 0
		case header.TCPOptionNOP:
			i++
			continue
		}
		if i+1 >= len(opts) || opts[i+1] < 2 || i+int(opts[i+1]) > len(opts) {
			return 0 // malformed: no blocks
		}
		l := int(opts[i+1])
		if opts[i] == header.TCPOptionSACK {
			n := uint8(0)
			for b := i + 2; b+8 <= i+l && n < 4; b += 8 {
				blocks[n] = [2]uint32{binary.BigEndian.Uint32(opts[b:]), binary.BigEndian.Uint32(opts[b+4:])}
				n++
			}
			return n
		}
		i += l
	}
	return 0
}

func connID(id tcp.TCPEndpointID) ConnID {
	return ConnID{
		Local:  netip.AddrPortFrom(addr4(id.LocalAddress.AsSlice()), id.LocalPort),
		Remote: netip.AddrPortFrom(addr4(id.RemoteAddress.AsSlice()), id.RemotePort),
	}
}

func addr4(b []byte) netip.Addr {
	if len(b) != 4 {
		return netip.IPv4Unspecified()
	}
	return netip.AddrFrom4([4]byte(b))
}

// Sync is the tracker's barrier: it returns once every event caused by
// what the stack did before the call (its observe hook and TCP probe, the
// packets that crossed the trace layer, the faults injected, a TIME-WAIT
// whose timer ran out) is in every subscription's channel, or counted in
// its Dropped if that channel was full. A subscriber that then takes what
// its channel holds, without waiting, has all of them. After Close it
// returns at once.
func (t *Tracker) Sync() {
	t.do(func() { t.poll(time.Now()) })
}

// Inject adds an event from elsewhere (the fault layer) to the stream.
func (t *Tracker) Inject(ev Event) {
	t.enqueue(item{kind: itemEvent, t: ev.Time, ev: &ev})
}

// Subscription receives events.
type Subscription struct {
	ch        chan Event
	t         *Tracker
	segments  bool
	dropped   atomic.Uint64
	delivered atomic.Uint64
}

// SubscribeOption changes what a subscription receives.
type SubscribeOption func(*Subscription)

// WithSegments adds a segment event (KindSegment) for every TCP segment of
// a tracked connection, in order with the other events.
func WithSegments() SubscribeOption { return func(s *Subscription) { s.segments = true } }

// C delivers the events; it is closed when the subscription or the
// tracker ends.
func (s *Subscription) C() <-chan Event { return s.ch }

// Dropped is how many events this subscriber was too slow to take.
func (s *Subscription) Dropped() uint64 { return s.dropped.Load() }

// Delivered is how many events have been put in C so far. After the
// tracker's Sync, a subscriber that has taken this many has every event
// caused by what the stack did before the Sync.
func (s *Subscription) Delivered() uint64 { return s.delivered.Load() }

// Close ends the subscription.
func (s *Subscription) Close() {
	s.t.subsMu.Lock()
	defer s.t.subsMu.Unlock()
	if _, ok := s.t.subs[s]; ok {
		delete(s.t.subs, s)
		close(s.ch)
		if s.segments {
			s.t.segSubs.Add(-1)
		}
	}
}

// Subscribers is how many subscriptions are open: a test that starts a
// stream elsewhere (the control socket's events) waits for it with this.
func (t *Tracker) Subscribers() int {
	t.subsMu.Lock()
	defer t.subsMu.Unlock()
	return len(t.subs)
}

// Subscribe returns a subscription to every event from now on, with room
// for buf events; a subscriber that falls further behind loses events
// (counted in its Dropped and in the tracker's EventsDropped).
func (t *Tracker) Subscribe(buf int, opts ...SubscribeOption) *Subscription {
	s := &Subscription{ch: make(chan Event, buf), t: t}
	for _, o := range opts {
		o(s)
	}
	t.subsMu.Lock()
	defer t.subsMu.Unlock()
	select {
	case <-t.done:
		close(s.ch)
	default:
		t.subs[s] = struct{}{}
		if s.segments {
			t.segSubs.Add(1)
		}
	}
	return s
}

// wantSegments reports whether a subscriber asked for segments.
func (t *Tracker) wantSegments() bool { return t.segSubs.Load() > 0 }

func (t *Tracker) emit(ev Event) {
	ev.Stack, ev.Host = StackNetstack, t.opts.Host
	segment := ev.Kind == KindSegment
	if !segment {
		t.stats.Events.Add(1)
	}
	t.subsMu.Lock()
	defer t.subsMu.Unlock()
	for s := range t.subs {
		if segment && !s.segments {
			continue
		}
		select {
		case s.ch <- ev:
			s.delivered.Add(1)
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

// batchEvery is how long the tracker lets items gather once they come:
// while traffic flows it wakes once per batchEvery, not once per packet
// (each wake-up of a goroutine competes with the stack and the
// application for the CPUs), and when a batch timer finds nothing it
// sleeps until the next item. It bounds how late an event reaches a
// subscriber that does not Sync; Sync, the control socket's queries and a
// queue half full are served at once.
const batchEvery = 10 * time.Millisecond

func (t *Tracker) run() {
	defer close(t.stopped)
	poll := time.NewTicker(t.opts.Poll)
	defer poll.Stop()
	batch := time.NewTimer(batchEvery)
	batch.Stop()
	// Either ready (waiting for an item) or due (a batch gathering) is
	// set, never both.
	ready, due := t.in.Ready(), (<-chan time.Time)(nil)
	for {
		select {
		case <-ready:
			ready, due = nil, batch.C
			batch.Reset(batchEvery)
		case <-due:
			if t.drain() == 0 {
				ready, due = t.in.Ready(), nil
			} else {
				batch.Reset(batchEvery)
			}
		case <-t.in.Full():
			t.drain()
		case f := <-t.reqs:
			t.drain() // answer from a current view
			f()
		case now := <-poll.C:
			t.drain()
			t.poll(now)
		case <-t.done:
			t.drain()
			return
		}
	}
}

// drain handles every item queued and says how many there were.
func (t *Tracker) drain() int {
	items := t.in.Take()
	if len(items) > 0 {
		t.batches++
	}
	for i := range items {
		t.handle(&items[i])
	}
	return len(items)
}

func (t *Tracker) handle(it *item) {
	switch it.kind {
	case itemPacket:
		t.onPacket(it)
	case itemProbe:
		if c := t.conns[it.snap.id]; c != nil {
			c.snap, c.haveSnap = it.snap, true
			c.snap.rcvWnd = c.rcvWnd // the window on our latest segment
			c.stackDupAcks = it.snap.dupAcks
		}
	case itemObserve:
		t.onObserve(it)
	case itemEvent:
		if c := t.conns[it.ev.Conn]; c != nil {
			c.add(t, *it.ev)
			return
		}
		t.emit(*it.ev)
	}
}

// onObserve handles an event the stack reported.
func (t *Tracker) onObserve(it *item) {
	o := &it.snap
	c := t.conns[o.id]
	if c == nil {
		c = &conn{id: o.id, state: Closed, ourWS: -1, peerWS: -1}
		t.conns[o.id] = c
	}
	c.lastSeen = it.t
	c.onObserve(t, it.t, o)
	if o.kind == obsState && (o.to == tcp.StateClose || o.to == tcp.StateError) {
		delete(t.conns, o.id) // the stack is done with it
	}
}

// poll forgets connections the stack never took up: seen on the wire (a
// SYN) but never reported by the stack, because it refused the SYN or the
// SYN went unanswered.
func (t *Tracker) poll(now time.Time) {
	for id, c := range t.conns {
		if !c.stackSeen && now.Sub(c.lastSeen) > 5*time.Second {
			delete(t.conns, id)
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
	if c != nil && syn && c.state == TimeWait && !(it.dir == trace.In && c.irsKnown && s.seq == c.irs) {
		// A new SYN for the port pair of a connection in TIME-WAIT: it
		// belongs to the next connection, which the stack will report.
		c.newSyn = true
		return
	}
	if c == nil {
		if !syn || s.flags&header.TCPFlagRst != 0 {
			return // not the start of a connection: nothing to follow
		}
		c = &conn{id: id, state: Closed, ourWS: -1, peerWS: -1}
		t.conns[id] = c
	}
	c.lastSeen = it.t
	// Before rx and tx move them: the highest sequence each side had sent,
	// for the segment's retransmission mark.
	out := it.dir == trace.Out
	sentMax, sentAny := c.peerMax, c.peerSyn
	if out {
		sentMax, sentAny = c.sndMax, c.ourSyn
	}
	if out {
		c.tx(t, it)
	} else {
		c.rx(t, it)
	}
	if t.wantSegments() {
		c.segment(t, it, sentMax, sentAny)
	}
}

// seqLess reports a < b in sequence space.
func seqLess(a, b uint32) bool { return int32(a-b) < 0 }
