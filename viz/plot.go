package viz

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tcp-upper/tcp-upper/netstack/inspect"
)

// Figure is one graph.
type Figure struct {
	// Name is the file name without .svg: c1-timeseq-server, c1-cwnd, ...
	Name  string
	Title string
	SVG   string
}

// Figures draws every graph the session has data for: per connection the
// time-sequence graph of each direction that carried data, throughput,
// bytes in flight (the wire's and the stack's), and with the stack's
// events its cwnd/ssthresh and srtt/rttvar/rto.
func Figures(s *Session) []Figure {
	var out []Figure
	for i, c := range s.Conns {
		pre := fmt.Sprintf("c%d-", i+1)
		for _, d := range []Side{Client, Server} {
			if p := timeSeq(s, c, d); p != nil {
				out = append(out, Figure{pre + "timeseq-" + d.String(), p.title, p.SVG()})
			}
		}
		if p := throughput(s, c); p != nil {
			out = append(out, Figure{pre + "throughput", p.title, p.SVG()})
		}
		if p := inflight(s, c); p != nil {
			out = append(out, Figure{pre + "inflight", p.title, p.SVG()})
		}
		if p := cwnd(s, c); p != nil {
			out = append(out, Figure{pre + "cwnd", p.title, p.SVG()})
		}
		if p := rtt(s, c); p != nil {
			out = append(out, Figure{pre + "rtt", p.title, p.SVG()})
		}
	}
	return out
}

// WriteFigures writes each figure to DIR/NAME.svg and returns the paths.
func WriteFigures(dir string, figs []Figure) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var paths []string
	for _, f := range figs {
		p := filepath.Join(dir, f.Name+".svg")
		if err := os.WriteFile(p, []byte(f.SVG), 0o644); err != nil {
			return paths, err
		}
		paths = append(paths, p)
	}
	return paths, nil
}

func hasData(c *Conn, d Side) bool {
	for i := range c.Segs {
		if c.Segs[i].From == d && c.Segs[i].Len > 0 {
			return true
		}
	}
	return false
}

// timeSeq is tcptrace's time-sequence graph of what d sends: each data
// segment a bar from seq to seq+len in d's colour (retransmissions in red
// with an R, drops with a cross), the receiver's ACK line and window line
// (ACK + window) as steps in its colour, its SACK blocks as green bars,
// and each side's state changes its stack reported (stateLines).
func timeSeq(s *Session, c *Conn, d Side) *plot {
	if !hasData(c, d) {
		return nil
	}
	p := newPlot(fmt.Sprintf("time-sequence: %s's data (%s)", d, c.Addr[d]), "time (s)", "relative sequence number")
	p.addLegend("data", dirColour(d), d.String()+" data")
	var acks, rwnd [][2]float64
	for i := range c.Segs {
		g := &c.Segs[i]
		x := s.Rel(g.Time)
		if g.From == d {
			if g.Len == 0 {
				continue
			}
			y0, y1 := float64(g.Seq), float64(g.Seq+uint32(g.Len))
			tip := fmt.Sprintf("%.6fs %s", x, SegmentLabel(g))
			switch {
			case g.Dropped:
				p.vbar("data drop", dirColour(d), x, y0, y1, tip+" ("+g.DropCause()+")")
				p.mark("drop", colDrop, "x", x, y1, g.DropCause())
				if g.ByComment() {
					p.addLegend("drop", colDrop, "dropped (the capture's comment)")
				} else {
					p.addLegend("drop", colDrop, "dropped (fault layer)")
				}
			case g.Retransmit:
				p.vbar("data retx", colRetx, x, y0, y1, tip)
				p.mark("retx", colRetx, "R", x, y1, "retransmission "+SegmentLabel(g))
				p.addLegend("retx", colRetx, "retransmission")
			default:
				p.vbar("data", dirColour(d), x, y0, y1, tip)
			}
			continue
		}
		if g.Dropped || g.Flags&header.TCPFlagAck == 0 {
			continue
		}
		acks = append(acks, [2]float64{x, float64(g.Ack)})
		rwnd = append(rwnd, [2]float64{x, float64(g.Ack) + float64(g.Win)})
		for _, b := range g.SACK {
			p.vbar("sack", colSack, x, float64(b[0]), float64(b[1]), fmt.Sprintf("%.6fs SACK %d:%d", x, b[0], b[1]))
			p.addLegend("sack", colSack, "SACK block")
		}
	}
	// A window far above the data would squash it to the axis: the
	// window line is cut at a quarter above the highest data or ACK.
	top := 0.0
	for i := range c.Segs {
		if g := &c.Segs[i]; g.From == d {
			top = math.Max(top, float64(g.Seq+uint32(g.Len)))
		}
	}
	for _, a := range acks {
		top = math.Max(top, a[1])
	}
	label := d.Other().String() + "'s window (ACK + win)"
	for i := range rwnd {
		if rwnd[i][1] > top*1.25 {
			rwnd[i][1] = top * 1.25
			label = d.Other().String() + "'s window (ACK + win, cut at the top)"
		}
	}
	o := d.Other()
	p.line("ack", dirColour(o), solid, true, acks, o.String()+"'s ACK")
	p.line("rwnd", dirColour(o), dashes, true, rwnd, label)
	stateLines(p, s, c)
	return p
}

