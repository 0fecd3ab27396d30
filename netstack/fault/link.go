package fault

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/nested"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/tcp-upper/tcp-upper/internal/pkt"
	"github.com/tcp-upper/tcp-upper/netstack/gso"
)

// Applied describes one fault the layer injected.
type Applied struct {
	Time   time.Time
	Dir    Dir // In or Out
	RuleID int
	Rule   string
	Action Action
	// Src and Dst are the packet's endpoints (zero for a packet that is
	// not TCP/IPv4).
	Src, Dst netip.AddrPort
	// Segment is the packet's TCP summary, as tcpdump would begin it:
	// "Flags [P.], seq 2896:4344" (absolute sequence numbers).
	Segment string
	// Packet is, going out, the packet as the layer above handed it down
	// (for a super-segment cut into wire segments, the whole one: what the
	// trace layer recorded); coming in, the wire segment the rule took
	// (which the layer above has not seen). It is valid only during
	// OnApply; the trace layer uses it to mark the capture.
	Packet *stack.PacketBuffer
}

// Comment is how a capture marks the packet: "dropped by rule 1: out ack
// drop count=1".
func (a Applied) Comment() string {
	verb := map[Action]string{
		Drop: "dropped", Blackhole: "dropped", Delay: "delayed", Dup: "duplicated",
		Reorder: "held back to be overtaken", Corrupt: "corrupted", Truncate: "truncated", Rate: "rate-limited",
	}[a.Action]
	if verb == "" {
		verb = a.Action.String()
	}
	return fmt.Sprintf("%s by rule %d: %s", verb, a.RuleID, a.Rule)
}

// Noter is what a layer above the fault layer (the trace layer) may
// implement to record an incoming packet with a note: the fault layer
// hands it each packet it changed, delayed, held back or copied that way,
// with what it did (Applied.Comment).
type Noter interface {
	DeliverNoted(proto tcpip.NetworkProtocolNumber, p *stack.PacketBuffer, note string)
}

// Options configure a Link.
type Options struct {
	// Seed seeds every random choice. The same seed and the same traffic
	// give the same faults.
	Seed uint64
	// Rules are installed at start (ids 1, 2, ...).
	Rules []*Rule
	// OnApply, if set, is told of every fault injected, on the packet
	// path: it must only hand the news off.
	OnApply func(Applied)
}

// RuleState is a rule with its counters, as fault list shows it.
type RuleState struct {
	ID      int    `json:"id"`
	Rule    string `json:"rule"`
	Matched uint64 `json:"matched"`
	Applied uint64 `json:"applied"`
}

// Stats counts what the layer did, by action.
type Stats struct {
	Applied    atomic.Uint64
	Dropped    atomic.Uint64
	Delayed    atomic.Uint64
	Duplicated atomic.Uint64
	Reordered  atomic.Uint64
	Corrupted  atomic.Uint64
	Truncated  atomic.Uint64
	RateQueued atomic.Uint64
	RateDrops  atomic.Uint64
}

// Link is the fault layer. With no rules a packet costs one atomic load.
type Link struct {
	nested.Endpoint
	log     *slog.Logger
	onApply func(Applied)

	active atomic.Bool // any rule installed
	// wireOut: some rule looks at outgoing packets, so connections opened
	// now send wire-sized segments (see SupportedGSO).
	wireOut atomic.Bool
	// checkIn: some rule corrupts or truncates incoming packets, so the
	// stack must verify every checksum itself (see Capabilities).
	checkIn atomic.Bool

	mu     sync.Mutex // rules, rng, held packets, rate state
	rules  []*rule
	nextID int
	rng    *rand.Rand
	held   [2]*heldPkt // reorder, per direction
	closed bool

	stats Stats

	noter atomic.Pointer[Noter] // the layer above, if it takes notes
}

type rule struct {
	*Rule
	id      int
	matched uint64
	applied uint64
	geBad   bool
	holeEnd time.Time // blackhole for=D: when it ends
	nextTx  time.Time // rate: when the queue drains
}

type heldPkt struct {
	proto tcpip.NetworkProtocolNumber
	data  []byte
	note  string
	timer *time.Timer
}

var _ stack.LinkEndpoint = (*Link)(nil)
var _ stack.NetworkDispatcher = (*Link)(nil)

