package viz

import (
	"bytes"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tcp-upper/tcp-upper/internal/pkt"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
	"github.com/tcp-upper/tcp-upper/netstack/pcap"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// The committed experiments: capture.pcap and events.jsonl as
// tcp-upper-lab run NAME --seed 7 left them (fast-retransmit's and
// corruption's captures cut to 96 bytes a packet with editcap -s 96).
// blackhole's events carry rttvar; blackhole's, handshake's and
// time-wait's carry the kernel client's events too (the others were
// recorded before the kernel's were).
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
			tok := r.Seg.From.String() + ">" + pkt.FlagString(r.Seg.Flags)
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
		"handshake":       {"client:SYN-SENT", "client>S", "server:SYN-RCVD", "server>S.", "client:ESTABLISHED", "client>.", "server:ESTABLISHED", "client:FIN-WAIT-1", "client>F.", "client:FIN-WAIT-2", "client:TIME-WAIT", "server:CLOSE-WAIT", "server:LAST-ACK", "server>F.", "client>.", "server:CLOSED"},
		"syn-loss":        {"client>S/X", "client>S/retx/X", "client>S/retx", "server:SYN-RCVD", "server>S.", "server:ESTABLISHED"},
		"syn-ack-loss":    {"client>S", "server:SYN-RCVD", "server>S./X", "server>S./retx", "server:ESTABLISHED"},
		"data-loss-rto":   {"server:ESTABLISHED", "server>P./X", "server:*RTO", "server>P./retx", "server:FIN-WAIT-1", "server>F."},
		"fast-retransmit": {"server>./X", "client>.", "server:*3rd", "server:*fast", "server>./retx", "server:*recovery"},
		"corruption":      {"server:ESTABLISHED", "client>./X", "client>./X", "client>./X", "client>./retx", "server>.", "client>./retx", "client>./retx"},
		"time-wait":       {"client:ESTABLISHED", "server:FIN-WAIT-1", "server>F.", "client:CLOSE-WAIT", "client:LAST-ACK", "client>F.", "server>./X", "server:TIME-WAIT", "client:*retransmit", "client>F./retx", "server>.", "client:CLOSED", "server:CLOSED"},
		// Both ends' states: the kernel client's on the left.
		"blackhole": {"client:SYN-SENT", "client>S", "server:SYN-RCVD", "client:ESTABLISHED", "server:ESTABLISHED", "server>P./X", "server:*RTO", "server>P./retx/X", "client:*retransmit", "client>P./retx", "server:*RTO", "server>P./retx/X", "server:*RTO", "server>P./retx/X", "server:*RTO", "server>P./retx/X", "server:*RTO", "server>P./retx", "client:FIN-WAIT-1", "client>F.", "client:FIN-WAIT-2", "server:CLOSE-WAIT", "server:LAST-ACK", "server>F.", "server:CLOSED", "client:TIME-WAIT"},
	} {
		got := rowSummary(load(t, name).Conns[0])
		if !inOrder(got, want) {
			t.Errorf("%s: want in order %v\ngot %v", name, want, got)
		}
	}
}

// rowIndex is the index of the first row at or after from that ok accepts
// (-1: none).
func rowIndex(rows []Row, from int, ok func(r *Row) bool) int {
	for i := max(from, 0); i < len(rows); i++ {
		if ok(&rows[i]) {
			return i
		}
	}
	return -1
}

