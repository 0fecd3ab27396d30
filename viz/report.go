package viz

import (
	"fmt"
	"html"
	"io"
	"strings"

	"github.com/tcp-upper/tcp-upper/netstack/inspect"
)

// Verdict is one checked expectation, as an experiment reports it.
type Verdict struct {
	Pass             bool
	Expect, Evidence string
}

// ReportInfo is what a report says beyond the capture and events.
type ReportInfo struct {
	Name, Lesson string
	Faults       []string
	Seed         uint64
	Verdicts     []Verdict
}

const css = `body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.5em}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:12px;line-height:1.25}
.pass{color:#1a7f37;font-weight:bold}.fail{color:#cf222e;font-weight:bold}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}
.fig{margin:1em 0}.why{color:#555}span.row[title]{text-decoration:underline dotted #999}`

// Report writes one self-contained HTML page: the lesson, the verdicts,
// the ladder (with each rule as a tooltip and, under it, the explained
// ladder), the graphs as inline SVG and both stacks' events as a table
// (each with its side and stack).
// It references nothing outside itself.
func Report(w io.Writer, s *Session, info ReportInfo) error {
	var b strings.Builder
	e := html.EscapeString
	fmt.Fprintf(&b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>%s</title><style>%s</style></head><body>\n", e("experiment "+info.Name), css)
	fmt.Fprintf(&b, "<h1>Experiment %s</h1>\n<p>%s</p>\n", e(info.Name), e(info.Lesson))
	if len(info.Faults) > 0 {
		fmt.Fprintf(&b, "<p>Faults: <code>%s</code>; seed %d (repeat: <code>tcp-upper-lab run %s --seed %d</code>)</p>\n", e(strings.Join(info.Faults, "', '")), info.Seed, e(info.Name), info.Seed)
	}
	if len(info.Verdicts) > 0 {
		b.WriteString("<h2>Verdicts</h2>\n<ul>\n")
		for _, v := range info.Verdicts {
			cls, mark := "pass", "PASS"
			if !v.Pass {
				cls, mark = "fail", "FAIL"
			}
			fmt.Fprintf(&b, "<li><span class=\"%s\">%s</span> %s <span class=\"why\">— %s</span></li>\n", cls, mark, e(v.Expect), e(v.Evidence))
		}
		b.WriteString("</ul>\n")
	}
	for i, c := range s.Conns {
		fmt.Fprintf(&b, "<h2>Connection %d: %s</h2>\n", i+1, e(c.Name()))
		b.WriteString("<p>The ladder (hover a line for the rule behind it):</p>\n<pre class=\"ladder\">")
		ladderHTML(&b, s, c, 100)
		b.WriteString("</pre>\n")
		var ex strings.Builder
		writeLadder(&ex, s, c, LadderOptions{Width: 100, Explain: true})
		fmt.Fprintf(&b, "<details><summary>The ladder explained</summary><pre class=\"ladder-explained\">%s</pre></details>\n", e(ex.String()))
	}
	figs := Figures(s)
	if len(figs) > 0 {
		b.WriteString("<h2>Graphs</h2>\n")
		for _, f := range figs {
			fmt.Fprintf(&b, "<div class=\"fig\" id=\"%s\">\n%s</div>\n", e(f.Name), f.SVG)
		}
	}
	b.WriteString("<h2>Timeline (the stacks' events)</h2>\n<table class=\"timeline\"><tr><th>t (s)</th><th>connection</th><th>side (stack)</th><th>event</th><th>cause</th><th>numbers</th><th>rule</th></tr>\n")
	for _, c := range s.Conns {
		for k := range c.Events {
			ev := &c.Events[k]
			what := string(ev.Kind)
			if ev.Kind == inspect.KindState {
				what = ev.From.String() + " → " + ev.To.String()
			}
			nums := ""
			if t := ev.Text(); strings.Contains(t, " snd.una=") {
				nums = t[strings.Index(t, " snd.una=")+1:]
			}
			rule := ""
			if r, ok := ExplainEvent(ev); ok {
				rule = r.Cite
			}
			fmt.Fprintf(&b, "<tr><td>%.6f</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td><code>%s</code></td><td>%s</td></tr>\n",
				s.Rel(ev.Time), e(c.Name()), e(stackName(c, c.SideOf(ev))), e(what), e(ev.Cause), e(nums), e(rule))
		}
	}
	b.WriteString("</table>\n<p class=\"why\">Written by tcp-upper-lab; this page fetches nothing.</p>\n</body></html>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// LadderHTML is c's ladder as HTML text for a <pre>, each explained line
// a span whose title (tooltip) is its rule.
func LadderHTML(s *Session, c *Conn, width int) string {
	var b strings.Builder
	ladderHTML(&b, s, c, width)
	return b.String()
}

func ladderHTML(b *strings.Builder, s *Session, c *Conn, width int) {
	var plain strings.Builder
	writeLadder(&plain, s, c, LadderOptions{Width: width})
	lines := strings.Split(strings.TrimRight(plain.String(), "\n"), "\n")
	rows := Rows(c)
	// The ladder prints 3 header lines, then per row one line (two when
	// the label goes above its arrow): match rows to lines by their time
	// stamp.
	ri := 0
	for i, l := range lines {
		if i >= 3 && ri < len(rows) && strings.HasPrefix(strings.TrimSpace(l), fmt.Sprintf("%.6f ", s.Rel(rows[ri].Time))) {
			r := rows[ri]
			ri++
			if r.Explained {
				fmt.Fprintf(b, "<span class=\"row\" title=\"%s\">%s</span>\n", html.EscapeString(r.Rule.String()), html.EscapeString(l))
				continue
			}
		}
		b.WriteString(html.EscapeString(l) + "\n")
	}
}

// Index writes a page linking every experiment's report.
func Index(w io.Writer, entries []IndexEntry) error {
	var b strings.Builder
	e := html.EscapeString
	fmt.Fprintf(&b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>tcp-upper experiments</title><style>%s</style></head><body>\n<h1>Experiments</h1>\n<table><tr><th>experiment</th><th>lesson</th><th>verdict</th></tr>\n", css)
	for _, x := range entries {
		cls, mark := "pass", "PASS"
		if !x.Pass {
			cls, mark = "fail", "FAIL"
		}
		fmt.Fprintf(&b, "<tr><td><a href=\"%s\">%s</a></td><td>%s</td><td class=\"%s\">%s</td></tr>\n", e(x.Href), e(x.Name), e(x.Lesson), cls, mark)
	}
	b.WriteString("</table>\n</body></html>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// IndexEntry is one line of the index page.
type IndexEntry struct {
	Name, Lesson, Href string
	Pass               bool
}