// New wraps lower.
func New(lower stack.LinkEndpoint, opts Options, log *slog.Logger) *Link {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &Link{log: log, onApply: opts.OnApply, rng: rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x9e3779b97f4a7c15))}
	l.Endpoint.Init(lower, l)
	for _, r := range opts.Rules {
		l.Add(r)
	}
	return l
}

// Add installs r and returns its id.
func (l *Link) Add(r *Rule) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.nextID++
	l.rules = append(l.rules, &rule{Rule: r, id: l.nextID})
	l.rulesChanged()
	return l.nextID
}

// Del removes rule id; it reports whether there was one.
func (l *Link) Del(id int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, r := range l.rules {
		if r.id == id {
			l.rules = append(l.rules[:i:i], l.rules[i+1:]...)
			l.rulesChanged()
			return true
		}
	}
	return false
}

// Clear removes every rule.
func (l *Link) Clear() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rules = nil
	l.rulesChanged()
}

// rulesChanged updates what the installed rules ask of the data path.
// l.mu is held.
func (l *Link) rulesChanged() {
	var out, in bool
	for _, r := range l.rules {
		out = out || r.Dir&Out != 0
		in = in || (r.Dir&In != 0 && (r.Action == Corrupt || r.Action == Truncate))
	}
	l.wireOut.Store(out)
	l.checkIn.Store(in)
	l.active.Store(len(l.rules) > 0)
}

// List returns the rules with their counters.
func (l *Link) List() []RuleState {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := []RuleState{}
	for _, r := range l.rules {
		out = append(out, RuleState{ID: r.id, Rule: r.String(), Matched: r.matched, Applied: r.applied})
	}
	return out
}

// Stats returns the layer's counters.
func (l *Link) Stats() *Stats { return &l.stats }

// DeliverNetworkPacket implements stack.NetworkDispatcher: TUN → stack.
func (l *Link) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, p *stack.PacketBuffer) {
	if !l.active.Load() {
		l.Endpoint.DeliverNetworkPacket(proto, p)
		return
	}
	l.handle(In, proto, p)
}

// WritePackets implements stack.LinkWriter: stack → TUN.
func (l *Link) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	if !l.active.Load() {
		return l.Endpoint.WritePackets(pkts)
	}
	n := 0
	for _, p := range pkts.AsSlice() {
		l.handle(Out, p.NetworkProtocolNumber, p)
		n++
	}
	return n, nil
}

// Capabilities implements stack.LinkEndpoint. While a rule corrupts or
// truncates incoming packets the stack must verify every checksum itself
// (a corrupted segment has to fail there), so the layer withdraws the
// device's receive checksum offload and hands the stack only wire segments
// with full checksums (see handle).
func (l *Link) Capabilities() stack.LinkEndpointCapabilities {
	c := l.Endpoint.Capabilities()
	if l.checkIn.Load() {
		c &^= stack.CapabilityRXChecksumOffload
	}
	return c
}

// SupportedGSO implements stack.GSOEndpoint. A connection opened while a
// rule looks at outgoing packets sends wire-sized segments, not
// super-segments: what the trace shows then lines up with what the rules
// count (a lesson's nth=3 is the third segment the stack sent).
// Connections keep what they had when they opened; their super-segments
// are cut for the rules (see handle).
func (l *Link) SupportedGSO() stack.SupportedGSO {
	if l.wireOut.Load() {
		return stack.GSONotSupported
	}
	return l.Endpoint.SupportedGSO()
}

// Close implements stack.LinkEndpoint: timers still holding packets are
// stopped and their packets dropped.
func (l *Link) Close() {
	l.mu.Lock()
	l.closed = true
	for i, h := range l.held {
		if h != nil {
			h.timer.Stop()
			l.held[i] = nil
		}
	}
	l.mu.Unlock()
	l.Endpoint.Close()
}

// Attach implements stack.LinkEndpoint: it remembers whether the layer
// above takes notes (Noter).
func (l *Link) Attach(d stack.NetworkDispatcher) {
	if n, ok := d.(Noter); ok {
		l.noter.Store(&n)
	} else {
		l.noter.Store(nil)
	}
	l.Endpoint.Attach(d)
}

