package viz

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/tcp-upper/tcp-upper/netstack/inspect"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// The committed experiments: capture.pcap and events.jsonl as
// tcp-upper-lab run NAME --seed 7 left them (fast-retransmit's and
// corruption's captures cut to 96 bytes a packet with editcap -s 96).
// blackhole's events carry rttvar and the kernel client's events too (the
// others were recorded before either).
var experiments = []string{"handshake", "syn-loss", "syn-ack-loss", "data-loss-rto", "fast-retransmit", "corruption", "time-wait", "blackhole"}

func load(t *testing.T, name string) *Session {
	t.Helper()
	s, err := Load(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Conns) == 0 {
		t.Fatalf("%s: no connections", name)
	}
	return s
}

// The ladders (plain and explained) match their golden files.
func TestLadderGolden(t *testing.T) {
	for _, name := range experiments {
		for _, explain := range []bool{false, true} {
			s := load(t, name)
			var b bytes.Buffer
			if err := Ladder(&b, s, LadderOptions{Width: 80, Explain: explain}); err != nil {
				t.Fatal(err)
			}
			for i, l := range strings.Split(b.String(), "\n") {
				if n := len([]rune(l)); n > 80 {
					t.Errorf("%s line %d is %d columns: %q", name, i+1, n, l)
				}
			}
			file := filepath.Join("testdata", name, "ladder.golden")
			if explain {
				file = filepath.Join("testdata", name, "ladder-explain.golden")
			}
			if *update {
				os.WriteFile(file, b.Bytes(), 0o644)
				continue
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("%v (go test ./viz -update writes it)", err)
			}
			if b.String() != string(want) {
				t.Errorf("%s differs from %s:\n%s", name, file, b.String())
			}
		}
	}
}

// rowSummary is the ladder's structure: one token per row.
func rowSummary(c *Conn) []string {
	var out []string
	for _, r := range Rows(c) {
		switch r.Kind {
		case RowState:
			out = append(out, r.Side.String()+":"+r.Text)
		case RowMark:
			out = append(out, r.Side.String()+":*"+strings.Fields(r.Text)[0])
		case RowSegment:
			tok := r.Seg.From.String() + ">" + inspect.FlagString(r.Seg.Flags)
			if r.Seg.Retransmit {
				tok += "/retx"
			}
			if r.Seg.Dropped {
				tok += "/X"
			}
			out = append(out, tok)
		}
	}
	return out
}

