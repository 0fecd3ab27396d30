package viz

import (
	"fmt"
	"io"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tcp-upper/tcp-upper/netstack/inspect"
)

// Live draws a running server's ladder as its events come (tcp-upper-lab
// ladder --name LAB): one row per segment and per event of the stack, with
// wall-clock time in the margin and each connection numbered (#1, #2, ...
// named when first seen). Segments come from segment events (the control
// socket's events with segments): one arrow each, as a capture's; the
// stack's states and timers at their heights; a segment the fault layer
// dropped ends in a cross. Without segment events it shows the stack's
// events alone: retransmissions as marks, dropped segments (from the fault
// events) as crossed arrows.
//
// A segment our stack sent is held back until its fault event comes,
// Flush, or FlushOlder: the fault layer, below the point where the tracker
// sees it, may still drop it, and its fault event comes after it, possibly
// behind records of the tracker's other sources (the peer's segments, read
// on another goroutine; our next segments, when the stack wrote a batch;
// the stack's events). Every row that came after a held segment, of any
// connection, waits behind it, so the rows are drawn in the order the
// stream brought them: the order they reached the tracker.
type Live struct {
	w       io.Writer
	cv      canvas
	explain bool
	conns   map[inspect.ConnID]*liveConn
	// now is the clock FlushOlder measures a held segment's wait by.
	now func() time.Time
	// segments: segment events come (then the wire's retransmissions are
	// arrows, not marks).
	segments bool
	// queue is what is not drawn yet, in the order it came: empty unless
	// its first item is a segment we sent whose fate is not known yet.
	queue []liveItem
}

// liveItem is a row the live ladder has not drawn yet.
type liveItem struct {
	lc *liveConn
	// seg is a segment (its row is made when it is drawn: a
	// retransmission is marked against the segments drawn before it); nil
	// for row, a state or timer of the stack.
	seg *Segment
	row Row
	// held: seg is one our stack sent whose fault event may still come.
	held bool
	// at is when Add took it (Live.now).
	at time.Time
}

// liveConn is what the live ladder keeps of a connection.
type liveConn struct {
	n    int
	c    Conn        // Addr, Reported and the latest segments (for the explanations)
	us   Side        // the side of the stack whose events these are
	last [2]*Segment // the latest segment from each side
	// named: the line naming the connection is written (before its
	// first row).
	named bool
	// sent is the highest sequence number (relative) each side's drawn
	// segments reached, for the retransmission mark.
	sent     [2]uint32
	sentSome [2]bool
	hurt     map[uint32]*Segment // damaged on the way in (fault events), by absolute seq: its segment comes next
	// sided: the stack's side is settled (the left one if it connected:
	// its first state SYN-SENT, or its first segment a SYN without ACK).
	sided bool
}

// liveKeep is how many segments of a connection the live ladder keeps for
// its explanations (a duplicate ACK looks back for data ahead of it).
const liveKeep = 1024

// NewLive returns a live ladder writing to w (opts.Width, opts.Explain).
func NewLive(w io.Writer, opts LadderOptions) (*Live, error) {
	if opts.Width == 0 {
		opts.Width = 80
	}
	if opts.Width < MinWidth {
		return nil, fmt.Errorf("--width %d is too narrow: the ladder needs at least %d columns", opts.Width, MinWidth)
	}
	return &Live{w: w, cv: canvasOf(len("15:04:05.000000 "), opts.Width), explain: opts.Explain,
		conns: map[inspect.ConnID]*liveConn{}, now: time.Now}, nil
}

// Header writes the lifelines' names.
func (l *Live) Header(server string) {
	h := []rune(fmt.Sprintf("%*s", l.cv.w, ""))
	put(h, max(l.cv.cl-3, 0), "peer")
	put(h, min(l.cv.sl-len(server)/2, l.cv.w-len(server)), server)
	fmt.Fprintln(l.w, line(h))
	fmt.Fprintln(l.w, line(l.cv.blank()))
}

