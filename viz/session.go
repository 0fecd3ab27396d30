// Package viz draws what a capture and the stack's events say about TCP
// connections: the ladder (sequence) diagram in the terminal, SVG graphs
// (time-sequence, congestion window, RTT, throughput), a self-contained
// HTML report per experiment, and the rule behind each state change and
// notable segment (--explain).
//
// The wire comes from a capture (pcap or pcapng, read by netstack/pcap);
// states, timers and numbers come only from the stacks' own events
// (events.jsonl, as the server's --events-format json and the experiments
// write it: ours, and the kernel client's from its tracepoints), each
// drawn on the side whose stack reported it: nothing here infers a state
// from the wire. A number a stack did not have (null in JSON) is left
// out, never drawn as zero.
package viz

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"

	"github.com/tcp-upper/tcp-upper/internal/pkt"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
	"github.com/tcp-upper/tcp-upper/netstack/pcap"
)

// Side is one end of a connection.
type Side int

// The two ends: the client sent the first SYN (or, without one in the
// capture, is the end with the higher port).
const (
	Client Side = 0
	Server Side = 1
)

func (s Side) String() string {
	if s == Client {
		return "client"
	}
	return "server"
}

// Other is the other end.
func (s Side) Other() Side { return 1 - s }

// Segment is one TCP segment of a connection.
type Segment struct {
	Time  time.Time
	From  Side
	Flags header.TCPFlags
	// Seq and Ack are relative to the sender's and the receiver's initial
	// sequence numbers (as tcpdump prints them); AbsSeq and AbsAck are the
	// wire's.
	Seq, Ack       uint32
	AbsSeq, AbsAck uint32
	Len            int
	// Win is the advertised window in bytes (scaled, once both SYNs
	// offered window scaling); RawWin is the header's field.
	Win    uint32
	RawWin uint16
	// SACK blocks, relative to the data sender's ISN (the other end's),
	// and as on the wire.
	SACK, AbsSACK [][2]uint32
	// MSS and WScale are a SYN's options (WScale -1: none).
	MSS, WScale int
	// Retransmit: this sequence space was on the wire before (seen on the
	// wire).
	Retransmit bool
	// Dropped: the fault layer dropped it (DropRule says which rule), or
	// damaged it so that its receiver drops it (Fate "corrupted" or
	// "truncated": the checksum fails), or a pcapng comment on the packet
	// says it was dropped (DropRule is the comment: ByComment). Captured
	// is false for a segment dropped before the capture point (a client's
	// segment dropped on the way in): it is known from the fault event
	// only.
	Dropped  bool
	Captured bool
	DropRule string
	Fate     string // "dropped", "corrupted", "truncated"
	Comments []string
}

// ByComment reports whether the segment is marked dropped by the
// capture's comment rather than by a fault event.
func (s *Segment) ByComment() bool { return s.Dropped && !strings.HasPrefix(s.DropRule, "rule #") }

// DropCause says what dropped the segment: "dropped by rule #1 (out data
// drop count=1)", or the capture's comment.
func (s *Segment) DropCause() string {
	if s.ByComment() {
		return "the capture's comment says it was dropped: \"" + s.DropRule + "\""
	}
	return s.Fate + " by " + s.DropRule
}

// Consumes is how much sequence space the segment takes (data, SYN, FIN).
func (s *Segment) Consumes() uint32 {
	n := uint32(s.Len)
	if s.Flags&header.TCPFlagSyn != 0 {
		n++
	}
	if s.Flags&header.TCPFlagFin != 0 {
		n++
	}
	return n
}

// Conn is one connection: its segments in time order and the stack's
// events about it.
type Conn struct {
	Addr [2]netip.AddrPort // client, server
	ISN  [2]uint32
	// WScale is each side's window scale as negotiated (-1: not in use).
	WScale [2]int
	MSS    [2]int
	Segs   []Segment
	// Events are the stacks' events about this connection, in time
	// order: our stack's and, when the file has them, the kernel's (an
	// experiment records the kernel client's). Each belongs to the side
	// whose stack reported it (SideOf: the event's local address is that
	// side's). Reported names each side's stack (inspect.StackNetstack or
	// StackKernel), empty when that side reported nothing.
	Events   []inspect.Event
	Reported [2]string
}

// SideOf is the side whose stack reported ev: the one at its local
// address.
func (c *Conn) SideOf(ev *inspect.Event) Side {
	if ev.Conn.Local == c.Addr[Client] {
		return Client
	}
	return Server
}

// HasEvents reports whether either side's stack reported events.
func (c *Conn) HasEvents() bool { return c.Reported[Client] != "" || c.Reported[Server] != "" }