// Both ends' own states: each event on the side whose stack reported it
// (its local address), the kernel client's states on the left in the
// order its tracepoints gave them, at heights that fit the arrows: the
// kernel's ESTABLISHED after the SYN-ACK reached it and before its ACK,
// FIN-WAIT-1 before its FIN, FIN-WAIT-2 after the ACK of it, CLOSE-WAIT
// after the server's FIN, LAST-ACK before its own, CLOSED after the ACK
// of it. The TIME-WAIT that sock_diag saw (no tracepoint marks it) is
// marked approximate.
func TestLadderBothEnds(t *testing.T) {
	for name, want := range map[string][]string{
		"handshake": {"SYN-SENT", "ESTABLISHED", "FIN-WAIT-1", "FIN-WAIT-2", "TIME-WAIT"},
		"blackhole": {"SYN-SENT", "ESTABLISHED", "FIN-WAIT-1", "FIN-WAIT-2", "TIME-WAIT"},
		"time-wait": {"SYN-SENT", "ESTABLISHED", "CLOSE-WAIT", "LAST-ACK", "CLOSED"},
	} {
		c := load(t, name).Conns[0]
		if c.Reported != [2]string{inspect.StackKernel, inspect.StackNetstack} {
			t.Fatalf("%s: reported %q, want the kernel client and our server", name, c.Reported)
		}
		rows := Rows(c)
		var states []string
		at := map[string]int{}
		for i := range rows {
			r := &rows[i]
			if r.Ev == nil {
				continue
			}
			if wantSide := map[string]Side{inspect.StackKernel: Client, inspect.StackNetstack: Server}[stackOf(r.Ev)]; r.Side != wantSide {
				t.Errorf("%s: %s's row %q on the %s's side", name, stackOf(r.Ev), r.Text, r.Side)
			}
			if r.Kind == RowState && r.Side == Client {
				states = append(states, r.Text)
				at[r.Text] = i
				if r.Approx != (r.Text == "TIME-WAIT") {
					t.Errorf("%s: %s approximate %v", name, r.Text, r.Approx)
				}
			}
		}
		if strings.Join(states, " ") != strings.Join(want, " ") {
			t.Errorf("%s: the client's states %v, want %v", name, states, want)
		}
		seg := func(from Side, ok func(g *Segment) bool) func(r *Row) bool {
			return func(r *Row) bool { return r.Kind == RowSegment && r.Seg.From == from && ok(r.Seg) }
		}
		flags := func(f header.TCPFlags) func(g *Segment) bool {
			return func(g *Segment) bool { return g.Flags&f == f }
		}
		syn := rowIndex(rows, 0, seg(Client, flags(header.TCPFlagSyn)))
		synAck := rowIndex(rows, 0, seg(Server, flags(header.TCPFlagSyn|header.TCPFlagAck)))
		ack := rowIndex(rows, synAck+1, seg(Client, func(*Segment) bool { return true }))
		if !(at["SYN-SENT"] < syn && synAck < at["ESTABLISHED"] && at["ESTABLISHED"] < ack) {
			t.Errorf("%s: SYN-SENT at row %d, SYN %d, SYN-ACK %d, ESTABLISHED %d, ACK %d", name, at["SYN-SENT"], syn, synAck, at["ESTABLISHED"], ack)
		}
		fin := rowIndex(rows, 0, seg(Client, flags(header.TCPFlagFin)))
		finEnd := rows[fin].Seg.Seq + rows[fin].Seg.Consumes()
		finAcked := rowIndex(rows, fin, seg(Server, func(g *Segment) bool { return !g.Dropped && int32(g.Ack-finEnd) >= 0 }))
		if i, ok := at["FIN-WAIT-1"]; ok && !(i < fin && finAcked < at["FIN-WAIT-2"]) {
			t.Errorf("%s: FIN-WAIT-1 at row %d, FIN %d, its ACK %d, FIN-WAIT-2 %d", name, i, fin, finAcked, at["FIN-WAIT-2"])
		}
		if i, ok := at["CLOSE-WAIT"]; ok {
			peerFin := rowIndex(rows, 0, seg(Server, flags(header.TCPFlagFin)))
			if !(peerFin < i && at["LAST-ACK"] < fin && finAcked < at["CLOSED"]) {
				t.Errorf("%s: server's FIN at row %d, CLOSE-WAIT %d, LAST-ACK %d, FIN %d, its ACK %d, CLOSED %d", name, peerFin, i, at["LAST-ACK"], fin, finAcked, at["CLOSED"])
			}
		}
		// Drawn left of the client's lifeline, the server's right of
		// the server's; the header says whose they are.
		var b bytes.Buffer
		if err := Ladder(&b, load(t, name), LadderOptions{Width: 80}); err != nil {
			t.Fatal(err)
		}
		out := b.String()
		for _, st := range want {
			if !regexp.MustCompile(`(?m)^[0-9.]+ +~?` + st + ` \|  +\|$`).MatchString(out) {
				t.Errorf("%s: no %s left of the client's lifeline in\n%s", name, st, out)
			}
		}
		if !regexp.MustCompile(`(?m)\| +\| ESTABLISHED$`).MatchString(out) {
			t.Errorf("%s: the server's ESTABLISHED not right of its lifeline", name)
		}
		if !strings.Contains(out, "client: the kernel's tracepoints") || !strings.Contains(out, "server: our stack's events") {
			t.Errorf("%s: the header does not say whose states are where:\n%s", name, out[:strings.Index(out, "0.000000")])
		}
	}
}