// stateLines marks each side's state changes, as its stack reported them,
// with a dotted line in the side's colour (classes "state-client",
// "state-server"; "~" before a state whose time is a bound, Approximate).
func stateLines(p *plot, s *Session, c *Conn) {
	for i := range c.Events {
		ev := &c.Events[i]
		if ev.Kind != inspect.KindState {
			continue
		}
		side := c.SideOf(ev)
		name := ev.To.String()
		if Approximate(ev) {
			name = "~" + name
		}
		x := s.Rel(ev.Time)
		p.vline("state-"+side.String(), dirColour(side), x, name,
			fmt.Sprintf("%.6fs %s: %s -> %s", x, stackName(c, side), ev.From, name))
		p.addLegend("state-"+side.String(), dirColour(side), stackName(c, side)+" states")
	}
}

// throughput is the new data each side sent per interval (tcptrace's
// throughput graph), in KB/s.
func throughput(s *Session, c *Conn) *plot {
	if !hasData(c, Client) && !hasData(c, Server) {
		return nil
	}
	first, last := c.Segs[0].Time, c.Segs[len(c.Segs)-1].Time
	span := last.Sub(first)
	bin := max(span/40, time.Millisecond)
	n := int(span/bin) + 1
	p := newPlot("throughput (new data sent per "+bin.String()+")", "time (s)", "KB/s")
	for _, d := range []Side{Client, Server} {
		if !hasData(c, d) {
			continue
		}
		sum := make([]float64, n)
		var high uint32
		seen := false
		for i := range c.Segs {
			g := &c.Segs[i]
			if g.From != d || g.Len == 0 || g.Retransmit {
				continue
			}
			end := g.Seq + uint32(g.Len)
			if seen && int32(end-high) <= 0 {
				continue
			}
			high, seen = end, true
			sum[int(g.Time.Sub(first)/bin)] += float64(g.Len)
		}
		var pts [][2]float64
		for k, v := range sum {
			pts = append(pts, [2]float64{s.Rel(first.Add(time.Duration(k) * bin)), v / bin.Seconds() / 1e3})
		}
		p.line("tput", dirColour(d), solid, true, pts, d.String()+" → "+d.Other().String())
	}
	return p
}