func (l *Live) conn(ev *inspect.Event) *liveConn {
	lc := l.conns[ev.Conn]
	if lc != nil {
		return lc
	}
	lc = &liveConn{n: len(l.conns) + 1}
	lc.c = Conn{WScale: [2]int{-1, -1}}
	lc.us = Server
	lc.c.Reported[Server] = stackOf(ev)
	lc.c.Addr[Client], lc.c.Addr[Server] = ev.Conn.Remote, ev.Conn.Local
	l.conns[ev.Conn] = lc
	return lc
}

// side settles whose lifeline the stack is on: the left one if it
// connected (the client's), else the right one.
func (lc *liveConn) side(ev *inspect.Event) {
	if lc.sided {
		return
	}
	client := false
	switch {
	case ev.Kind == inspect.KindState:
		client = ev.From == inspect.SynSent || ev.To == inspect.SynSent
	case ev.Kind == inspect.KindSegment && ev.Seg != nil:
		client = ev.Seg.Out && ev.Seg.Flags&(header.TCPFlagSyn|header.TCPFlagAck) == header.TCPFlagSyn
	default:
		return
	}
	lc.sided = true
	if client {
		lc.us = Client
		lc.c.Addr[Client], lc.c.Addr[Server] = lc.c.Addr[Server], lc.c.Addr[Client]
		lc.c.Reported[Client], lc.c.Reported[Server] = lc.c.Reported[Server], ""
	}
}

// Add draws the rows of one event, or queues them behind a segment held
// back (see Live).
func (l *Live) Add(ev inspect.Event) {
	lc := l.conn(&ev)
	lc.side(&ev)
	switch ev.Kind {
	case inspect.KindSegment:
		if ev.Seg == nil {
			return
		}
		l.segments = true
		s := l.segment(lc, &ev)
		l.queue = append(l.queue, liveItem{lc: lc, seg: s, held: s.From == lc.us && !s.Dropped, at: l.now()})
	case inspect.KindFault:
		l.fault(lc, ev)
	default:
		r, ok := eventRow(&lc.c, &ev, l.segments)
		if !ok {
			return
		}
		l.queue = append(l.queue, liveItem{lc: lc, row: r})
	}
	l.drain(false, time.Time{})
}

// Flush draws everything held back: call it when the stream has nothing
// more for now.
func (l *Live) Flush() { l.drain(true, time.Time{}) }

// FlushOlder draws what is queued up to the first segment held back for
// less than age: call it now and then while the stream is busy (a
// segment the fault layer let through has no fault event, and Flush
// waits for a quiet stream).
func (l *Live) FlushOlder(age time.Duration) { l.drain(false, l.now().Add(-age)) }

// drain draws the queue from its front up to the first segment still held
// back; it lets held segments go: all if all, else those Add took at
// before or earlier (none if before is zero).
func (l *Live) drain(all bool, before time.Time) {
	for len(l.queue) > 0 {
		it := &l.queue[0]
		if it.held && !all && (before.IsZero() || it.at.After(before)) {
			return
		}
		lc, seg, row := it.lc, it.seg, it.row
		*it = liveItem{} // the array keeps it until append moves the queue
		l.queue = l.queue[1:]
		if seg != nil {
			l.drawSeg(lc, seg)
		} else {
			l.draw(lc, row)
		}
	}
	l.queue = l.queue[:0]
}