// stackOf is the stack that reported ev: ours unless it says the kernel
// (events recorded before they carried a stack are ours).
func stackOf(ev *inspect.Event) string {
	if ev.Stack == inspect.StackKernel {
		return inspect.StackKernel
	}
	return inspect.StackNetstack
}

// Name is "client > server".
func (c *Conn) Name() string { return c.Addr[Client].String() + " > " + c.Addr[Server].String() }

// Session is everything a capture and its events say.
type Session struct {
	// Start is the earliest packet or event: times are shown relative to it.
	Start time.Time
	Conns []*Conn
}

// Load reads an experiment's output directory: capture.pcap (or the only
// *.pcap/*.pcapng there) and events.jsonl when present.
func Load(dir string) (*Session, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%s is not a directory: give an experiment's output directory, or --pcap FILE", dir)
	}
	capPath := filepath.Join(dir, "capture.pcap")
	if _, err := os.Stat(capPath); err != nil {
		var found []string
		for _, pat := range []string{"*.pcap", "*.pcapng"} {
			m, _ := filepath.Glob(filepath.Join(dir, pat))
			found = append(found, m...)
		}
		if len(found) != 1 {
			return nil, fmt.Errorf("no capture.pcap in %s: give --pcap FILE", dir)
		}
		capPath = found[0]
	}
	evPath := filepath.Join(dir, "events.jsonl")
	if _, err := os.Stat(evPath); err != nil {
		evPath = ""
	}
	return LoadFiles(capPath, evPath)
}

// LoadFiles reads a capture and, if eventsPath is not empty, the stack's
// events (JSON lines).
func LoadFiles(pcapPath, eventsPath string) (*Session, error) {
	pkts, err := pcap.ReadFile(pcapPath)
	if err != nil {
		return nil, err
	}
	var evs []inspect.Event
	if eventsPath != "" {
		if evs, err = ReadEvents(eventsPath); err != nil {
			return nil, err
		}
	}
	return Build(pkts, evs), nil
}

// ReadEvents reads events as the server's --events-format json writes them.
func ReadEvents(path string) ([]inspect.Event, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var evs []inspect.Event
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var ev inspect.Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			return nil, fmt.Errorf("%s:%d: not an event (want --events-format json lines): %v", path, n, err)
		}
		evs = append(evs, ev)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return evs, nil
}

type connKey struct{ a, b netip.AddrPort }

func keyOf(x, y netip.AddrPort) connKey {
	if x.Compare(y) > 0 {
		x, y = y, x
	}
	return connKey{x, y}
}

type rawSeg struct {
	t        time.Time
	src, dst netip.AddrPort
	flags    header.TCPFlags
	seq, ack uint32
	len      int
	win      uint16
	sack     []header.SACKBlock
	mss, ws  int
	captured bool
	dropped  bool
	rule     string
	fate     string
	comments []string
}

// faultRE reads the segment out of a fault event's cause (netstack's
// noteFault): "injected drop, out rule #1 (out data drop count=1):
// 10.0.2.2:9999 > 10.0.1.2:49004: Flags [P.], seq 1:34, ack 5, length 33".
var faultRE = regexp.MustCompile(`^injected (\S+), (in|out) rule #(\d+) \((.*)\): (\S+) > (\S+): Flags \[([^\]]*)\], seq (\d+)(?::\d+)?(?:, ack (\d+))?, length (\d+)`)

// decode takes a TCP segment out of an IPv4 packet.
func decode(p *pcap.Packet) (rawSeg, bool) {
	b := p.Data
	if len(b) < header.IPv4MinimumSize || header.IPVersion(b) != header.IPv4Version {
		return rawSeg{}, false
	}
	ip := header.IPv4(b)
	hl := int(ip.HeaderLength())
	if hl < header.IPv4MinimumSize || hl > len(b) || ip.TransportProtocol() != header.TCPProtocolNumber || ip.FragmentOffset() != 0 {
		return rawSeg{}, false
	}
	total := int(ip.TotalLength())
	if total == 0 { // TSO on the capture host: the length is the capture's
		total = p.OrigLen
	}
	seg := b[hl:]
	if len(seg) < header.TCPMinimumSize {
		return rawSeg{}, false
	}
	t := header.TCP(seg)
	off := int(t.DataOffset())
	if off < header.TCPMinimumSize || off > len(seg) {
		return rawSeg{}, false
	}
	r := rawSeg{
		t:     p.Time,
		src:   netip.AddrPortFrom(netip.AddrFrom4(ip.SourceAddress().As4()), t.SourcePort()),
		dst:   netip.AddrPortFrom(netip.AddrFrom4(ip.DestinationAddress().As4()), t.DestinationPort()),
		flags: t.Flags(), seq: t.SequenceNumber(), ack: t.AckNumber(),
		len: max(total-hl-off, 0), win: t.WindowSize(), mss: -1, ws: -1,
		captured: true, comments: p.Comments,
	}
	opts := seg[header.TCPMinimumSize:off]
	if r.flags&header.TCPFlagSyn != 0 {
		so := header.ParseSynOptions(opts, r.flags&header.TCPFlagAck != 0)
		r.mss, r.ws = int(so.MSS), so.WS
	} else {
		r.sack = header.ParseTCPOptions(opts).SACKBlocks
	}
	for _, c := range p.Comments {
		if strings.Contains(strings.ToLower(c), "drop") {
			r.dropped, r.rule, r.fate = true, c, "dropped"
		}
	}
	return r, true
}

