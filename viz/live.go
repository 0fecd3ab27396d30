package viz

import (
	"fmt"
	"io"
	"sort"
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
// A segment our stack sent is held back until the next record of its
// connection, Flush, or FlushOlder: the fault layer, below the point where
// the tracker sees it, may still drop it, and its fault event comes after
// it.
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
}

// liveConn is what the live ladder keeps of a connection.
type liveConn struct {
	n    int
	c    Conn        // Addr, Reported and the latest segments (for the explanations)
	us   Side        // the side of the stack whose events these are
	last [2]*Segment // the latest segment from each side
	held *Segment    // a segment we sent, not drawn yet
	// heldAt is when Add took held (Live.now).
	heldAt time.Time
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
	name := fmt.Sprintf("#%d is %s (peer) and %s (this stack)", lc.n, ev.Conn.Remote, ev.Conn.Local)
	indent := max(min(l.cv.margin, l.cv.w-len(name)), 0)
	fmt.Fprintf(l.w, "%*s%s\n", indent, "", truncate(name, l.cv.w))
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

// Add draws the rows of one event (or holds a segment we sent; see Live).
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
		l.release(lc)
		if s.From == lc.us && !s.Dropped {
			lc.held, lc.heldAt = s, l.now()
			return
		}
		l.drawSeg(lc, s)
	case inspect.KindFault:
		l.fault(lc, ev)
	default:
		l.release(lc)
		if r, ok := eventRow(&lc.c, &ev, l.segments); ok {
			l.draw(lc, r)
		}
	}
}

// Flush draws the segments held back, oldest first: call it when the
// stream has nothing more for now.
func (l *Live) Flush() { l.flush(time.Time{}) }

// FlushOlder draws the segments held back for age or longer, oldest first:
// call it now and then while the stream is busy (the next record of an
// idle connection may never come, and Flush waits for a quiet stream).
func (l *Live) FlushOlder(age time.Duration) { l.flush(l.now().Add(-age)) }

// flush draws the segments held back since before (all if zero).
func (l *Live) flush(before time.Time) {
	var held []*liveConn
	for _, lc := range l.conns {
		if lc.held != nil && (before.IsZero() || !lc.heldAt.After(before)) {
			held = append(held, lc)
		}
	}
	sort.Slice(held, func(i, j int) bool { return held[i].held.Time.Before(held[j].held.Time) })
	for _, lc := range held {
		l.release(lc)
	}
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
// one dropped on the way in (never seen by the tracker) from the event.
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
	if h := lc.held; out && h != nil && h.AbsSeq == d.AbsSeq && h.Flags == d.Flags && h.Len == d.Len {
		h.Dropped, h.DropRule, h.Fate = true, d.DropRule, d.Fate
		l.release(lc)
		return
	}
	if !out && d.Fate != "dropped" && l.segments {
		if lc.hurt == nil {
			lc.hurt = map[uint32]*Segment{}
		}
		lc.hurt[d.AbsSeq] = &d
		return
	}
	l.release(lc)
	l.drawSeg(lc, &d)
}

// faultOut: the fault event is about a segment going out.
func faultOut(ev *inspect.Event) bool {
	m := faultRE.FindStringSubmatch(ev.Cause)
	return m != nil && m[2] == "out"
}

// release draws the segment held back, if any.
func (l *Live) release(lc *liveConn) {
	if s := lc.held; s != nil {
		lc.held = nil
		l.drawSeg(lc, s)
	}
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

func (l *Live) draw(lc *liveConn, r Row) {
	writeRow(l.w, l.cv, r, r.Time.Format("15:04:05.000000"), fmt.Sprintf("#%d", lc.n), l.explain)
}