// segment turns a segment event into the ladder's segment.
func (l *Live) segment(lc *liveConn, ev *inspect.Event) *Segment {
	g := ev.Seg
	from := lc.us
	if !g.Out {
		from = from.Other()
	}
	s := &Segment{Time: ev.Time, From: from, Flags: g.Flags, Seq: g.Seq, Ack: g.Ack, Len: int(g.Len),
		Win: g.Win, RawWin: g.RawWin, SACK: g.SACK, MSS: int(g.MSS), WScale: int(g.WScale),
		Retransmit: g.Retransmit, Captured: true}
	if r, ok := segmentOf(ev); ok {
		s.AbsSeq, s.AbsAck = r.seq, r.ack
	}
	if !g.Out {
		if d := lc.hurt[s.AbsSeq]; d != nil {
			// The fault layer damaged it on the way in: the stack drops it.
			s.Dropped, s.DropRule, s.Fate = true, d.DropRule, d.Fate
			delete(lc.hurt, s.AbsSeq)
		}
	}
	return s
}

// fault draws what a fault event says: our held segment dropped or
// damaged on the way out, a damaged one coming in marked when it comes,
// one dropped on the way in (never seen by the tracker) from the event
// (queued in its turn).
func (l *Live) fault(lc *liveConn, ev inspect.Event) {
	s := Build(nil, []inspect.Event{ev})
	if len(s.Conns) == 0 || len(s.Conns[0].Segs) == 0 {
		return // not a drop: the segment still arrives
	}
	d := s.Conns[0].Segs[0]
	out := faultOut(&ev)
	d.From = lc.us
	if !out {
		d.From = lc.us.Other()
	}
	if out {
		for i := range l.queue {
			it := &l.queue[i]
			if h := it.seg; it.held && it.lc == lc && h.AbsSeq == d.AbsSeq && h.Flags == d.Flags && h.Len == d.Len {
				h.Dropped, h.DropRule, h.Fate = true, d.DropRule, d.Fate
				it.held = false
				return
			}
		}
	}
	if !out && d.Fate != "dropped" && l.segments {
		if lc.hurt == nil {
			lc.hurt = map[uint32]*Segment{}
		}
		lc.hurt[d.AbsSeq] = &d
		return
	}
	l.queue = append(l.queue, liveItem{lc: lc, seg: &d})
}

// faultOut: the fault event is about a segment going out.
func faultOut(ev *inspect.Event) bool {
	m := faultRE.FindStringSubmatch(ev.Cause)
	return m != nil && m[2] == "out"
}

func (l *Live) drawSeg(lc *liveConn, s *Segment) {
	// A retransmission as Build marks one: sequence space that was on the
	// wire before, counting what the fault layer dropped on the way in
	// (which the tracker never saw).
	if n := s.Consumes(); n > 0 {
		f := s.From
		if lc.sentSome[f] && int32(s.Seq-lc.sent[f]) < 0 {
			s.Retransmit = true
		}
		if end := s.Seq + n; !lc.sentSome[f] || int32(end-lc.sent[f]) > 0 {
			lc.sent[f], lc.sentSome[f] = end, true
		}
	}
	c := &lc.c
	c.Segs = append(c.Segs, *s)
	if len(c.Segs) > 2*liveKeep {
		c.Segs = append(c.Segs[:0], c.Segs[len(c.Segs)-liveKeep:]...)
	}
	s = &c.Segs[len(c.Segs)-1]
	r := segmentRow(c, s, lc.last[s.From])
	// A copy: cutting c.Segs back moves the segments within its array.
	last := *s
	lc.last[s.From] = &last
	l.draw(lc, r)
}

// draw writes a row, after the line naming its connection if this is the
// connection's first.
func (l *Live) draw(lc *liveConn, r Row) {
	if !lc.named {
		lc.named = true
		name := fmt.Sprintf("#%d is %s (peer) and %s (this stack)", lc.n, lc.c.Addr[lc.us.Other()], lc.c.Addr[lc.us])
		indent := max(min(l.cv.margin, l.cv.w-len(name)), 0)
		fmt.Fprintf(l.w, "%*s%s\n", indent, "", truncate(name, l.cv.w))
	}
	writeRow(l.w, l.cv, r, r.Time.Format("15:04:05.000000"), fmt.Sprintf("#%d", lc.n), l.explain)
}