// deliver hands an incoming packet up, with note if the layer above takes
// notes.
func (l *Link) deliver(proto tcpip.NetworkProtocolNumber, p *stack.PacketBuffer, note string) {
	if n := l.noter.Load(); n != nil && note != "" {
		(*n).DeliverNoted(proto, p, note)
		return
	}
	l.Endpoint.DeliverNetworkPacket(proto, p)
}

// pass sends data on in its direction, now; note says what the layer did
// to it (for the layer above, coming in).
func (l *Link) pass(dir Dir, proto tcpip.NetworkProtocolNumber, data []byte, note string) {
	p := pkt.New(data)
	defer p.DecRef()
	if dir == In {
		l.deliver(proto, p, note)
		return
	}
	p.NetworkProtocolNumber = proto
	var list stack.PacketBufferList
	list.PushBack(p)
	l.Endpoint.WritePackets(list)
}

// passOrig sends the original packet on.
func (l *Link) passOrig(dir Dir, proto tcpip.NetworkProtocolNumber, p *stack.PacketBuffer, note string) {
	if dir == In {
		l.deliver(proto, p, note)
		return
	}
	var list stack.PacketBufferList
	list.PushBack(p)
	l.Endpoint.WritePackets(list)
}

// seg is what rules look at.
type seg struct {
	tcp      bool // a well-formed TCP segment (pkt.Decode); other packets match only "any"
	flags    header.TCPFlags
	payload  int
	src, dst netip.AddrPort
	seq, ack uint32
	ipLen    int // IP header length
}

// headBytes is how much of a packet classify needs: the longest IPv4
// header and a TCP header without options.
const headBytes = header.IPv4MaximumHeaderSize + header.TCPMinimumSize

// classify decodes the first bytes b of a packet of size bytes.
func classify(b []byte, size int) seg {
	var s seg
	var d pkt.Parsed
	d.Decode(b)
	if !d.IsTCP() {
		return s
	}
	s.tcp = true
	s.flags = d.Flags
	s.src, s.dst = d.Src, d.Dst
	s.seq, s.ack = d.Seq, d.Ack
	s.ipLen = d.IPHdrLen
	s.payload = max(min(d.IPLen, size)-d.IPHdrLen-d.TCPHdrLen, 0)
	return s
}

func (m Match) matches(s *seg) bool {
	if m == Any {
		return true
	}
	if !s.tcp {
		return false
	}
	f := s.flags
	switch m {
	case Syn:
		return f&header.TCPFlagSyn != 0 && f&header.TCPFlagAck == 0
	case SynAck:
		return f&(header.TCPFlagSyn|header.TCPFlagAck) == header.TCPFlagSyn|header.TCPFlagAck
	case Ack:
		return f&header.TCPFlagAck != 0 && s.payload == 0 && f&(header.TCPFlagSyn|header.TCPFlagFin|header.TCPFlagRst) == 0
	case Data:
		return s.payload > 0
	case Fin:
		return f&header.TCPFlagFin != 0
	case Rst:
		return f&header.TCPFlagRst != 0
	}
	return false
}

// decide runs the rules for a packet: the first rule that matches and
// fires wins. Called with l.mu held.
func (l *Link) decide(dir Dir, s *seg, now time.Time) *rule {
	for _, r := range l.rules {
		if r.Dir&dir == 0 || !r.Match.matches(s) {
			continue
		}
		if r.Port != 0 && s.src.Port() != r.Port && s.dst.Port() != r.Port {
			continue
		}
		r.matched++
		if int(r.matched) <= r.After {
			continue
		}
		if r.Nth > 0 && int(r.matched) != r.Nth {
			continue
		}
		if r.Count > 0 && int(r.applied) >= r.Count {
			continue
		}
		if r.Action == Blackhole && r.For > 0 && !r.holeEnd.IsZero() && now.After(r.holeEnd) {
			continue // the path came back
		}
		if r.GEP > 0 || r.GER > 0 {
			if r.geBad {
				r.geBad = l.rng.Float64() >= r.GER
			} else {
				r.geBad = l.rng.Float64() < r.GEP
			}
			if !r.geBad {
				continue
			}
		}
		if r.Prob < 1 && l.rng.Float64() >= r.Prob {
			continue
		}
		if r.Action == Blackhole && r.For > 0 && r.holeEnd.IsZero() {
			r.holeEnd = now.Add(r.For)
		}
		r.applied++
		return r
	}
	return nil
}