// inflight is bytes sent and not yet acknowledged: from the wire for each
// direction with data, and the stack's own snd.nxt - snd.una at each of
// its events.
func inflight(s *Session, c *Conn) *plot {
	p := newPlot("bytes in flight", "time (s)", "bytes")
	for _, d := range []Side{Client, Server} {
		if !hasData(c, d) {
			continue
		}
		var sent, acked uint32
		var haveSent, haveAck bool
		var pts [][2]float64
		for i := range c.Segs {
			g := &c.Segs[i]
			if g.From == d {
				if end := g.Seq + g.Consumes(); g.Consumes() > 0 && (!haveSent || int32(end-sent) > 0) {
					sent, haveSent = end, true
				}
			} else if g.Flags&header.TCPFlagAck != 0 && !g.Dropped && (!haveAck || int32(g.Ack-acked) > 0) {
				acked, haveAck = g.Ack, true
			}
			if haveSent && haveAck {
				pts = append(pts, [2]float64{s.Rel(g.Time), float64(int32(sent - acked))})
			}
		}
		p.line("inflight-wire", dirColour(d), dashes, true, pts, d.String()+"'s, seen on the wire")
	}
	for _, side := range stackSides(c) {
		var pts [][2]float64
		for _, ev := range sideEvents(c, side) {
			y := math.NaN()
			if has(&ev.N, inspect.FieldSndUna|inspect.FieldSndNxt) {
				// Absolute or relative, the difference is the same.
				y = float64(int32(ev.N.SndNxt - ev.N.SndUna))
			}
			pts = append(pts, [2]float64{s.Rel(ev.Time), y})
		}
		if hasKnown(pts) {
			p.line(sideClass("inflight-stack", side), stackColour(c, side, colCwnd), solid, true, pts, "snd.nxt - snd.una, "+stackName(c, side))
		}
	}
	if p.Empty() {
		return nil
	}
	return p
}

func hasKnown(pts [][2]float64) bool {
	for _, q := range pts {
		if !math.IsNaN(q[1]) {
			return true
		}
	}
	return false
}

// stackSides are the sides whose stacks reported events, client first.
func stackSides(c *Conn) []Side {
	var out []Side
	for _, side := range []Side{Client, Server} {
		if c.Reported[side] != "" {
			out = append(out, side)
		}
	}
	return out
}

// sideEvents are the events of side's stack that carry its numbers (a
// fault event has none).
func sideEvents(c *Conn, side Side) []*inspect.Event {
	var out []*inspect.Event
	for i := range c.Events {
		ev := &c.Events[i]
		if ev.Kind != inspect.KindFault && c.SideOf(ev) == side {
			out = append(out, ev)
		}
	}
	return out
}

// stackName is a side's name in a legend: "server (netstack)", "client
// (kernel)".
func stackName(c *Conn, side Side) string { return side.String() + " (" + c.Reported[side] + ")" }

// sideClass is an SVG class for side's line: the server's is base, the
// client's base-client.
func sideClass(base string, side Side) string {
	if side == Client {
		return base + "-client"
	}
	return base
}

// stackColour is the colour of side's own line: one when only one side
// reported, else the side's colour.
func stackColour(c *Conn, side Side, one string) string {
	if len(stackSides(c)) == 1 {
		return one
	}
	return dirColour(side)
}

// has reports whether the stack had all the numbers f (a kernel's event
// lacks some: rcv.nxt, rto, rttvar).
func has(n *inspect.Numbers, f inspect.Field) bool { return n.Known && n.Missing&f == 0 }

// cwnd is each stack's congestion window and slow-start threshold at each
// of its events; an unknown number or an unset ssthresh is a gap.
func cwnd(s *Session, c *Conn) *plot {
	p := newPlot("congestion window", "time (s)", "segments")
	for _, side := range stackSides(c) {
		var cw, ss [][2]float64
		for _, ev := range sideEvents(c, side) {
			x := s.Rel(ev.Time)
			a, b := math.NaN(), math.NaN()
			if has(&ev.N, inspect.FieldCwnd) {
				a = float64(ev.N.Cwnd)
			}
			if has(&ev.N, inspect.FieldSsthresh) && ev.N.Ssthresh > 0 && ev.N.Ssthresh < math.MaxInt32 {
				b = float64(ev.N.Ssthresh)
			}
			cw = append(cw, [2]float64{x, a})
			ss = append(ss, [2]float64{x, b})
		}
		if !hasKnown(cw) {
			continue
		}
		p.line(sideClass("cwnd", side), stackColour(c, side, colCwnd), solid, true, cw, "cwnd, "+stackName(c, side))
		if hasKnown(ss) {
			p.line(sideClass("ssthresh", side), stackColour(c, side, colSsth), dashes, true, ss, "ssthresh, "+stackName(c, side))
		}
	}
	if p.Empty() {
		return nil
	}
	p.note = "the stack's, at its events; ssthresh drawn once set"
	if len(stackSides(c)) == 2 {
		p.note = "each stack's, at its events; ssthresh drawn once set"
	}
	return p
}

