package viz

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/tcp-upper/tcp-upper/internal/pkt"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
)

// LadderOptions shape the ladder.
type LadderOptions struct {
	// Width in columns (0: 80). At least MinWidth.
	Width int
	// Absolute prints wall-clock times in the margin (default: seconds
	// from the start of the session).
	Absolute bool
	// Explain adds, under each state change, timer and notable segment,
	// the rule that caused it.
	Explain bool
}

// MinWidth is the narrowest ladder.
const MinWidth = 64

const stateW = len("ESTABLISHED")

// RowKind says what a ladder row shows.
type RowKind int

// Row kinds.
const (
	RowSegment RowKind = iota // an arrow
	RowState                  // a state change of one side's stack
	RowMark                   // a timer or recovery event of one side's stack
)

// Row is one line of meaning in the ladder (a segment, a state change, a
// mark), in time order: the ladder's structure, which tests check.
type Row struct {
	Kind RowKind
	Time time.Time
	Side Side // the sender (segments) or the stack (states, marks)
	Seg  *Segment
	Ev   *inspect.Event
	// Text is the arrow's label, the new state or the mark.
	Text string
	Rule Rule
	// Explained: Rule is set.
	Explained bool
	// Approx: the stack's event says its time is a bound, not the
	// instant (Approximate); the state is drawn "~STATE".
	Approx bool
}

// Approximate reports whether a state event's cause says its time is a
// bound, not a tracepoint's instant: the kernel's TIME-WAIT mini-socket
// changes, which no tracepoint marks, are seen by sock_diag lookups
// (internal/kevents: "which no tracepoint marks", "... before this time").
func Approximate(ev *inspect.Event) bool {
	return ev.Stack == inspect.StackKernel &&
		(strings.Contains(ev.Cause, "which no tracepoint marks") || strings.Contains(ev.Cause, "before this time"))
}

// Rows returns the ladder's rows for c, in time order (a segment before an
// event at the same instant).
func Rows(c *Conn) []Row {
	var rows []Row
	last := [2]*Segment{}
	// Without a capture (a live view without segments) the stack's and
	// the wire's events are all there is: a retransmission is a mark, not
	// an arrow.
	captured := false
	for i := range c.Segs {
		captured = captured || c.Segs[i].Captured
	}
	si, ei := 0, 0
	for si < len(c.Segs) || ei < len(c.Events) {
		if ei >= len(c.Events) || si < len(c.Segs) && !c.Segs[si].Time.After(c.Events[ei].Time) {
			s := &c.Segs[si]
			si++
			rows = append(rows, segmentRow(c, s, last[s.From]))
			last[s.From] = s
			continue
		}
		ev := &c.Events[ei]
		ei++
		if r, ok := eventRow(c, ev, captured); ok {
			rows = append(rows, r)
		}
	}
	return rows
}

// segmentRow is the row of segment s of c; prev is the latest segment
// before it from the same side.
func segmentRow(c *Conn, s, prev *Segment) Row {
	r := Row{Kind: RowSegment, Time: s.Time, Side: s.From, Seg: s, Text: SegmentLabel(s)}
	r.Rule, r.Explained = ExplainSegment(c, s, prev)
	return r
}

// eventRow is the row of a stack's event ev, if it has one, on the side of
// the stack that reported it: a fault is drawn as its segment's arrow, a
// retransmission our tracker saw on the wire too when there are arrows
// (captured); the kernel's retransmissions, from its tracepoint, are marks.
func eventRow(c *Conn, ev *inspect.Event, captured bool) (Row, bool) {
	r := Row{Time: ev.Time, Side: c.SideOf(ev), Ev: ev}
	switch ev.Kind {
	case inspect.KindState:
		r.Kind, r.Text, r.Approx = RowState, ev.To.String(), Approximate(ev)
	case inspect.KindFault, inspect.KindSegment:
		return Row{}, false // drawn as the arrow itself
	case inspect.KindRetransmit:
		switch {
		case ev.Stack == inspect.StackKernel:
			// The kernel's own report (its tracepoint), not the wire's:
			// a mark beside the arrow.
			r.Kind, r.Text = RowMark, "retransmit (tcp_retransmit_skb)"
		case captured:
			return Row{}, false // drawn as the arrow itself
		default:
			r.Kind, r.Text = RowMark, ev.Cause
		}
	default:
		r.Kind, r.Text = RowMark, markText(ev)
	}
	r.Rule, r.Explained = ExplainEvent(ev)
	return r, true
}

// SegmentLabel is an arrow's label (pkt.AppendLabel): flags, relative
// seq:end(len), ack, win, SYN options, SACK blocks, and "retx" for a
// retransmission: "P. 1:34(33) ack 1 win 64512". A segment known from the
// fault event only has no window or options.
func SegmentLabel(s *Segment) string {
	var b strings.Builder
	pkt.AppendLabel(&b, &pkt.Label{Flags: s.Flags, Seq: s.Seq, Ack: s.Ack, Len: uint32(s.Len),
		NoWin: !s.Captured && s.Dropped, Win: s.Win, MSS: uint16(s.MSS), WScale: s.WScale,
		SACK: s.SACK, Retransmit: s.Retransmit})
	return b.String()
}

