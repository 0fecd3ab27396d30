package viz

import (
	"fmt"
	"html"
	"math"
	"strconv"
	"strings"
)

// A chart is one hand-written SVG graph: axes with ticks, a legend, and
// elements that carry a class naming what they show (data, retx, drop,
// ack, rwnd, sack, cwnd, ...), so tests can check a graph's structure and
// a stylesheet could restyle it. Every mark has a <title>: the tooltip.
type chart struct {
	title, xlabel, ylabel string
	w, h                  float64
	x0, x1, y0, y1        float64
	body                  strings.Builder
	legend                []legendItem
	note                  string
	// logY draws the y axis in decades (the round-trip graph: an srtt of
	// microseconds under an rto of seconds). Values at or below 0 sit on
	// the axis.
	logY bool
	// lastLabel is where the latest labelled vline is (in pixels), once
	// one is (labelled), while drawing.
	labelled  bool
	lastLabel float64
}

// A legendItem is a swatch and its label: a line's swatch is a stroke
// drawn in its dash pattern, any other a square.
type legendItem struct {
	class, colour, label string
	line                 bool
	dash                 string
}

// Line dash patterns (stroke-dasharray): a stack's lines in one graph
// share its colour and differ in these.
const (
	solid  = ""
	dashes = "5,3"
	dots   = "1.5,2.5"
)

const (
	padL, padR, padT, padB = 70.0, 20.0, 40.0, 74.0
)

// Colours: one per direction, the stack's numbers in their own.
const (
	colClient = "#1f77b4" // what the client sends
	colServer = "#d95f02" // what the server sends
	colRetx   = "#d62728"
	colDrop   = "#000000"
	colSack   = "#2ca02c"
	colCwnd   = "#1f77b4"
	colSsth   = "#9467bd"
	colRTO    = "#d62728"
	colWire   = "#7f7f7f"
)

func dirColour(s Side) string {
	if s == Client {
		return colClient
	}
	return colServer
}

func newChart(title, xlabel, ylabel string) *chart {
	return &chart{title: title, xlabel: xlabel, ylabel: ylabel, w: 720, h: 360,
		x0: math.Inf(1), x1: math.Inf(-1), y0: math.Inf(1), y1: math.Inf(-1)}
}

// extend grows the axes' ranges to hold (x, y).
func (c *chart) extend(x, y float64) {
	if math.IsNaN(x) || math.IsNaN(y) {
		return
	}
	c.x0, c.x1 = math.Min(c.x0, x), math.Max(c.x1, x)
	if c.logY && y <= 0 {
		return
	}
	c.y0, c.y1 = math.Min(c.y0, y), math.Max(c.y1, y)
}

func (c *chart) px(x float64) float64 {
	return padL + (x-c.x0)/(c.x1-c.x0)*(c.w-padL-padR)
}

func (c *chart) py(y float64) float64 {
	if c.logY {
		if y <= c.y0 {
			return c.h - padB
		}
		return c.h - padB - math.Log10(y/c.y0)/math.Log10(c.y1/c.y0)*(c.h-padT-padB)
	}
	return c.h - padB - (y-c.y0)/(c.y1-c.y0)*(c.h-padT-padB)
}

// addLegend adds a legend item unless one with the same class and label is
// there (a class drawn for both directions, each with its label, gets
// two).
func (c *chart) addLegend(class, colour, label string) {
	c.addLegendItem(legendItem{class: class, colour: colour, label: label})
}

func (c *chart) addLegendItem(it legendItem) {
	for _, l := range c.legend {
		if l.class == it.class && l.label == it.label {
			return
		}
	}
	c.legend = append(c.legend, it)
}

// The elements are queued as closures: they need the final ranges.
type element func(c *chart, b *strings.Builder)

type plot struct {
	*chart
	els []element
}

func newPlot(title, xlabel, ylabel string) *plot {
	return &plot{chart: newChart(title, xlabel, ylabel)}
}

// Empty reports whether nothing was drawn.
func (p *plot) Empty() bool { return len(p.els) == 0 }

// vbar is a vertical bar at x from y0 to y1 (a segment's sequence range).
func (p *plot) vbar(class, colour string, x, y0, y1 float64, tip string) {
	p.extend(x, y0)
	p.extend(x, y1)
	p.els = append(p.els, func(c *chart, b *strings.Builder) {
		fmt.Fprintf(b, `<line class="%s" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"><title>%s</title></line>`+"\n",
			class, c.px(x), c.py(y0), c.px(x), c.py(y1), colour, html.EscapeString(tip))
	})
}