// inOrder reports whether want's tokens appear in got in that order.
func inOrder(got, want []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

// The lessons' stories, in the right order: arrows, states, marks.
func TestLadderStructure(t *testing.T) {
	for name, want := range map[string][]string{
		"handshake":       {"client>S", "server:SYN-RCVD", "server>S.", "client>.", "server:ESTABLISHED"},
		"syn-loss":        {"client>S/X", "client>S/retx/X", "client>S/retx", "server:SYN-RCVD", "server>S.", "server:ESTABLISHED"},
		"syn-ack-loss":    {"client>S", "server:SYN-RCVD", "server>S./X", "server>S./retx", "server:ESTABLISHED"},
		"data-loss-rto":   {"server:ESTABLISHED", "server>P./X", "server:*RTO", "server>P./retx", "server:FIN-WAIT-1", "server>F."},
		"fast-retransmit": {"server>./X", "client>.", "server:*3rd", "server:*fast", "server>./retx", "server:*recovery"},
		"corruption":      {"server:ESTABLISHED", "client>./X", "client>./X", "client>./X", "client>./retx", "server>.", "client>./retx", "client>./retx"},
		"time-wait":       {"server:FIN-WAIT-1", "server>F.", "client>F.", "server>./X", "server:TIME-WAIT", "client>F./retx", "server>.", "server:CLOSED"},
		// The kernel client's events are in the file too: the ladder
		// draws the server's states only, so SYN-SENT is not in it.
		"blackhole": {"client>S", "server:SYN-RCVD", "server:ESTABLISHED", "server>P./X", "server:*RTO", "server>P./retx/X", "server:*RTO", "server>P./retx/X", "server:*RTO", "server>P./retx/X", "server:*RTO", "server>P./retx/X", "server:*RTO", "server>P./retx", "server:CLOSE-WAIT"},
	} {
		got := rowSummary(load(t, name).Conns[0])
		if !inOrder(got, want) {
			t.Errorf("%s: want in order %v\ngot %v", name, want, got)
		}
	}
}

// Segments the fault layer corrupted on the way in are the captured ones
// (the capture is taken after the fault layer), marked corrupted.
func TestCorruptedSegments(t *testing.T) {
	var fates []string
	for _, g := range load(t, "corruption").Conns[0].Segs {
		if g.Dropped {
			if !g.Captured {
				t.Errorf("a corrupted segment drawn from its event, not the capture: %+v", g)
			}
			fates = append(fates, g.Fate)
		}
	}
	if strings.Join(fates, " ") != "corrupted corrupted corrupted" {
		t.Errorf("fates %q, want three corrupted", fates)
	}
}

// A pcapng comment saying the packet was dropped marks it, without events.
func TestDropFromPcapngComment(t *testing.T) {
	s, err := LoadFiles("../netstack/pcap/testdata/comment.pcapng", "")
	if err != nil {
		t.Fatal(err)
	}
	got := rowSummary(s.Conns[0])
	if !inOrder(got, []string{"client>S", "server>S./X", "client>."}) {
		t.Errorf("got %v", got)
	}
}

var classRE = regexp.MustCompile(`<(?:line|path|text|circle|polyline) class="([^"]+)"`)

func classes(svg string) []string {
	var out []string
	for _, m := range classRE.FindAllStringSubmatch(svg, -1) {
		out = append(out, m[1])
	}
	return out
}

func count(cs []string, c string) int {
	n := 0
	for _, x := range cs {
		if x == c {
			n++
		}
	}
	return n
}

// The graphs' structure: which figures, and the marks in them.
func TestFigures(t *testing.T) {
	figs := map[string]string{}
	for _, f := range Figures(load(t, "data-loss-rto")) {
		figs[f.Name] = f.SVG
	}
	for _, n := range []string{"c1-timeseq-client", "c1-timeseq-server", "c1-throughput", "c1-inflight", "c1-cwnd", "c1-rtt"} {
		if figs[n] == "" {
			t.Errorf("no figure %s (have %d)", n, len(figs))
		}
	}
	ts := classes(figs["c1-timeseq-server"])
	// The dropped reply, its cross, then the retransmission and its R.
	if !inOrder(ts, []string{"data drop", "drop", "data retx", "retx"}) || count(ts, "data drop") != 1 || count(ts, "data retx") != 1 {
		t.Errorf("server's time-sequence marks %v", ts)
	}
	if count(ts, "ack") == 0 || count(ts, "rwnd") == 0 {
		t.Errorf("no ACK or window line: %v", ts)
	}
	cw := classes(figs["c1-cwnd"])
	if count(cw, "cwnd") == 0 {
		t.Errorf("cwnd graph: %v", cw)
	}
	// ssthresh is unset (infinite) until the RTO cuts it to 2: one line,
	// from the first event that has it.
	if count(cw, "ssthresh") != 1 {
		t.Errorf("ssthresh lines: %v", cw)
	}
	for _, f := range Figures(load(t, "handshake")) {
		if f.Name == "c1-cwnd" && count(classes(f.SVG), "ssthresh") != 0 {
			t.Errorf("handshake: an unset ssthresh drawn: %v", classes(f.SVG))
		}
	}
	rt := classes(figs["c1-rtt"])
	if count(rt, "srtt") == 0 || count(rt, "rto") == 0 || count(rt, "rtt-wire") == 0 {
		t.Errorf("rtt graph: %v", rt)
	}
	// The SYN-RCVD event has no numbers (null): the lines start after it,
	// never at zero.
	// 5 events with numbers: a staircase of 1 + 2*4 points (11 if the
	// null were drawn).
	m := regexp.MustCompile(`class="cwnd" points="([^"]*)"`).FindStringSubmatch(figs["c1-cwnd"])
	if m == nil || len(strings.Fields(m[1])) != 9 {
		t.Errorf("cwnd staircase %v, want 9 points", m)
	}
	// fast-retransmit: SACK blocks on the server's graph.
	for _, f := range Figures(load(t, "fast-retransmit")) {
		if f.Name == "c1-timeseq-server" && count(classes(f.SVG), "sack") == 0 {
			t.Errorf("no SACK blocks in %s", f.Name)
		}
	}
	// A plain capture (no events): the wire's graphs, none of the stack's.
	s, err := LoadFiles("testdata/data-loss-rto/capture.pcap", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range Figures(s) {
		if f.Name == "c1-cwnd" || strings.Contains(f.SVG, `class="srtt"`) {
			t.Errorf("%s drawn without events", f.Name)
		}
	}
}

var externalRE = regexp.MustCompile(`(?i)(src\s*=|href\s*=\s*"(?:https?:|//)|url\(|@import|<link|<script[^>]+src)`)

// report.html stands alone: nothing fetched, and it holds the lesson, the
// verdicts, the ladder, the graphs and the timeline.
func TestReportSelfContained(t *testing.T) {
	s := load(t, "data-loss-rto")
	var b bytes.Buffer
	err := Report(&b, s, ReportInfo{Name: "data-loss-rto", Lesson: "the last segment of a flight is lost", Faults: []string{"out data drop count=1"}, Seed: 7,
		Verdicts: []Verdict{{true, "the retransmission timer fires", "1 rto events"}}})
	if err != nil {
		t.Fatal(err)
	}
	h := b.String()
	if m := externalRE.FindString(h); m != "" {
		t.Errorf("report refers outside itself: %q", m)
	}
	if n := strings.Count(h, "http"); n != strings.Count(h, `xmlns="http://www.w3.org/2000/svg"`) {
		t.Errorf("%d http references, only SVG namespaces allowed", n)
	}
	for _, want := range []string{"the last segment of a flight is lost", "PASS", "class=\"ladder\"", "X---", "<svg", "class=\"timeline\"", "RTO fired", "RFC 6298"} {
		if !strings.Contains(h, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	var idx bytes.Buffer
	Index(&idx, []IndexEntry{{Name: "a", Href: "a/report.html", Pass: true}})
	if !strings.Contains(idx.String(), `href="a/report.html"`) || externalRE.FindString(strings.ReplaceAll(idx.String(), `href="a/report.html"`, "")) != "" {
		t.Errorf("index: %s", idx.String())
	}
}

// The live ladder: rows as events come, each connection numbered.
func TestLive(t *testing.T) {
	evs, err := ReadEvents("testdata/data-loss-rto/events.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	l, err := NewLive(&b, LadderOptions{Width: 80})
	if err != nil {
		t.Fatal(err)
	}
	l.Header("server 10.0.2.2:9999")
	for _, ev := range evs {
		l.Add(ev)
	}
	out := b.String()
	var idx []int
	for _, want := range []string{"#1 is 10.0.1.2:49004 (peer) and 10.0.2.2:9999", "| SYN-RCVD", "| ESTABLISHED", "dropped X-", "* RTO fired (rto=200ms)", "* seq 1:34 sent again", "| FIN-WAIT-1", "| CLOSED"} {
		i := strings.Index(out, want)
		if i < 0 || len(idx) > 0 && i < idx[len(idx)-1] {
			t.Fatalf("%q missing or out of order in:\n%s", want, out)
		}
		idx = append(idx, i)
	}
	for _, ln := range strings.Split(out, "\n") {
		if len([]rune(ln)) > 80 {
			t.Errorf("line of %d columns: %q", len([]rune(ln)), ln)
		}
	}
}

// The round-trip graph draws the stack's rttvar from its events: one
// dashed staircase with a step at each of our stack's events that has it
// (the kernel client's events in the same file have none and are not
// drawn), rising from the first sample's (RFC 6298: half of it) to the
// value after the transfer resumed. Events without rttvar (recorded before
// it was reported) draw no line and say so.
func TestRTTVarGraph(t *testing.T) {
	evs, err := ReadEvents("testdata/blackhole/events.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	var vals []float64
	for _, ev := range evs {
		if ev.Stack == inspect.StackNetstack && ev.N.RTTVarKnown() {
			vals = append(vals, float64(ev.N.RTTVar)/1e6)
		}
		if ev.Stack == inspect.StackKernel && ev.N.RTTVarKnown() {
			t.Errorf("a kernel event with rttvar: %s", ev.Text())
		}
	}
	if len(vals) < 3 || vals[len(vals)-1] <= vals[0] {
		t.Fatalf("testdata/blackhole: rttvar %v, want a rise", vals)
	}
	var svg string
	for _, f := range Figures(load(t, "blackhole")) {
		if f.Name == "c1-rtt" {
			svg = f.SVG
		}
	}
	if cs := classes(svg); count(cs, "srtt") != 1 || count(cs, "rttvar") != 1 || count(cs, "rto") != 1 {
		t.Fatalf("rtt graph: %v, want one srtt, rttvar and rto line", cs)
	}
	m := regexp.MustCompile(`<polyline class="rttvar" points="([^"]*)"[^>]*stroke-dasharray[^>]*><title>rttvar \(the stack&#39;s\)</title>`).FindStringSubmatch(svg)
	if m == nil {
		t.Fatalf("no dashed rttvar polyline with its tooltip in\n%s", svg)
	}
	pts := strings.Fields(m[1])
	if len(pts) != 2*len(vals)-1 {
		t.Errorf("rttvar staircase of %d points, want %d (%d events with rttvar)", len(pts), 2*len(vals)-1, len(vals))
	}
	y := func(p string) float64 {
		v, _ := strconv.ParseFloat(p[strings.IndexByte(p, ',')+1:], 64)
		return v
	}
	if first, last := y(pts[0]), y(pts[len(pts)-1]); last >= first {
		t.Errorf("rttvar line from y=%v to y=%v: want it to end higher (rttvar %v ms to %v ms)", first, last, vals[0], vals[len(vals)-1])
	}
	if !strings.Contains(svg, "rto = srtt + 4 rttvar") {
		t.Error("no note on how rto follows from srtt and rttvar")
	}

	for _, f := range Figures(load(t, "data-loss-rto")) {
		if f.Name == "c1-rtt" && (strings.Contains(f.SVG, `class="rttvar"`) || !strings.Contains(f.SVG, "rttvar is not in these events")) {
			t.Errorf("data-loss-rto (no rttvar in its events): %v", classes(f.SVG))
		}
	}
}