// rtt is each stack's srtt, rttvar and rto at each of its events (those it
// has: the kernel's tcp_probe reports srtt only), and the
// RTT samples the wire shows (a data segment to the first ACK covering it,
// retransmitted ones left out, as Karn's rule says).
func rtt(s *Session, c *Conn) *plot {
	p := newPlot("round-trip time", "time (s)", "ms (log scale)")
	reported := false // some events carry rttvar (ours do; tcp_probe's do not)
	for _, side := range stackSides(c) {
		var sr, rv, rto [][2]float64
		for _, ev := range sideEvents(c, side) {
			x := s.Rel(ev.Time)
			a, v, b := math.NaN(), math.NaN(), math.NaN()
			if has(&ev.N, inspect.FieldRTO) {
				b = float64(ev.N.RTO) / 1e6
			}
			if ev.N.Known && ev.N.SRTTKnown {
				a = float64(ev.N.SRTT) / 1e6
			}
			if ev.N.RTTVarKnown() {
				v = float64(ev.N.RTTVar) / 1e6
			}
			reported = reported || has(&ev.N, inspect.FieldRTTVar)
			sr = append(sr, [2]float64{x, a})
			rv = append(rv, [2]float64{x, v})
			rto = append(rto, [2]float64{x, b})
		}
		// On a lab's path srtt is microseconds and rto at least 200 ms: a
		// linear axis would flatten srtt and rttvar onto zero.
		p.logY = true
		who := stackName(c, side)
		if hasKnown(sr) {
			p.line(sideClass("srtt", side), stackColour(c, side, colCwnd), solid, true, sr, "srtt, "+who)
		}
		if hasKnown(rv) {
			p.line(sideClass("rttvar", side), stackColour(c, side, colSsth), dashes, true, rv, "rttvar, "+who)
		}
		if hasKnown(rto) {
			p.line(sideClass("rto", side), stackColour(c, side, colRTO), dots, true, rto, "rto, "+who)
		}
	}
	if c.HasEvents() {
		p.note = "the stack's, at its events: rto = srtt + 4 rttvar (at least its minimum), doubled at each expiry"
		if !reported {
			p.note = "rttvar is not in these events"
		}
		for _, side := range stackSides(c) {
			if c.Reported[side] == inspect.StackKernel {
				p.note = "each stack's, at its events: rto = srtt + 4 rttvar, doubled at each expiry; the kernel's have no rttvar or rto"
				break
			}
		}
	}
	for _, d := range []Side{Client, Server} {
		for i := range c.Segs {
			g := &c.Segs[i]
			if g.From != d || g.Len == 0 || g.Retransmit || g.Dropped {
				continue
			}
			end := g.Seq + uint32(g.Len)
			for j := i + 1; j < len(c.Segs); j++ {
				a := &c.Segs[j]
				if a.From == d && a.Retransmit && int32(a.Seq-end) < 0 && int32(a.Seq+uint32(a.Len)-g.Seq) > 0 {
					break // sent again before acknowledged: ambiguous (Karn)
				}
				if a.From != d && a.Flags&header.TCPFlagAck != 0 && !a.Dropped && int32(a.Ack-end) >= 0 {
					ms := a.Time.Sub(g.Time).Seconds() * 1e3
					p.mark("rtt-wire", dirColour(d), "o", s.Rel(a.Time), ms, fmt.Sprintf("%s's segment %d:%d acknowledged after %.3f ms", d, g.Seq, end, ms))
					p.addLegend("rtt-wire", dirColour(d), d.String()+"'s RTT samples (wire)")
					break
				}
			}
		}
	}
	if p.Empty() {
		return nil
	}
	return p
}