// mark is a symbol at (x, y): "x" a cross, "o" a circle, "R" a letter.
func (p *plot) mark(class, colour, shape string, x, y float64, tip string) {
	p.extend(x, y)
	p.els = append(p.els, func(c *chart, b *strings.Builder) {
		X, Y := c.px(x), c.py(y)
		t := html.EscapeString(tip)
		switch shape {
		case "x":
			fmt.Fprintf(b, `<path class="%s" d="M%.1f %.1fL%.1f %.1fM%.1f %.1fL%.1f %.1f" stroke="%s" stroke-width="2.5"><title>%s</title></path>`+"\n",
				class, X-5, Y-5, X+5, Y+5, X-5, Y+5, X+5, Y-5, colour, t)
		case "o":
			fmt.Fprintf(b, `<circle class="%s" cx="%.1f" cy="%.1f" r="2.5" fill="%s"><title>%s</title></circle>`+"\n", class, X, Y, colour, t)
		default:
			fmt.Fprintf(b, `<text class="%s" x="%.1f" y="%.1f" fill="%s" font-size="11" font-weight="bold" text-anchor="middle">%s<title>%s</title></text>`+"\n",
				class, X, Y-4, colour, html.EscapeString(shape), t)
		}
	})
}

// vline is a dotted vertical line at x across the plot (an instant: a
// state change), with label written down from the top beside it unless
// the previous vline was labelled within 12 pixels (a cluster shows its
// first label; every line has its tooltip, tip).
func (p *plot) vline(class, colour string, x float64, label, tip string) {
	if math.IsNaN(x) {
		return
	}
	p.x0, p.x1 = math.Min(p.x0, x), math.Max(p.x1, x)
	p.els = append(p.els, func(c *chart, b *strings.Builder) {
		X := c.px(x)
		T, B := padT, c.h-padB
		fmt.Fprintf(b, `<line class="%s" x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="%s" stroke-width="1" stroke-dasharray="1,3"><title>%s</title></line>`+"\n",
			class, X, T, X, B, colour, html.EscapeString(tip))
		if c.labelled && X-c.lastLabel < 12 {
			return
		}
		c.labelled, c.lastLabel = true, X
		fmt.Fprintf(b, `<text class="%s label" transform="translate(%.1f %.0f) rotate(90)" fill="%s" font-size="9">%s<title>%s</title></text>`+"\n",
			class, X+2, T+2, colour, html.EscapeString(label), html.EscapeString(tip))
	})
}

// line draws a polyline through pts; a NaN y (a number the stack did not
// have) breaks it. step draws it as a staircase (a value holds until the
// next).
func (p *plot) line(class, colour, dash string, step bool, pts [][2]float64, label string) {
	if len(pts) == 0 {
		return
	}
	for _, q := range pts {
		p.extend(q[0], q[1])
	}
	p.addLegendItem(legendItem{class: class, colour: colour, label: label, line: true, dash: dash})
	p.els = append(p.els, func(c *chart, b *strings.Builder) {
		var runs []string
		var cur []string
		flush := func() {
			if len(cur) > 0 {
				runs = append(runs, strings.Join(cur, " "))
			}
			cur = nil
		}
		prevY := math.NaN()
		for _, q := range pts {
			if math.IsNaN(q[1]) {
				flush()
				prevY = math.NaN()
				continue
			}
			if step && !math.IsNaN(prevY) {
				cur = append(cur, fmt.Sprintf("%.1f,%.1f", c.px(q[0]), c.py(prevY)))
			}
			cur = append(cur, fmt.Sprintf("%.1f,%.1f", c.px(q[0]), c.py(q[1])))
			prevY = q[1]
		}
		flush()
		for _, r := range runs {
			fmt.Fprintf(b, `<polyline class="%s" points="%s" fill="none" stroke="%s" stroke-width="1.5"%s><title>%s</title></polyline>`+"\n",
				class, r, colour, dashAttr(dash), html.EscapeString(label))
		}
	})
}

// dashAttr is the stroke-dasharray attribute of a dash pattern.
func dashAttr(dash string) string {
	if dash == solid {
		return ""
	}
	return ` stroke-dasharray="` + dash + `"`
}

// legendWidth is how wide a legend item is drawn.
func legendWidth(l legendItem) float64 { return 24 + 6.2*float64(len(l.label)) }

// legendRows is how many rows the legend takes.
func legendRows(c *chart) int {
	rows, x := 1, padL
	for _, l := range c.legend {
		w := legendWidth(l)
		if x+w > c.w && x > padL {
			rows, x = rows+1, padL
		}
		x += w
	}
	return rows
}

// niceStep is a round tick spacing giving about n ticks over span.
func niceStep(span float64, n int) float64 {
	if span <= 0 {
		return 1
	}
	raw := span / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*mag >= raw {
			return m * mag
		}
	}
	return 10 * mag
}