// One end's events only: what there is is drawn, on the side whose local
// address the events have, and the header says the other side has none.
// The side is the event's address, not the stack's name: our stack as the
// client, the kernel as the server.
func TestLadderOneEnd(t *testing.T) {
	all, err := ReadEvents("testdata/blackhole/events.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	pick := func(stack, as string) []inspect.Event {
		var out []inspect.Event
		for _, ev := range all {
			if ev.Stack == stack {
				ev.Stack = as
				out = append(out, ev)
			}
		}
		return out
	}
	pkts, err := pcap.ReadFile("testdata/blackhole/capture.pcap")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		what        string
		evs         []inspect.Event
		side        Side
		left, right string
	}{
		{"the kernel client's only", pick(inspect.StackKernel, inspect.StackKernel), Client, "client: the kernel's tracepoints", "server: no events"},
		{"our server's only", pick(inspect.StackNetstack, inspect.StackNetstack), Server, "client: no events", "server: our stack's events"},
		{"our stack as the client", pick(inspect.StackKernel, inspect.StackNetstack), Client, "client: our stack's events", "server: no events"},
		{"the kernel as the server", pick(inspect.StackNetstack, inspect.StackKernel), Server, "client: no events", "server: the kernel's tracepoints"},
	} {
		s := Build(pkts, tc.evs)
		c := s.Conns[0]
		states := 0
		for _, r := range Rows(c) {
			if r.Kind == RowState {
				states++
				if r.Side != tc.side {
					t.Errorf("%s: %s on the %s's side", tc.what, r.Text, r.Side)
				}
			}
		}
		if states < 4 {
			t.Errorf("%s: %d state rows", tc.what, states)
		}
		var b bytes.Buffer
		if err := Ladder(&b, s, LadderOptions{Width: 80}); err != nil {
			t.Fatal(err)
		}
		head := strings.Split(b.String(), "\n")[1]
		if !strings.Contains(head, tc.left) || !strings.Contains(head, tc.right) {
			t.Errorf("%s: header %q, want %q and %q", tc.what, head, tc.left, tc.right)
		}
	}
	// A capture without events: the wire only.
	var b bytes.Buffer
	if err := Ladder(&b, Build(pkts, nil), LadderOptions{Width: 80}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "no stack events: the wire only") {
		t.Errorf("no events:\n%s", b.String())
	}
}