// offloaded reports whether p is not a wire packet: a TCP super-segment or
// one with a partial checksum (see tunlink).
func offloaded(p *stack.PacketBuffer) bool {
	return p.GSOOptions.Type != stack.GSONone && (p.GSOOptions.NeedsCsum || p.GSOOptions.MSS > 0)
}

// handle runs the rules on p. Rules act on wire segments: a super-segment
// from an offloading device or stack is first cut into the segments the
// kernel would have made of it, each with full checksums, and each goes
// through the rules on its own.
func (l *Link) handle(dir Dir, proto tcpip.NetworkProtocolNumber, p *stack.PacketBuffer) {
	if offloaded(p) {
		if !(dir == In && l.checkIn.Load()) && !l.mayMatch(dir, p) {
			// No rule can take any of its segments, and its partial
			// checksum stays trusted: it goes on whole, at full speed.
			l.passWhole(dir, proto, p)
			return
		}
		segs, err := gso.Segment(pkt.Bytes(p), int(p.GSOOptions.MSS))
		if err == nil {
			for _, s := range segs {
				sp := pkt.New(s)
				sp.NetworkProtocolNumber = proto
				l.handleWire(dir, proto, sp, p)
				sp.DecRef()
			}
			return
		}
		l.log.Debug("fault layer: cannot segment an offloaded packet; rules see it whole", "err", err)
	}
	l.handleWire(dir, proto, p, p)
}

// mayMatch reports whether some rule could take the offloaded packet p or,
// for a super-segment, one of its wire segments: those all carry data and
// the ACK flag, the last one p's FIN if any, and p's addresses and ports.
// It changes no rule's counters.
func (l *Link) mayMatch(dir Dir, p *stack.PacketBuffer) bool {
	var hdr [headBytes]byte
	n := pkt.Gather(hdr[:], p)
	s := classify(hdr[:n], p.Size())
	if !s.tcp {
		return true
	}
	super := p.GSOOptions.MSS > 0 && s.payload > int(p.GSOOptions.MSS)
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.rules {
		if r.Dir&dir == 0 || (r.Port != 0 && s.src.Port() != r.Port && s.dst.Port() != r.Port) {
			continue
		}
		if !super && r.Match.matches(&s) {
			return true
		}
		if super && (r.Match == Any || r.Match == Data || (r.Match == Fin && s.flags&header.TCPFlagFin != 0)) {
			return true
		}
	}
	return false
}

// passWhole sends p on untouched, and a packet held back for reordering
// after it (p overtook it).
func (l *Link) passWhole(dir Dir, proto tcpip.NetworkProtocolNumber, p *stack.PacketBuffer) {
	idx := 0
	if dir == Out {
		idx = 1
	}
	l.mu.Lock()
	held := l.held[idx]
	if held != nil {
		l.held[idx] = nil
		held.timer.Stop()
	}
	l.mu.Unlock()
	l.passOrig(dir, proto, p, "")
	if held != nil {
		l.stats.Reordered.Add(1)
		l.pass(dir, held.proto, held.data, held.note)
	}
}