func markText(ev *inspect.Event) string {
	n := &ev.N
	switch ev.Kind {
	case inspect.KindRTO:
		if n.Known {
			return fmt.Sprintf("RTO fired (rto=%s)", fmtDur(n.RTO))
		}
		return "RTO fired"
	case inspect.KindTailLossProbe:
		return "TLP: tail loss probe"
	case inspect.KindFastRetransmit:
		if n.Known {
			return fmt.Sprintf("fast retransmit: cwnd %d ssthresh %s", n.Cwnd, ssthresh(n.Ssthresh))
		}
		return "fast retransmit"
	case inspect.KindRecovery:
		if n.Known {
			return fmt.Sprintf("recovery over: cwnd %d", n.Cwnd)
		}
		return "recovery over"
	case inspect.KindDupAck:
		return "3rd duplicate ACK"
	case inspect.KindWindow:
		return ev.Cause
	}
	return string(ev.Kind) + ": " + ev.Cause
}

func ssthresh(v int) string {
	if v <= 0 || v >= 1<<31-1 {
		return "inf"
	}
	return fmt.Sprint(v)
}

func fmtDur(d time.Duration) string {
	if d >= time.Second {
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	return fmt.Sprintf("%dms", d.Milliseconds())
}

// Ladder writes the ladder diagram of every connection in s.
func Ladder(w io.Writer, s *Session, opts LadderOptions) error {
	if opts.Width == 0 {
		opts.Width = 80
	}
	if opts.Width < MinWidth {
		return fmt.Errorf("--width %d is too narrow: the ladder needs at least %d columns", opts.Width, MinWidth)
	}
	if len(s.Conns) == 0 {
		return ErrEmpty
	}
	for i, c := range s.Conns {
		if i > 0 {
			fmt.Fprintln(w)
		}
		writeLadder(w, s, c, opts)
	}
	return nil
}

type canvas struct {
	w      int
	margin int
	cl, sl int // the lifelines' columns
}

func newCanvas(s *Session, opts LadderOptions) canvas {
	// As wide as the latest relative time needs: 0.000123 or 123.456789.
	m := len(fmt.Sprintf("%.6f ", s.Rel(s.End())))
	if opts.Absolute {
		m = len("15:04:05.000000 ")
	}
	return canvasOf(m, opts.Width)
}

func canvasOf(margin, width int) canvas {
	return canvas{w: width, margin: margin, cl: margin + stateW + 1, sl: width - stateW - 2}
}

func (cv canvas) blank() []rune {
	l := []rune(strings.Repeat(" ", cv.w))
	l[cv.cl], l[cv.sl] = '|', '|'
	return l
}

func put(l []rune, col int, s string) {
	for i, r := range []rune(s) {
		if col+i >= 0 && col+i < len(l) {
			l[col+i] = r
		}
	}
}

func line(l []rune) string { return strings.TrimRight(string(l), " ") }

func writeLadder(w io.Writer, s *Session, c *Conn, opts LadderOptions) {
	cv := newCanvas(s, opts)
	// Header: who is where, and whose states we know.
	h := []rune(strings.Repeat(" ", cv.w))
	left := "client " + c.Addr[Client].String()
	right := "server " + c.Addr[Server].String()
	put(h, max(cv.cl-len(left)/2, 0), left)
	put(h, min(cv.sl-len(right)/2, cv.w-len(right)), right)
	fmt.Fprintln(w, line(h))
	writeSources(w, cv, c)
	fmt.Fprintln(w, line(cv.blank()))

	stamp := func(t time.Time) string {
		if opts.Absolute {
			return t.Format("15:04:05.000000")
		}
		return fmt.Sprintf("%*.6f", cv.margin-1, s.Rel(t))
	}
	approx := false
	for _, r := range Rows(c) {
		writeRow(w, cv, r, stamp(r.Time), "", opts.Explain)
		approx = approx || r.Approx
	}
	if approx {
		for _, text := range wrap("~STATE: no tracepoint marks this change (the kernel's TIME-WAIT mini-socket, seen by sock_diag): its event's time is within a few ms of it, and its cause says how close", cv.w-cv.margin) {
			fmt.Fprintln(w, strings.Repeat(" ", cv.margin)+text)
		}
	}
	if note := clockNote(c); note != "" {
		for _, text := range wrap(note, cv.w-cv.margin) {
			fmt.Fprintln(w, strings.Repeat(" ", cv.margin)+text)
		}
	}
}

// writeSources writes whose states and timers are drawn on each side and
// where they come from: "client: the kernel's tracepoints" on the left,
// "server: our stack's events" on the right (on two lines when one is too
// narrow).
func writeSources(w io.Writer, cv canvas, c *Conn) {
	if !c.HasEvents() {
		fmt.Fprintln(w, strings.Repeat(" ", cv.margin)+"no stack events: the wire only")
		return
	}
	var notes [2]string
	for _, side := range []Side{Client, Server} {
		switch c.Reported[side] {
		case inspect.StackKernel:
			notes[side] = side.String() + ": the kernel's tracepoints"
		case "":
			notes[side] = side.String() + ": no events"
		default:
			notes[side] = side.String() + ": our stack's events"
		}
	}
	if cv.margin+len(notes[Client])+3+len(notes[Server]) > cv.w {
		fmt.Fprintln(w, strings.Repeat(" ", cv.margin)+notes[Client])
		fmt.Fprintln(w, strings.Repeat(" ", cv.margin)+notes[Server])
		return
	}
	h := []rune(strings.Repeat(" ", cv.w))
	put(h, cv.margin, notes[Client])
	put(h, cv.w-len(notes[Server]), notes[Server])
	fmt.Fprintln(w, line(h))
}

// writeRow draws one row (with the line above for a long label and the
// explanation under it); tag, if not empty, goes left of the client's
// lifeline (the live ladder's connection number).
func writeRow(w io.Writer, cv canvas, r Row, stamp, tag string, explain bool) {
	inner := cv.sl - cv.cl - 1
	l := cv.blank()
	put(l, 0, stamp)
	if tag != "" && !(r.Kind == RowState && r.Side == Client) {
		put(l, cv.cl-1-len(tag), tag)
	}
	switch r.Kind {
	case RowState:
		text := r.Text
		if r.Approx {
			text = "~" + text
		}
		if r.Side == Client {
			put(l, cv.cl-1-len(text), text)
		} else {
			put(l, cv.sl+2, text)
		}
		if r.Ev.From == inspect.TimeWait && r.Ev.Held > 0 {
			mark := "TIME-WAIT expired (" + fmtDur(r.Ev.Held) + ")"
			if strings.Contains(r.Ev.Cause, "took the port pair") {
				// The kernel's: a new connection ended it early.
				mark = "TIME-WAIT taken over (" + fmtDur(r.Ev.Held) + ")"
			}
			putMark(l, cv, r.Side, mark)
		}
		fmt.Fprintln(w, line(l))
	case RowMark:
		putMark(l, cv, r.Side, "* "+r.Text)
		fmt.Fprintln(w, line(l))
	case RowSegment:
		label := r.Text
		end := inner // arrow length, the head included
		if r.Seg.Dropped {
			end = inner * 2 / 3
		}
		fits := len(label)+4 <= end
		if !fits {
			// The label on a line of its own above the arrow.
			// Above the arrow, from its sender's side.
			a := cv.blank()
			text := truncate(label, inner-3)
			if n := len([]rune(text)); r.Seg.From == Server && n <= inner-2 {
				put(a, cv.sl-1-n, text)
			} else {
				put(a, cv.cl+2, text)
			}
			fmt.Fprintln(w, line(a))
		}
		drawArrow(l, cv, r.Seg.From, end, r.Seg.Dropped)
		if fits {
			lw := len(label) + 2
			start := cv.cl + 1 + (end-lw)/2
			if r.Seg.From == Server {
				start = cv.sl - end + (end-lw)/2
			}
			put(l, start, " "+label+" ")
		}
		if r.Seg.Dropped {
			fate := r.Seg.Fate
			if fate == "" {
				fate = "dropped"
			}
			if r.Seg.From == Client {
				put(l, cv.cl+1+end+1, truncate(fate, inner-end-2))
			} else {
				put(l, cv.sl-end-len(fate)-1, fate)
			}
		}
		fmt.Fprintln(w, line(l))
	}
	if explain && r.Explained {
		for _, text := range wrap(r.Rule.String(), inner-4) {
			e := cv.blank()
			put(e, cv.cl+3, text)
			fmt.Fprintln(w, line(e))
		}
	}
}

// drawArrow draws an arrow of length n (the head included) from side's
// lifeline toward the other; a dropped one ends in an X.
func drawArrow(l []rune, cv canvas, from Side, n int, dropped bool) {
	if from == Client {
		for i := 0; i < n; i++ {
			l[cv.cl+1+i] = '-'
		}
		if dropped {
			l[cv.cl+n] = 'X'
		} else {
			l[cv.cl+n] = '>'
		}
		return
	}
	for i := 0; i < n; i++ {
		l[cv.sl-1-i] = '-'
	}
	if dropped {
		l[cv.sl-n] = 'X'
	} else {
		l[cv.sl-n] = '<'
	}
}

func putMark(l []rune, cv canvas, side Side, text string) {
	inner := cv.sl - cv.cl - 1
	text = truncate(text, inner-2)
	if side == Client {
		put(l, cv.cl+2, text)
	} else {
		put(l, cv.sl-1-len([]rune(text)), text)
	}
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n || n < 1 {
		return s
	}
	return string(r[:n-1]) + "~"
}

// wrap cuts text into lines of at most n columns, at spaces.
func wrap(text string, n int) []string {
	var out []string
	var cur string
	for _, word := range strings.Fields(text) {
		switch {
		case cur == "":
			cur = word
		case len(cur)+1+len(word) <= n:
			cur += " " + word
		default:
			out = append(out, cur)
			cur = word
		}
		for len(cur) > n {
			out = append(out, cur[:n])
			cur = cur[n:]
		}
	}
	if cur != "" {
		out = append(out, cur)
	}
	return out
}