// Build puts packets and events together into connections: one per
// 4-tuple in the capture, in order of appearance, then one per 4-tuple
// only the events know (a live view has no capture), with the stack's
// events and the segments its fault layer dropped.
func Build(pkts []pcap.Packet, evs []inspect.Event) *Session {
	s := &Session{}
	byKey := map[connKey][]rawSeg{}
	var order []connKey
	add := func(r rawSeg) {
		k := keyOf(r.src, r.dst)
		if _, ok := byKey[k]; !ok {
			order = append(order, k)
		}
		byKey[k] = append(byKey[k], r)
	}
	for i := range pkts {
		if r, ok := decode(&pkts[i]); ok {
			add(r)
		}
	}
	// The tracker's segment events (a live view's) are the wire as the
	// capture would show it: for a connection the capture does not have
	// (one it has would get each segment twice).
	inCapture := make(map[connKey]bool, len(order))
	for _, k := range order {
		inCapture[k] = true
	}
	for i := range evs {
		if r, ok := segmentOf(&evs[i]); ok && !inCapture[keyOf(r.src, r.dst)] {
			add(r)
		}
	}
	// Fault events: mark the captured segment the fault layer dropped
	// (our stack's own, captured before the fault layer), or add the one
	// it dropped before the capture point (the peer's, on the way in).
	evByKey := map[connKey][]inspect.Event{}
	for _, ev := range evs {
		if ev.Kind == inspect.KindSegment {
			continue
		}
		k := keyOf(ev.Conn.Local, ev.Conn.Remote)
		evByKey[k] = append(evByKey[k], ev)
		if ev.Kind != inspect.KindFault {
			continue
		}
		m := faultRE.FindStringSubmatch(ev.Cause)
		if m == nil {
			continue
		}
		var fate string
		switch m[1] {
		case "drop", "blackhole":
			fate = "dropped"
		case "corrupt":
			fate = "corrupted"
		case "truncate":
			fate = "truncated"
		default:
			continue // delayed, duplicated, reordered: it still arrives
		}
		src, err1 := netip.ParseAddrPort(m[5])
		dst, err2 := netip.ParseAddrPort(m[6])
		if err1 != nil || err2 != nil {
			continue
		}
		seq, _ := strconv.ParseUint(m[8], 10, 32)
		ack, _ := strconv.ParseUint(m[9], 10, 32)
		n, _ := strconv.Atoi(m[10])
		flags := pkt.ParseFlags(m[7])
		rule := "rule #" + m[3] + " (" + m[4] + ")"
		segs := byKey[keyOf(src, dst)]
		// The captured segment it is: on the way out the capture sees a
		// segment before the fault layer, so the latest such segment
		// before the event (a retransmission comes after); on the way in
		// a dropped one only if a capture's comment marks it, a damaged
		// one just after the event (its damaged fields may differ).
		matched := false
		best := -1
		for i := len(segs) - 1; i >= 0; i-- {
			r := &segs[i]
			byComment := r.dropped && !strings.HasPrefix(r.rule, "rule #")
			same := r.captured && r.src == src && r.seq == uint32(seq) && r.flags == flags && r.len == n
			switch {
			case m[2] == "out" && same && !r.t.After(ev.Time) && (!r.dropped || byComment),
				m[2] == "in" && same && byComment:
				best = i
			case m[2] == "in" && fate != "dropped" && r.captured && r.src == src && !r.dropped &&
				(r.seq == uint32(seq) || r.len == n) && r.t.Sub(ev.Time).Abs() < 5*time.Millisecond:
				if best < 0 || r.t.Sub(ev.Time).Abs() < segs[best].t.Sub(ev.Time).Abs() {
					best = i
				}
				continue
			default:
				continue
			}
			break
		}
		if best >= 0 {
			r := &segs[best]
			r.dropped, r.rule, r.fate, matched = true, rule, fate, true
		}
		if !matched {
			add(rawSeg{t: ev.Time, src: src, dst: dst, flags: flags, seq: uint32(seq), ack: uint32(ack), len: n, mss: -1, ws: -1, dropped: true, rule: rule, fate: fate})
		}
	}
	for _, evs := range evByKey {
		sort.SliceStable(evs, func(i, j int) bool { return evs[i].Time.Before(evs[j].Time) })
	}
	for _, k := range order {
		c := buildConn(byKey[k])
		if evs := evByKey[k]; len(evs) > 0 {
			c.setEvents(evs)
			// The stack's ISNs name the sides' sequence spaces when the
			// capture has no SYN.
			fixISN(c, evs)
		}
		s.Conns = append(s.Conns, c)
	}
	// Connections the events know and the capture does not (a live view
	// has no capture): the stack's own story, without arrows.
	var evOnly []connKey
	for k := range evByKey {
		if _, ok := byKey[k]; !ok {
			evOnly = append(evOnly, k)
		}
	}
	sort.Slice(evOnly, func(i, j int) bool {
		return evByKey[evOnly[i]][0].Time.Before(evByKey[evOnly[j]][0].Time)
	})
	for _, k := range evOnly {
		evs := evByKey[k]
		// The end that connected (SYN-SENT) is the client; without one,
		// the first event's stack is taken for the server.
		c := &Conn{WScale: [2]int{-1, -1}}
		c.Addr[Server], c.Addr[Client] = evs[0].Conn.Local, evs[0].Conn.Remote
		for _, ev := range evs {
			if ev.Kind == inspect.KindState && (ev.From == inspect.SynSent || ev.To == inspect.SynSent) {
				c.Addr[Client], c.Addr[Server] = ev.Conn.Local, ev.Conn.Remote
				break
			}
		}
		c.setEvents(evs)
		s.Conns = append(s.Conns, c)
	}
	for _, c := range s.Conns {
		if t := firstTime(c); !t.IsZero() && (s.Start.IsZero() || t.Before(s.Start)) {
			s.Start = t
		}
	}
	return s
}

