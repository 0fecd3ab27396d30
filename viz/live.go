package viz

import (
	"fmt"
	"io"

	"github.com/tcp-upper/tcp-upper/netstack/inspect"
)

// Live draws a running server's ladder as its events come (tcp-upper-lab
// ladder --name LAB): one row per event of the stack, with wall-clock
// time in the margin and each connection numbered (#1, #2, ... named when
// first seen). A live view has no capture: it shows the stack's states and
// timers, its retransmissions as marks, and the segments the fault layer
// dropped (from the fault events) as arrows ending in a cross.
type Live struct {
	w       io.Writer
	cv      canvas
	explain bool
	ids     map[inspect.ConnID]int
	client  map[inspect.ConnID]bool // the stack is the connection's client
}

// NewLive returns a live ladder writing to w (opts.Width, opts.Explain).
func NewLive(w io.Writer, opts LadderOptions) (*Live, error) {
	if opts.Width == 0 {
		opts.Width = 80
	}
	if opts.Width < MinWidth {
		return nil, fmt.Errorf("--width %d is too narrow: the ladder needs at least %d columns", opts.Width, MinWidth)
	}
	return &Live{w: w, cv: canvasOf(len("15:04:05.000000 "), opts.Width), explain: opts.Explain,
		ids: map[inspect.ConnID]int{}, client: map[inspect.ConnID]bool{}}, nil
}

// Header writes the lifelines' names.
func (l *Live) Header(server string) {
	h := []rune(fmt.Sprintf("%*s", l.cv.w, ""))
	put(h, max(l.cv.cl-3, 0), "peer")
	put(h, min(l.cv.sl-len(server)/2, l.cv.w-len(server)), server)
	fmt.Fprintln(l.w, line(h))
	fmt.Fprintln(l.w, line(l.cv.blank()))
}

// Add draws the rows of one event.
func (l *Live) Add(ev inspect.Event) {
	n, ok := l.ids[ev.Conn]
	if !ok {
		n = len(l.ids) + 1
		l.ids[ev.Conn] = n
		name := fmt.Sprintf("#%d is %s (peer) and %s (this stack)", n, ev.Conn.Remote, ev.Conn.Local)
		indent := max(min(l.cv.margin, l.cv.w-len(name)), 0)
		fmt.Fprintf(l.w, "%*s%s\n", indent, "", truncate(name, l.cv.w))
	}
	if ev.Kind == inspect.KindState && ev.From == inspect.SynSent {
		l.client[ev.Conn] = true
	}
	s := Build(nil, []inspect.Event{ev})
	if len(s.Conns) == 0 {
		return
	}
	c := s.Conns[0]
	if len(c.Segs) == 0 && l.client[ev.Conn] {
		// An events-only connection whose stack is the client: the
		// stack's rows go on the left.
		c.Stack = Client
		c.Addr[Client], c.Addr[Server] = ev.Conn.Local, ev.Conn.Remote
	}
	for _, r := range Rows(c) {
		writeRow(l.w, l.cv, r, r.Time.Format("15:04:05.000000"), fmt.Sprintf("#%d", n), l.explain)
	}
}