// Narrow and wall-clock ladders keep both ends' states in their columns:
// the header goes on two lines when one is too narrow.
func TestLadderBothEndsNarrow(t *testing.T) {
	for _, opts := range []LadderOptions{{Width: MinWidth}, {Width: MinWidth, Absolute: true}, {Width: 120, Absolute: true}} {
		var b bytes.Buffer
		if err := Ladder(&b, load(t, "blackhole"), opts); err != nil {
			t.Fatal(err)
		}
		out := b.String()
		for i, l := range strings.Split(out, "\n") {
			if n := len([]rune(l)); n > opts.Width {
				t.Errorf("%+v: line %d is %d columns: %q", opts, i+1, n, l)
			}
		}
		if !regexp.MustCompile(`(?m) ESTABLISHED \|  +\|$`).MatchString(out) || !strings.Contains(out, "client: the kernel's tracepoints") {
			t.Errorf("%+v:\n%s", opts, out)
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
	// Its rule quotes the comment; no fault layer or rule is named (the
	// capture may come from anywhere).
	for _, r := range Rows(s.Conns[0]) {
		if r.Kind == RowSegment && r.Seg.Dropped {
			if text := r.Rule.String(); !strings.Contains(text, `the capture's comment says it was dropped: "dropped by rule #1 (test)"`) || strings.Contains(text, "fault layer") {
				t.Errorf("dropped by a comment: %q", text)
			}
		}
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

// The graphs draw both stacks' numbers when both reported: blackhole's
// cwnd and srtt lines for the kernel client (classes ending -client,
// legend "client (kernel)") beside our server's, as many steps as the
// kernel's events that carry the number (a null one is a gap, never 0),
// no rto or rttvar line for the kernel (tcp_probe has neither); the
// time-sequence graph marks each side's state changes.
func TestFiguresBothEnds(t *testing.T) {
	s := load(t, "blackhole")
	c := s.Conns[0]
	var cw, sr int
	for _, ev := range sideEvents(c, Client) {
		if ev.Stack != inspect.StackKernel {
			t.Fatalf("a %s event on the kernel client's side: %s", ev.Stack, ev.Text())
		}
		if has(&ev.N, inspect.FieldCwnd) {
			cw++
		}
		if ev.N.Known && ev.N.SRTTKnown {
			sr++
		}
		if has(&ev.N, inspect.FieldRTO) || ev.N.RTTVarKnown() {
			t.Errorf("a kernel event with rto or rttvar: %s", ev.Text())
		}
	}
	if cw < 2 || sr < 2 {
		t.Fatalf("blackhole: %d kernel events with cwnd, %d with srtt", cw, sr)
	}
	figs := map[string]string{}
	for _, f := range Figures(s) {
		figs[f.Name] = f.SVG
	}
	points := func(svg, class string) int {
		m := regexp.MustCompile(`<polyline class="` + class + `" points="([^"]*)"`).FindStringSubmatch(svg)
		if m == nil {
			return 0
		}
		return len(strings.Fields(m[1]))
	}
	if n := points(figs["c1-cwnd"], "cwnd-client"); n != 2*cw-1 {
		t.Errorf("the kernel's cwnd staircase has %d points, want %d", n, 2*cw-1)
	}
	if n := points(figs["c1-rtt"], "srtt-client"); n != 2*sr-1 {
		t.Errorf("the kernel's srtt staircase has %d points, want %d", n, 2*sr-1)
	}
	for _, want := range []string{"cwnd", "ssthresh"} {
		if count(classes(figs["c1-cwnd"]), want) != 1 {
			t.Errorf("no %s line of our server: %v", want, classes(figs["c1-cwnd"]))
		}
	}
	rt := classes(figs["c1-rtt"])
	if count(rt, "srtt") != 1 || count(rt, "rto") != 1 || count(rt, "rttvar") != 1 || count(rt, "rto-client") != 0 || count(rt, "rttvar-client") != 0 {
		t.Errorf("rtt graph: %v", rt)
	}
	// With both stacks drawn, each stack's lines are in its side's colour
	// (the graph's lines of one stack differ in their dashes).
	stroke := regexp.MustCompile(`<polyline class="([a-z]+)(-client)?" points="[^"]*" fill="none" stroke="([^"]*)" stroke-width="[^"]*"( stroke-dasharray="([^"]*)")?`)
	dash := map[string]string{}
	for _, name := range []string{"c1-cwnd", "c1-rtt"} {
		for _, m := range stroke.FindAllStringSubmatch(figs[name], -1) {
			side := Server
			if m[2] != "" {
				side = Client
			}
			if m[3] != dirColour(side) {
				t.Errorf("%s: the %s line of the %s is %s, want its side's %s", name, m[1], side, m[3], dirColour(side))
			}
			dash[m[1]] = m[5]
		}
	}
	if dash["srtt"] == dash["rttvar"] || dash["rttvar"] == dash["rto"] || dash["srtt"] == dash["rto"] {
		t.Errorf("our server's srtt, rttvar and rto lines are dashed alike: %q", dash)
	}
	for _, name := range []string{"c1-cwnd", "c1-rtt"} {
		if !strings.Contains(figs[name], "client (kernel)") || !strings.Contains(figs[name], "server (netstack)") {
			t.Errorf("%s: legend lacks a stack", name)
		}
	}
	ts := classes(figs["c1-timeseq-server"])
	states := 0
	for i := range c.Events {
		if c.Events[i].Kind == inspect.KindState {
			states++
		}
	}
	if n := count(ts, "state-client") + count(ts, "state-server"); n != states || count(ts, "state-client") == 0 || count(ts, "state-server") == 0 {
		t.Errorf("time-sequence graph: %d state lines (client %d, server %d), want %d", n, count(ts, "state-client"), count(ts, "state-server"), states)
	}
	// One side's events: its lines only, in the old colours.
	for _, f := range Figures(load(t, "data-loss-rto")) {
		if cs := classes(f.SVG); count(cs, "cwnd-client")+count(cs, "srtt-client")+count(cs, "state-client") != 0 {
			t.Errorf("%s: client lines without the client's events: %v", f.Name, cs)
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

// report.html has both ends: the kernel client's states in its ladder
// (with their rules as tooltips), its lines in the graphs, its events in
// the timeline with their side.
func TestReportBothEnds(t *testing.T) {
	var b bytes.Buffer
	if err := Report(&b, load(t, "blackhole"), ReportInfo{Name: "blackhole"}); err != nil {
		t.Fatal(err)
	}
	h := b.String()
	ladder := h[strings.Index(h, `<pre class="ladder">`):]
	ladder = ladder[:strings.Index(ladder, "</pre>")]
	for _, want := range []string{
		`title="RFC 9293 3.5: the application connects`, " SYN-SENT |", " FIN-WAIT-2 |", "~TIME-WAIT |", "client: the kernel&#39;s tracepoints",
	} {
		if !strings.Contains(ladder, want) {
			t.Errorf("the report's ladder lacks %q:\n%s", want, ladder)
		}
	}
	for _, want := range []string{`class="cwnd-client"`, `class="srtt-client"`, `class="state-client"`,
		"<td>client (kernel)</td><td>SYN-SENT → ESTABLISHED</td>", "<td>server (netstack)</td><td>LISTEN → SYN-RCVD</td>"} {
		if !strings.Contains(h, want) {
			t.Errorf("report lacks %q", want)
		}
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
	m := regexp.MustCompile(`<polyline class="rttvar" points="([^"]*)"[^>]*stroke-dasharray[^>]*><title>rttvar, server \(netstack\)</title>`).FindStringSubmatch(svg)
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

// A class drawn for both directions has a legend item for each: the
// handshake experiment's data went both ways, so throughput, the wire's
// bytes in flight and the wire's RTT samples name both.
func TestLegendBothDirections(t *testing.T) {
	figs := map[string]string{}
	for _, f := range Figures(load(t, "handshake")) {
		figs[f.Name] = f.SVG
	}
	legend := regexp.MustCompile(`<g class="legend">.*?<text[^>]*>([^<]*)</text></g>`)
	for name, want := range map[string][]string{
		"c1-throughput": {"client → server", "server → client"},
		"c1-inflight":   {"client&#39;s, seen on the wire", "server&#39;s, seen on the wire"},
		"c1-rtt":        {"client&#39;s RTT samples (wire)", "server&#39;s RTT samples (wire)"},
	} {
		var got []string
		for _, m := range legend.FindAllStringSubmatch(figs[name], -1) {
			got = append(got, m[1])
		}
		for _, w := range want {
			if !slices.Contains(got, w) {
				t.Errorf("%s: legend %q lacks %q", name, got, w)
			}
		}
	}
}

// Segment events (the control socket's, which the live views draw) name
// the segments a capture has too: with the capture, each segment is drawn
// once, from the capture; without it, from the events, the same labels.
func TestSegmentEventsWithCapture(t *testing.T) {
	pkts, err := pcap.ReadFile("testdata/handshake/capture.pcap")
	if err != nil {
		t.Fatal(err)
	}
	evs, err := ReadEvents("testdata/handshake/events.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	c := Build(pkts, evs).Conns[0]
	// Our server's segment events for the capture's segments, as the
	// tracker numbers them.
	var segEvs []inspect.Event
	for _, g := range c.Segs {
		segEvs = append(segEvs, inspect.Event{Time: g.Time, Kind: inspect.KindSegment, Stack: inspect.StackNetstack,
			Conn: inspect.ConnID{Local: c.Addr[Server], Remote: c.Addr[Client]}, ISS: c.ISN[Server], ISSKnown: true, IRS: c.ISN[Client], IRSKnown: true,
			Seg: &inspect.Segment{Out: g.From == Server, Flags: g.Flags, Seq: g.Seq, End: g.Seq + uint32(g.Len), Ack: g.Ack, Len: uint32(g.Len),
				Win: g.Win, RawWin: g.RawWin, MSS: uint16(max(g.MSS, 0)), WScale: int8(g.WScale)}})
	}
	labels := func(c *Conn) []string {
		var out []string
		for i := range c.Segs {
			out = append(out, SegmentLabel(&c.Segs[i]))
		}
		return out
	}
	want := labels(c)
	if got := labels(Build(pkts, append(slices.Clone(evs), segEvs...)).Conns[0]); !slices.Equal(got, want) {
		t.Errorf("capture and segment events: %d segments\n%q\nwant the capture's %d\n%q", len(got), got, len(want), want)
	}
	if got := labels(Build(nil, append(slices.Clone(evs), segEvs...)).Conns[0]); !slices.Equal(got, want) {
		t.Errorf("segment events alone:\n%q\nwant\n%q", got, want)
	}
}

// The live ladder explains a duplicate ACK after its connection's kept
// segments were cut back (liveKeep): the peer's previous ACK, from before
// the cut, is still the one compared.
func TestLiveDupAckAfterCut(t *testing.T) {
	var b bytes.Buffer
	l, err := NewLive(&b, LadderOptions{Width: 80, Explain: true})
	if err != nil {
		t.Fatal(err)
	}
	id := inspect.ConnID{Local: netip.MustParseAddrPort("10.0.2.2:9999"), Remote: netip.MustParseAddrPort("10.0.1.2:40000")}
	at := time.Unix(1e9, 0)
	seg := func(g inspect.Segment) {
		at = at.Add(time.Microsecond)
		g.End = g.Seq + g.Len
		l.Add(inspect.Event{Time: at, Kind: inspect.KindSegment, Stack: inspect.StackNetstack, Conn: id, Seg: &g})
	}
	data := uint32(1)
	send := func(n int) {
		for range n {
			seg(inspect.Segment{Out: true, Flags: header.TCPFlagAck, Seq: data, Len: 10, Ack: 1, Win: 65535, WScale: -1})
			data += 10
		}
	}
	ack := inspect.Segment{Flags: header.TCPFlagAck, Ack: 1, Win: 65535, WScale: -1}
	// Past the first cut (the kept segments' array no longer grows), the
	// peer's ACK, then past the next cut, the same ACK again.
	send(2*liveKeep + 50)
	seg(ack)
	send(2 * liveKeep)
	seg(ack)
	l.Flush()
	if n := strings.Count(b.String(), "duplicate ACK"); n != 1 {
		t.Errorf("%d duplicate ACKs explained, want 1 (the peer's second ACK 1)", n)
	}
}

// A segment our stack sent on a connection that then goes idle is drawn
// once it has waited, however busy other connections keep the stream
// (FlushOlder); one held back a moment is not. The rows of the other
// connections that came after it wait behind it: the rows are in time
// order.
func TestLiveFlushOlder(t *testing.T) {
	var b bytes.Buffer
	l, err := NewLive(&b, LadderOptions{Width: 80})
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Unix(1e9, 0)
	l.now = func() time.Time { return clock }
	at := clock
	seg := func(remote string, g inspect.Segment) {
		at = at.Add(time.Microsecond)
		g.End = g.Seq + g.Len
		id := inspect.ConnID{Local: netip.MustParseAddrPort("10.0.2.2:9999"), Remote: netip.MustParseAddrPort(remote)}
		l.Add(inspect.Event{Time: at, Kind: inspect.KindSegment, Stack: inspect.StackNetstack, Conn: id, Seg: &g})
	}
	// #1's last segment: our FIN, then #1 is quiet while #2 is busy.
	seg("10.0.1.2:40001", inspect.Segment{Out: true, Flags: header.TCPFlagFin | header.TCPFlagAck, Seq: 5, Ack: 5, Win: 1000, WScale: -1})
	for i := range 100 {
		seg("10.0.1.2:40002", inspect.Segment{Flags: header.TCPFlagAck, Ack: 1, Win: 1000, WScale: -1})
		seg("10.0.1.2:40002", inspect.Segment{Out: true, Flags: header.TCPFlagPsh | header.TCPFlagAck, Seq: 1 + uint32(i), Len: 1, Ack: 1, Win: 1000, WScale: -1})
		clock = clock.Add(time.Millisecond)
		l.FlushOlder(50 * time.Millisecond)
		fin := strings.Contains(b.String(), "F. 5 ack 5")
		if want := i >= 49; fin != want {
			t.Fatalf("after %d ms: #1's FIN drawn %v, want %v:\n%s", i+1, fin, want, b.String())
		}
		if !fin && b.Len() > 0 {
			t.Fatalf("after %d ms: rows drawn before #1's FIN, which came first:\n%s", i+1, b.String())
		}
	}
	// #2's latest, held a moment: not yet.
	if strings.Contains(b.String(), "P. 100:101(1)") {
		t.Errorf("a segment held back a moment was drawn:\n%s", b.String())
	}
	l.Flush()
	if !strings.Contains(b.String(), "P. 100:101(1)") {
		t.Errorf("Flush left a segment held back:\n%s", b.String())
	}
	if s := rowStamps(b.String()); len(s) != 201 || !slices.IsSorted(s) {
		t.Errorf("%d rows, want 201 in time order:\n%s", len(s), b.String())
	}
}

// rowStamps is the time in the margin of each of a live ladder's rows.
func rowStamps(ladder string) []string {
	return regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d\.\d{6}`).FindAllString(ladder, -1)
}

// A segment our stack sent that the fault layer dropped is drawn once,
// crossed, however the stream interleaves: the fault event comes after
// the segment (the fault layer is below the tracker), and the tracker may
// queue, between the two, the peer's segment (read on another goroutine),
// our next segment (a batch is traced whole before the fault layer takes
// its first packet) or a state change of the stack. The rows stay in time
// order: what came between is drawn after the cross.
func TestLiveDropAfterInterleaved(t *testing.T) {
	id := inspect.ConnID{Local: netip.MustParseAddrPort("10.0.2.2:9999"), Remote: netip.MustParseAddrPort("10.0.1.2:40000")}
	const iss, irs = 1000, 5000
	t0 := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	at := func(us int) time.Time { return t0.Add(time.Duration(us) * time.Microsecond) }
	seg := func(us int, g inspect.Segment) inspect.Event {
		g.End = g.Seq + g.Len
		return inspect.Event{Time: at(us), Kind: inspect.KindSegment, Stack: inspect.StackNetstack, Conn: id,
			ISS: iss, ISSKnown: true, IRS: irs, IRSKnown: true, Seg: &g}
	}
	ours := seg(10, inspect.Segment{Out: true, Flags: header.TCPFlagPsh | header.TCPFlagAck, Seq: 1, Len: 4, Ack: 5, Win: 1000, WScale: -1})
	fault := inspect.Event{Time: at(12), Kind: inspect.KindFault, Stack: inspect.StackNetstack, Conn: id, Rule: 1,
		ISS: iss, ISSKnown: true, IRS: irs, IRSKnown: true,
		Cause: "injected drop, out rule #1 (out data drop count=1): 10.0.2.2:9999 > 10.0.1.2:40000: Flags [P.], seq 1001:1005, ack 5005, length 4"}
	retx := seg(200010, inspect.Segment{Out: true, Flags: header.TCPFlagPsh | header.TCPFlagAck, Seq: 1, Len: 4, Ack: 18, Win: 1000, WScale: -1})
	for _, tc := range []struct {
		name    string
		between inspect.Event
		label   string // what the row of between shows
	}{
		{"peer's segment", seg(11, inspect.Segment{Flags: header.TCPFlagPsh | header.TCPFlagAck, Seq: 5, Len: 13, Ack: 1, Win: 2000, WScale: -1}), "P. 5:18(13) ack 1 win 2000"},
		{"our next segment", seg(11, inspect.Segment{Out: true, Flags: header.TCPFlagPsh | header.TCPFlagAck, Seq: 5, Len: 6, Ack: 5, Win: 1000, WScale: -1}), "P. 5:11(6) ack 5 win 1000"},
		{"state change", inspect.Event{Time: at(11), Kind: inspect.KindState, Stack: inspect.StackNetstack, Conn: id,
			From: inspect.Established, To: inspect.CloseWait}, "CLOSE-WAIT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			l, err := NewLive(&b, LadderOptions{Width: 100})
			if err != nil {
				t.Fatal(err)
			}
			clock := t0
			l.now = func() time.Time { return clock }
			for _, ev := range []inspect.Event{ours, tc.between, fault, retx} {
				l.Add(ev)
			}
			l.Flush()
			out := b.String()
			if n := strings.Count(out, "P. 1:5(4) ack 5 "); n != 1 {
				t.Fatalf("our dropped segment drawn %d times, want once:\n%s", n, out)
			}
			lines := strings.Split(out, "\n")
			row := func(s string) int {
				return slices.IndexFunc(lines, func(ln string) bool { return strings.Contains(ln, s) })
			}
			cross, label, between, again := row("dropped X"), row("P. 1:5(4) ack 5 "), row(tc.label), row("P. 1:5(4) ack 18")
			if cross < 0 || label < 0 || label > cross || strings.Count(out, "X") != 1 {
				t.Fatalf("our segment not drawn crossed (once):\n%s", out)
			}
			if !(cross < between && between < again) {
				t.Errorf("rows out of order: the cross on line %d, %q on %d, the retransmission on %d:\n%s", cross, tc.label, between, again, out)
			}
			if stamps := rowStamps(out); !slices.IsSorted(stamps) {
				t.Errorf("rows not in time order %q:\n%s", stamps, out)
			}
		})
	}
}