// strconvG prints a decade (0.001, 0.1, 10, 1000) as it is written.
func strconvG(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

func fmtTick(v, step float64) string {
	if math.Abs(v) < step*1e-6 {
		v = 0 // not -0.0
	}
	if step >= 1 {
		return fmt.Sprintf("%.0f", v)
	}
	d := int(math.Ceil(-math.Log10(step)))
	return fmt.Sprintf("%.*f", d, v)
}

// SVG renders the plot.
func (p *plot) SVG() string {
	c := p.chart
	if math.IsInf(c.x0, 1) {
		c.x0, c.x1, c.y0, c.y1 = 0, 1, 0, 1
	}
	if c.logY && !math.IsInf(c.y0, 1) && c.y0 > 0 {
		// Whole decades.
		c.y0, c.y1 = math.Pow(10, math.Floor(math.Log10(c.y0))), math.Pow(10, math.Ceil(math.Log10(c.y1)))
		if c.y1 <= c.y0 {
			c.y1 = c.y0 * 10
		}
	} else {
		c.logY = false
	}
	if c.y0 > 0 && !c.logY {
		c.y0 = 0
	}
	if c.x1-c.x0 <= 0 {
		c.x1 = c.x0 + 1e-3
	}
	// A little room at both ends: a mark at the first instant is not on
	// the axis.
	dx := (c.x1 - c.x0) * 0.02
	c.x0, c.x1 = c.x0-dx, c.x1+dx
	if c.y1-c.y0 <= 0 {
		c.y1 = c.y0 + 1
	}
	if !c.logY {
		c.y1 += (c.y1 - c.y0) * 0.05
	}
	// Room for the legend: two rows under the x label, more make the
	// graph taller.
	if rows := legendRows(c); rows > 2 {
		c.h += 14 * float64(rows-2)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" class="tcp-graph" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="11">`+"\n", c.w, c.h, c.w, c.h)
	fmt.Fprintf(&b, `<title>%s</title>`+"\n", html.EscapeString(c.title))
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="#ffffff"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="20" font-size="14" font-weight="bold">%s</text>`+"\n", padL, html.EscapeString(c.title))
	if c.note != "" {
		fmt.Fprintf(&b, `<text x="%.0f" y="34" fill="#555555">%s</text>`+"\n", padL, html.EscapeString(c.note))
	}
	// Axes and ticks.
	L, R, T, B := padL, c.w-padR, padT, c.h-padB
	fmt.Fprintf(&b, `<g class="axes" stroke="#333333"><line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f"/><line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f"/></g>`+"\n", L, B, R, B, L, B, L, T)
	xs := niceStep(c.x1-c.x0, 8)
	for i, v0 := 0, math.Ceil(c.x0/xs)*xs; i <= 50; i++ {
		// By index: v += xs would stall where xs is below v's precision.
		v := v0 + float64(i)*xs
		if v > c.x1+xs*1e-9 {
			break
		}
		X := c.px(v)
		fmt.Fprintf(&b, `<g class="xtick"><line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#dddddd"/><text x="%.1f" y="%.0f" text-anchor="middle">%s</text></g>`+"\n", X, T, X, B, X, B+14, fmtTick(v, xs))
	}
	for v := c.y0; c.logY && v <= c.y1*1.0001; v *= 10 {
		Y := c.py(v)
		fmt.Fprintf(&b, `<g class="ytick"><line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#dddddd"/><text x="%.0f" y="%.1f" text-anchor="end">%s</text></g>`+"\n", L, Y, R, Y, L-4, Y+4, strconvG(v))
	}
	ys := niceStep(c.y1-c.y0, 6)
	for i, v0 := 0, math.Ceil(c.y0/ys)*ys; i <= 50 && !c.logY; i++ {
		v := v0 + float64(i)*ys
		if v > c.y1+ys*1e-9 {
			break
		}
		Y := c.py(v)
		fmt.Fprintf(&b, `<g class="ytick"><line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#dddddd"/><text x="%.0f" y="%.1f" text-anchor="end">%s</text></g>`+"\n", L, Y, R, Y, L-4, Y+4, fmtTick(v, ys))
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="middle">%s</text>`+"\n", (L+R)/2, B+30, html.EscapeString(c.xlabel))
	fmt.Fprintf(&b, `<text transform="translate(14 %.0f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", (T+B)/2, html.EscapeString(c.ylabel))
	fmt.Fprintf(&b, `<g class="marks">`+"\n")
	for _, e := range p.els {
		e(c, &b)
	}
	b.WriteString("</g>\n")
	// Legend, under the x label.
	x, y := L, c.h-padB+44
	for _, l := range c.legend {
		w := legendWidth(l)
		if x+w > c.w && x > L {
			x, y = L, y+14
		}
		if l.line {
			fmt.Fprintf(&b, `<g class="legend"><line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="%s" stroke-width="2.5"%s/><text x="%.0f" y="%.0f">%s</text></g>`+"\n",
				x, y+5, x+11, y+5, l.colour, dashAttr(l.dash), x+14, y+9, html.EscapeString(l.label))
		} else {
			fmt.Fprintf(&b, `<g class="legend"><rect x="%.0f" y="%.0f" width="10" height="10" fill="%s"/><text x="%.0f" y="%.0f">%s</text></g>`+"\n", x, y, l.colour, x+14, y+9, html.EscapeString(l.label))
		}
		x += w
	}
	b.WriteString("</svg>\n")
	return b.String()
}