// handleWire runs the rules on one wire packet.
// orig is the packet handle was given (p, or the super-segment p was cut
// from).
func (l *Link) handleWire(dir Dir, proto tcpip.NetworkProtocolNumber, p, orig *stack.PacketBuffer) {
	var hdr [headBytes]byte
	size := p.Size()
	n := pkt.Gather(hdr[:], p)
	s := classify(hdr[:n], size)
	now := time.Now()

	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	r := l.decide(dir, &s, now)
	idx := 0
	if dir == Out {
		idx = 1
	}
	held := l.held[idx]
	if held != nil && (r == nil || r.Action != Reorder) {
		// The packet that overtakes the held one: it goes first, then
		// the held one.
		l.held[idx] = nil
		held.timer.Stop()
	} else {
		held = nil
	}
	var jitter, rateWait time.Duration
	var corruptAt int
	if r != nil {
		switch r.Action {
		case Delay:
			if r.Jitter > 0 {
				jitter = time.Duration(l.rng.Int64N(int64(2*r.Jitter)+1)) - r.Jitter
			}
		case Corrupt:
			// A bit in the TCP header or payload: the IP header stays
			// valid, the TCP checksum does not.
			lo := s.ipLen
			if !s.tcp {
				lo = 0
			}
			corruptAt = lo + l.rng.IntN(max(1, size-lo))
			corruptAt = corruptAt*8 + l.rng.IntN(8)
		case Rate:
			start := r.nextTx
			if start.Before(now) {
				start = now
			}
			tx := time.Duration(float64(size*8) / r.BitRate * float64(time.Second))
			r.nextTx = start.Add(tx)
			rateWait = r.nextTx.Sub(now)
		}
	}
	l.mu.Unlock()

	if r == nil {
		l.passOrig(dir, proto, p, "")
		if held != nil {
			l.stats.Reordered.Add(1)
			l.pass(dir, held.proto, held.data, held.note)
		}
		return
	}
	l.stats.Applied.Add(1)
	a := Applied{Time: now, Dir: dir, RuleID: r.id, Rule: r.String(), Action: r.Action, Src: s.src, Dst: s.dst, Segment: segString(&s)}
	var note string // for the layer above, coming in
	if dir == In && l.noter.Load() != nil {
		note = a.Comment()
	}
	if l.onApply != nil {
		marked := orig
		if dir == In {
			marked = p
		}
		a.Packet = marked
		l.onApply(a)
	}
	switch r.Action {
	case Drop, Blackhole:
		l.stats.Dropped.Add(1)
	case Delay:
		l.stats.Delayed.Add(1)
		l.later(dir, proto, pkt.Bytes(p), r.Delay+jitter, note)
	case Dup:
		l.stats.Duplicated.Add(uint64(r.Copies))
		data := pkt.Bytes(p)
		l.passOrig(dir, proto, p, note)
		for i := 0; i < r.Copies; i++ {
			cp := ""
			if note != "" {
				cp = fmt.Sprintf("copy %d of it, made by rule %d: %s", i+1, r.id, r.String())
			}
			l.pass(dir, proto, append([]byte(nil), data...), cp)
		}
	case Reorder:
		data := pkt.Bytes(p)
		h := &heldPkt{proto: proto, data: data, note: note}
		l.mu.Lock()
		prev := l.held[idx]
		l.held[idx] = h
		// Not overtaken within 100ms: it goes out anyway, late.
		h.timer = time.AfterFunc(100*time.Millisecond, func() {
			l.mu.Lock()
			mine := l.held[idx] == h
			if mine {
				l.held[idx] = nil
			}
			l.mu.Unlock()
			if mine {
				l.pass(dir, h.proto, h.data, h.note)
			}
		})
		l.mu.Unlock()
		if prev != nil {
			prev.timer.Stop()
			l.pass(dir, prev.proto, prev.data, prev.note)
		}
	case Corrupt:
		l.stats.Corrupted.Add(1)
		data := pkt.Bytes(p)
		if byteAt := corruptAt / 8; byteAt < len(data) {
			data[byteAt] ^= 1 << (corruptAt % 8)
		}
		l.pass(dir, proto, data, note)
	case Truncate:
		l.stats.Truncated.Add(1)
		data := pkt.Bytes(p)
		l.pass(dir, proto, data[:min(len(data), r.Bytes)], note)
	case Rate:
		if rateWait > 2*time.Second {
			l.stats.RateDrops.Add(1) // the queue is full: tail drop
			break
		}
		l.stats.RateQueued.Add(1)
		l.later(dir, proto, pkt.Bytes(p), rateWait, note)
	}
	if held != nil {
		l.stats.Reordered.Add(1)
		l.pass(dir, held.proto, held.data, held.note)
	}
}

// later sends data on after d.
func (l *Link) later(dir Dir, proto tcpip.NetworkProtocolNumber, data []byte, d time.Duration, note string) {
	time.AfterFunc(max(d, 0), func() {
		l.mu.Lock()
		closed := l.closed
		l.mu.Unlock()
		if !closed {
			l.pass(dir, proto, data, note)
		}
	})
}

func segString(s *seg) string {
	if !s.tcp {
		return "non-TCP packet"
	}
	out := fmt.Sprintf("Flags [%s], seq %d", pkt.FlagString(s.flags), s.seq)
	if s.payload > 0 {
		out += fmt.Sprintf(":%d", s.seq+uint32(s.payload))
	}
	if s.flags&header.TCPFlagAck != 0 {
		out += fmt.Sprintf(", ack %d", s.ack)
	}
	return out + fmt.Sprintf(", length %d", s.payload)
}
