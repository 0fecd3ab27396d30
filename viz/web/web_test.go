package web

import (
	"encoding/json"
	"errors"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tcp-upper/tcp-upper/netstack/inspect"
	"github.com/tcp-upper/tcp-upper/viz"
)

func events(t *testing.T) *View {
	t.Helper()
	v := New(Options{Resolve: func() (string, error) { return "", errors.New("no server in this test") }, AllowControl: true, Token: "secret"})
	evs, err := viz.ReadEvents("../testdata/data-loss-rto/events.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	for i := range evs {
		v.addEvent(&evs[i])
	}
	return v
}

// Requests that change nothing or are malformed get a 4xx; the page, its
// assets and a connection's ladder and graphs are served.
func TestHandler(t *testing.T) {
	v := events(t)
	h := v.Handler()
	do := func(method, url, token, body string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, url, strings.NewReader(body))
		if token != "" {
			r.Header.Set("X-Token", token)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	for _, c := range []struct {
		method, url, token, body string
		code                     int
	}{
		{"GET", "/", "", "", 200},
		{"GET", "/app.js", "", "", 200},
		{"GET", "/nope", "", "", 404},
		{"POST", "/", "", "", 405},
		{"POST", "/fault", "", `{"op":"clear"}`, 403},
		{"POST", "/fault", "wrong", `{"op":"clear"}`, 403},
		{"POST", "/fault", "secret", `not json`, 400},
		{"POST", "/fault", "secret", `{"op":"explode"}`, 400},
		{"GET", "/fault", "secret", "", 405},
		{"GET", "/conn?local=x", "", "", 400},
		{"GET", "/conn?local=10.0.2.2:9999&remote=10.0.1.2:1", "", "", 404},
	} {
		if w := do(c.method, c.url, c.token, c.body); w.Code != c.code {
			t.Errorf("%s %s (token %q): %d, want %d", c.method, c.url, c.token, w.Code, c.code)
		}
	}
	w := do("GET", "/conn?local=10.0.2.2:9999&remote=10.0.1.2:49004", "", "")
	var out struct {
		Ladder string            `json:"ladder"`
		Graphs map[string]string `json:"graphs"`
	}
	if w.Code != 200 || json.Unmarshal(w.Body.Bytes(), &out) != nil {
		t.Fatalf("/conn: %d %s", w.Code, w.Body.String())
	}
	for _, want := range []string{"SYN-RCVD", "ESTABLISHED", "RTO fired", "title=\"RFC 6298"} {
		if !strings.Contains(out.Ladder, want) {
			t.Errorf("ladder lacks %q:\n%s", want, out.Ladder)
		}
	}
	if !strings.Contains(out.Graphs["cwnd"], `class="cwnd"`) || !strings.Contains(out.Graphs["rtt"], `class="srtt"`) {
		t.Errorf("graphs %v", out.Graphs)
	}
	// The round-trip graph draws rttvar when the events carry it
	// (blackhole's do; data-loss-rto's were recorded before).
	if strings.Contains(out.Graphs["rtt"], `class="rttvar"`) {
		t.Errorf("data-loss-rto: an rttvar line without rttvar in the events")
	}
	bh := New(Options{Resolve: v.opts.Resolve})
	evs, err := viz.ReadEvents("../testdata/blackhole/events.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	for i := range evs {
		bh.addEvent(&evs[i])
	}
	r0 := httptest.NewRequest("GET", "/conn?local=10.0.2.2:9999&remote=10.0.1.2:44580", nil)
	w0 := httptest.NewRecorder()
	bh.Handler().ServeHTTP(w0, r0)
	out.Graphs = nil
	if w0.Code != 200 || json.Unmarshal(w0.Body.Bytes(), &out) != nil {
		t.Fatalf("/conn of blackhole: %d %s", w0.Code, w0.Body.String())
	}
	for _, c := range []string{`class="srtt"`, `class="rttvar"`, `class="rto"`} {
		if !strings.Contains(out.Graphs["rtt"], c) {
			t.Errorf("blackhole's round-trip graph on the page lacks %s", c)
		}
	}
	// Read-only without --allow-control, whatever the token.
	ro := New(Options{Resolve: v.opts.Resolve, Token: "secret"}).Handler()
	r := httptest.NewRequest("POST", "/fault", strings.NewReader(`{"op":"clear"}`))
	r.Header.Set("X-Token", "secret")
	rw := httptest.NewRecorder()
	ro.ServeHTTP(rw, r)
	if rw.Code != 403 {
		t.Errorf("read-only view took a change: %d", rw.Code)
	}
}

// A page that does not read loses messages, counted; the view never waits.
func TestSlowPageDrops(t *testing.T) {
	v := New(Options{Resolve: func() (string, error) { return "", errors.New("none") }})
	c := &client{ch: make(chan outMsg, 4)}
	v.clients[c] = struct{}{}
	for i := 0; i < 10; i++ {
		v.broadcast("event", i)
	}
	v.broadcast("stats", 0)
	if len(c.ch) != 4 || c.droppedEvents.Load() != 6 || c.droppedOther.Load() != 1 {
		t.Errorf("queued %d, dropped %d events and %d other; want 4, 6 and 1", len(c.ch), c.droppedEvents.Load(), c.droppedOther.Load())
	}
	// A page that comes later is sent the latest events first.
	if len(v.recent) != 10 || string(v.recent[9]) != "9" {
		t.Errorf("recent events %q", v.recent)
	}
	if m := string(eventsMsg(v.recent[8:])); m != "event: events\ndata: [8,9]\n\n" {
		t.Errorf("events message %q", m)
	}
}

// A Host header other than the address served (a rebinding DNS name) is
// refused.
func TestHostCheck(t *testing.T) {
	hosts := LocalHosts("127.0.0.1:8080")
	if len(hosts) != 2 || hosts[1] != "localhost:8080" || LocalHosts("0.0.0.0:8080") != nil {
		t.Fatalf("hosts %q", hosts)
	}
	h := New(Options{Resolve: func() (string, error) { return "", errors.New("none") }, Hosts: hosts}).Handler()
	for host, code := range map[string]int{"127.0.0.1:8080": 200, "localhost:8080": 200, "evil.example:8080": 403} {
		r := httptest.NewRequest("GET", "/", nil)
		r.Host = host
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != code {
			t.Errorf("Host %s: %d, want %d", host, w.Code, code)
		}
	}
}

// Segment events draw the connection's ladder arrows; they are not sent
// to the page's event list; past MaxSegmentsPerConn they are counted, and
// the stack's events past MaxEventsPerConn too.
func TestConnLadderSegments(t *testing.T) {
	v := New(Options{Resolve: func() (string, error) { return "", errors.New("none") }})
	id := inspect.ConnID{Local: netip.MustParseAddrPort("10.0.2.2:9999"), Remote: netip.MustParseAddrPort("10.0.1.2:40000")}
	t0 := time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC)
	at := func(us int) time.Time { return t0.Add(time.Duration(us) * time.Microsecond) }
	seg := func(us int, out bool, flags header.TCPFlags, seq, ack, n uint32) *inspect.Event {
		return &inspect.Event{Time: at(us), Kind: inspect.KindSegment, Conn: id, ISS: 1000, IRS: 5000, ISSKnown: true, IRSKnown: true,
			Seg: &inspect.Segment{Out: out, Flags: flags, Seq: seq, End: seq + n, Ack: ack, Len: n, Win: 64000, RawWin: 500, MSS: 1460, WScale: 7}}
	}
	syn, ack, psh := header.TCPFlagSyn, header.TCPFlagAck, header.TCPFlagPsh|header.TCPFlagAck
	for _, ev := range []*inspect.Event{
		seg(0, false, syn, 0, 0, 0),
		{Time: at(10), Kind: inspect.KindState, Conn: id, From: inspect.Listen, To: inspect.SynRcvd, ISS: 1000, IRS: 5000, ISSKnown: true, IRSKnown: true},
		seg(20, true, syn|ack, 0, 1, 0),
		seg(30, false, ack, 1, 1, 0),
		{Time: at(40), Kind: inspect.KindState, Conn: id, From: inspect.SynRcvd, To: inspect.Established, ISS: 1000, IRS: 5000, ISSKnown: true, IRSKnown: true},
		seg(50, false, psh, 1, 1, 4),
	} {
		v.addEvent(ev)
	}
	for _, m := range v.recent {
		if strings.Contains(string(m), `"kind":"segment"`) {
			t.Errorf("a segment went to the page's event list: %s", m)
		}
	}
	w := httptest.NewRecorder()
	v.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/conn?local=10.0.2.2:9999&remote=10.0.1.2:40000", nil))
	var out struct {
		Ladder           string `json:"ladder"`
		Events, Segments int
		SegmentsNotKept  int `json:"segments_not_kept"`
		EventsNotKept    int `json:"events_not_kept"`
	}
	if w.Code != 200 || json.Unmarshal(w.Body.Bytes(), &out) != nil {
		t.Fatalf("/conn: %d %s", w.Code, w.Body.String())
	}
	if out.Events != 2 || out.Segments != 4 {
		t.Errorf("/conn counts %d events and %d segments, want the 2 states and 4 segments", out.Events, out.Segments)
	}
	re := regexp.MustCompile(`(?s)-+ S 0 win 500 mss 1460 ws 7 -+&gt;\|.*\| SYN-RCVD.*\|&lt;-+ S\. 0 ack 1 win 500 mss 1460 ws 7 -+\|.*-+ \. ack 1 win 64000 -+&gt;\|.*\| ESTABLISHED.*-+ P\. 1:5\(4\) ack 1 win 64000 -+&gt;\|`)
	if !re.MatchString(out.Ladder) {
		t.Errorf("ladder lacks the arrows and states in order:\n%s", out.Ladder)
	}
	for i := 0; i < MaxSegmentsPerConn; i++ {
		v.addEvent(seg(100+i, false, ack, 5, 1, 0))
	}
	w = httptest.NewRecorder()
	v.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/conn?local=10.0.2.2:9999&remote=10.0.1.2:40000", nil))
	if json.Unmarshal(w.Body.Bytes(), &out) != nil || out.SegmentsNotKept != 4 {
		t.Errorf("segments not kept: %d, want 4", out.SegmentsNotKept)
	}
	if out.EventsNotKept != 0 {
		t.Errorf("events not kept: %d of 2", out.EventsNotKept)
	}
	for i := 0; i < MaxEventsPerConn+1; i++ {
		v.addEvent(&inspect.Event{Time: at(10000 + i), Kind: inspect.KindRetransmit, Conn: id, Cause: "test"})
	}
	w = httptest.NewRecorder()
	v.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/conn?local=10.0.2.2:9999&remote=10.0.1.2:40000", nil))
	if json.Unmarshal(w.Body.Bytes(), &out) != nil || out.Events != MaxEventsPerConn || out.EventsNotKept != 3 {
		t.Errorf("after %d more events: %d kept, %d not kept; want %d and 3", MaxEventsPerConn+1, out.Events, out.EventsNotKept, MaxEventsPerConn)
	}
}

// What the server's control socket dropped for the view is summed over
// its streams: each counts from zero, and a restarted server's must not
// take the count down.
func TestLostUpstreamSumsStreams(t *testing.T) {
	v := New(Options{Resolve: func() (string, error) { return "", errors.New("none") }})
	var first, second uint64
	for _, c := range []struct {
		stream  *uint64
		dropped uint64
		grew    bool
		total   uint64
	}{
		{&first, 0, false, 0},
		{&first, 5, true, 5},
		{&first, 5, false, 5},
		{&first, 7, true, 7},
		// The server restarted: a new stream, its count from zero.
		{&second, 0, false, 7},
		{&second, 3, true, 10},
		{&second, 4, true, 11},
	} {
		if grew := v.addLostUpstream(c.stream, c.dropped); grew != c.grew || v.lostUpstream.Load() != c.total {
			t.Errorf("a stream at %d: grew %v, total %d; want %v, %d", c.dropped, grew, v.lostUpstream.Load(), c.grew, c.total)
		}
	}
}