// segmentOf is a segment event as the capture would have shown the
// segment (the tracker sees packets where the capture does).
func segmentOf(ev *inspect.Event) (rawSeg, bool) {
	g := ev.Seg
	if ev.Kind != inspect.KindSegment || g == nil {
		return rawSeg{}, false
	}
	src, dst := ev.Conn.Remote, ev.Conn.Local
	sndISN, rcvISN := ev.IRS, ev.ISS
	if g.Out {
		src, dst = dst, src
		sndISN, rcvISN = rcvISN, sndISN
	}
	if g.Absolute {
		sndISN, rcvISN = 0, 0
	}
	r := rawSeg{t: ev.Time, src: src, dst: dst, flags: g.Flags, seq: g.Seq + sndISN, len: int(g.Len), win: g.RawWin,
		mss: int(g.MSS), ws: int(g.WScale), captured: true}
	if g.Flags&header.TCPFlagAck != 0 {
		r.ack = g.Ack + rcvISN
	}
	if g.Flags&header.TCPFlagSyn == 0 {
		r.mss, r.ws = -1, -1
	}
	for _, b := range g.SACK {
		r.sack = append(r.sack, header.SACKBlock{Start: seqnum.Value(b[0] + rcvISN), End: seqnum.Value(b[1] + rcvISN)})
	}
	return r, true
}

func firstTime(c *Conn) time.Time {
	var t time.Time
	if len(c.Segs) > 0 {
		t = c.Segs[0].Time
	}
	if len(c.Events) > 0 && (t.IsZero() || c.Events[0].Time.Before(t)) {
		t = c.Events[0].Time
	}
	return t
}

// setEvents gives c its stacks' events (in time order) and notes which
// sides reported them.
func (c *Conn) setEvents(evs []inspect.Event) {
	c.Events = evs
	for i := range evs {
		c.Reported[c.SideOf(&evs[i])] = stackOf(&evs[i])
	}
}

// fixISN recomputes relative numbers when the capture had no SYN of a
// side but a stack's events know both ISNs.
func fixISN(c *Conn, evs []inspect.Event) {
	for i := range evs {
		ev := &evs[i]
		if !ev.ISSKnown || !ev.IRSKnown {
			continue
		}
		isn := c.ISN
		side := c.SideOf(ev)
		isn[side], isn[side.Other()] = ev.ISS, ev.IRS
		if isn != c.ISN && !c.hasSYN() {
			c.ISN = isn
			c.relativize()
		}
		return
	}
}

func (c *Conn) hasSYN() bool {
	for i := range c.Segs {
		if c.Segs[i].Flags&header.TCPFlagSyn != 0 {
			return true
		}
	}
	return false
}

func buildConn(raw []rawSeg) *Conn {
	sort.SliceStable(raw, func(i, j int) bool { return raw[i].t.Before(raw[j].t) })
	c := &Conn{WScale: [2]int{-1, -1}}
	// The client sent the first SYN without ACK; else the higher port.
	client := -1
	for i := range raw {
		if raw[i].flags&(header.TCPFlagSyn|header.TCPFlagAck) == header.TCPFlagSyn {
			client = i
			break
		}
	}
	if client >= 0 {
		c.Addr = [2]netip.AddrPort{raw[client].src, raw[client].dst}
	} else if r := raw[0]; r.src.Port() > r.dst.Port() {
		c.Addr = [2]netip.AddrPort{r.src, r.dst}
	} else {
		c.Addr = [2]netip.AddrPort{r.dst, r.src}
	}
	var haveISN [2]bool
	var ws [2]int
	ws[0], ws[1] = -1, -1
	for i := range raw {
		r := &raw[i]
		from := Client
		if r.src == c.Addr[Server] {
			from = Server
		}
		if r.flags&header.TCPFlagSyn != 0 {
			if !haveISN[from] {
				c.ISN[from], haveISN[from] = r.seq, true
				ws[from], c.MSS[from] = r.ws, r.mss
			}
		}
		c.Segs = append(c.Segs, Segment{
			Time: r.t, From: from, Flags: r.flags, AbsSeq: r.seq, AbsAck: r.ack, Len: r.len, RawWin: r.win,
			MSS: r.mss, WScale: r.ws, Dropped: r.dropped, Captured: r.captured, DropRule: r.rule, Fate: r.fate, Comments: r.comments,
		})
		for _, b := range r.sack {
			c.Segs[len(c.Segs)-1].AbsSACK = append(c.Segs[len(c.Segs)-1].AbsSACK, [2]uint32{uint32(b.Start), uint32(b.End)})
		}
	}
	// Without a SYN, the first sequence number a side sent (tcpdump's
	// choice) stands for its ISN.
	for side := range 2 {
		if haveISN[side] {
			continue
		}
		for i := range c.Segs {
			if s := &c.Segs[i]; s.From == Side(side) {
				c.ISN[side] = s.AbsSeq - 1
				break
			}
		}
	}
	if ws[0] >= 0 && ws[1] >= 0 {
		c.WScale = ws
	}
	c.relativize()
	return c
}

// relativize computes relative numbers, scaled windows and the
// retransmission marks from the absolute ones.
func (c *Conn) relativize() {
	var sndMax [2]uint32
	var seen [2]bool
	for i := range c.Segs {
		s := &c.Segs[i]
		f, o := s.From, s.From.Other()
		s.Seq = s.AbsSeq - c.ISN[f]
		s.Ack = 0
		if s.Flags&header.TCPFlagAck != 0 {
			s.Ack = s.AbsAck - c.ISN[o]
		}
		s.Win = uint32(s.RawWin)
		if s.Flags&header.TCPFlagSyn == 0 && c.WScale[f] > 0 {
			s.Win <<= c.WScale[f]
		}
		s.SACK = s.SACK[:0]
		for _, b := range s.AbsSACK {
			s.SACK = append(s.SACK, [2]uint32{b[0] - c.ISN[o], b[1] - c.ISN[o]})
		}
		s.Retransmit = false
		if n := s.Consumes(); n > 0 {
			end := s.Seq + n
			if seen[f] && int32(s.Seq-sndMax[f]) < 0 {
				s.Retransmit = true
			}
			if !seen[f] || int32(end-sndMax[f]) > 0 {
				sndMax[f], seen[f] = end, true
			}
		}
	}
}

// End is the latest packet or event.
func (s *Session) End() time.Time {
	end := s.Start
	for _, c := range s.Conns {
		if n := len(c.Segs); n > 0 && c.Segs[n-1].Time.After(end) {
			end = c.Segs[n-1].Time
		}
		if n := len(c.Events); n > 0 && c.Events[n-1].Time.After(end) {
			end = c.Events[n-1].Time
		}
	}
	return end
}

// Rel is a time relative to the session's start, in seconds.
func (s *Session) Rel(t time.Time) float64 { return t.Sub(s.Start).Seconds() }

// ErrEmpty says a capture holds no TCP.
var ErrEmpty = errors.New("no TCP segments in the capture")
