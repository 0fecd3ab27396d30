// Package web serves tcp-upper-lab web: a live page for a running server,
// fed through its control socket. The page shows the connection table in
// ss -tani's columns, the stream of the stack's events, its counters and
// fault rules, and per connection its ladder (an arrow per segment, states
// and timers from the events) and cwnd, srtt/rttvar/rto and in-flight
// graphs. Updates are pushed with server-sent events (a page's events
// gathered for BatchEvery into one message); the assets are embedded.
//
// The page never slows the stack: the control socket already drops events
// for a reader that falls behind (and says how many), and here each
// browser has a bounded queue: what it cannot take is dropped and counted,
// and the page shows both counts with the events it received.
package web

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tcp-upper/tcp-upper/netstack/control"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
	"github.com/tcp-upper/tcp-upper/viz"
)

//go:embed assets
var assets embed.FS

// Options configure the web view.
type Options struct {
	// Resolve finds the server's control socket (again after the server
	// restarts).
	Resolve func() (string, error)
	// AllowControl lets the page change fault rules, with Token.
	AllowControl bool
	// Token must come with every request that changes something.
	Token string
	// Hosts, if set, are the Host headers accepted (the address served
	// and its localhost name): a page of another site that a rebinding
	// DNS name points at this address is refused.
	Hosts []string
	Log   *slog.Logger
}

// Limits: how much the view keeps and queues.
const (
	// MaxConns is how many connections' events are kept (the oldest
	// closed ones go first).
	MaxConns = 2000
	// MaxEventsPerConn is how many events a connection keeps.
	MaxEventsPerConn = 4000
	// MaxSegmentsPerConn is how many segments (the ladder's arrows) a
	// connection keeps: its first ones; the others are counted and the
	// page says how many its ladder lacks.
	MaxSegmentsPerConn = 4000
	// ClientQueue is how many messages (an event each, or a table,
	// counters, rules) a browser may fall behind before its messages are
	// dropped (and counted on its page).
	ClientQueue = 4096
	// BatchEvery is how long a page's events are gathered before they
	// are written, as one message: at thousands of events a second a
	// message each would cost the browser more than drawing them.
	BatchEvery = 50 * time.Millisecond
	// Recent is how many of the latest events a new page is sent first.
	Recent = 200
	// pollEvery is how often the table, counters and rules are fetched;
	// a state change fetches the table sooner.
	pollEvery = time.Second
	minPoll   = 200 * time.Millisecond
)

// NewToken returns a random token for --allow-control.
func NewToken() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// View is the web view's state.
type View struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	conns   map[inspect.ConnID]*connEvents
	clients map[*client]struct{}
	status  statusMsg
	last    map[string][]byte // latest ss/stats/faults message, for a new page
	recent  [][]byte          // the latest events' JSON, for a new page

	ssSoon chan struct{}
	// lostUpstream is how many events and segment events the server's
	// control socket dropped for us (we read too slowly), summed over the
	// streams of every life of the server: each stream counts its own
	// from zero.
	lostUpstream atomic.Uint64
}

type connEvents struct {
	evs  []inspect.Event
	segs []inspect.Event // segment events, for the ladder's arrows
	// evsNotKept and segsNotKept are how many events and segments came
	// after MaxEventsPerConn and MaxSegmentsPerConn.
	evsNotKept, segsNotKept int
	last                    time.Time
}

type client struct {
	ch chan outMsg
	// droppedEvents and droppedOther count the stack's events and the
	// other updates (table, counters, rules) this page's queue had no
	// room for.
	droppedEvents, droppedOther atomic.Uint64
}

// outMsg is a message queued for a page: an event's JSON (event), written
// with the others queued with it as one "events" message, or a whole
// server-sent event.
type outMsg struct {
	event bool
	b     []byte
}

// droppedMsg is what the page is told of its drops (SSE "dropped").
type droppedMsg struct {
	Events uint64 `json:"events"`
	Other  uint64 `json:"other"`
}

type statusMsg struct {
	Up     bool   `json:"up"`
	Server string `json:"server,omitempty"`
	Error  string `json:"error,omitempty"`
	Since  string `json:"since"`
}

// New returns a view; Run connects it to the server.
func New(opts Options) *View {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	return &View{opts: opts, log: opts.Log, conns: map[inspect.ConnID]*connEvents{}, clients: map[*client]struct{}{},
		last: map[string][]byte{}, ssSoon: make(chan struct{}, 1),
		status: statusMsg{Error: "connecting to the server", Since: time.Now().Format(time.RFC3339)}}
}

// Run follows the server until ctx ends: its event stream, and every
// second (sooner after a state change) its table, counters and rules. When
// the server goes away it says so and connects again.
func (v *View) Run(ctx context.Context) {
	for ctx.Err() == nil {
		path, err := v.opts.Resolve()
		if err == nil {
			err = v.follow(ctx, path)
		}
		if ctx.Err() != nil {
			return
		}
		v.setStatus(statusMsg{Up: false, Error: err.Error()})
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (v *View) setStatus(s statusMsg) {
	s.Since = time.Now().Format(time.RFC3339)
	v.mu.Lock()
	changed := s.Up != v.status.Up || s.Error != v.status.Error
	v.status = s
	v.mu.Unlock()
	if changed {
		v.broadcast("status", s)
	}
}

// follow serves one life of the server.
func (v *View) follow(ctx context.Context, path string) error {
	evc, err := control.Dial(path)
	if err != nil {
		return fmt.Errorf("the server is not reachable (%v); retrying", err)
	}
	defer evc.Close()
	h, err := evc.Call("hello", nil)
	if err != nil {
		return fmt.Errorf("the server did not answer (%v); retrying", err)
	}
	poll, err := control.Dial(path)
	if err != nil {
		return err
	}
	defer poll.Close()
	v.setStatus(statusMsg{Up: true, Server: fmt.Sprintf("%s pid %d, %s on %s, started %s", h.Hello.Program, h.Hello.PID, h.Hello.Addr, h.Hello.TUN, h.Hello.Started.Format(time.RFC3339))})

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pollErr := make(chan error, 1)
	go func() { pollErr <- v.poller(ctx, poll) }()
	var streamLost uint64 // this stream's count, from zero
	err = evc.Stream(ctx, "events", control.EventsArgs{Segments: true}, func(r *control.Response) error {
		if v.addLostUpstream(&streamLost, r.Dropped) {
			// A state change may be among the events lost: fetch the
			// table soon, as after one.
			v.tableSoon()
		}
		if r.Event != nil {
			v.addEvent(r.Event)
		}
		return nil
	})
	cancel()
	<-pollErr
	if ctx.Err() != nil && err == nil {
		return nil
	}
	return fmt.Errorf("lost the server (%v); waiting for it to come back", err)
}

// addLostUpstream adds to lostUpstream what a stream's Dropped, which
// counts from zero in each stream, grew by since its last (*streamLost),
// and reports whether it grew.
func (v *View) addLostUpstream(streamLost *uint64, dropped uint64) bool {
	if dropped <= *streamLost {
		return false
	}
	v.lostUpstream.Add(dropped - *streamLost)
	*streamLost = dropped
	return true
}

func (v *View) poller(ctx context.Context, c *control.Client) error {
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		if err := v.pollOnce(c); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-v.ssSoon:
			// At most five tables a second however many states change:
			// with a thousand connections a table is large.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(minPoll):
			}
		}
	}
}

func (v *View) pollOnce(c *control.Client) error {
	r, err := c.Call("ss", nil)
	if err != nil {
		return err
	}
	v.broadcast("ss", r.Sockets)
	r, err = c.Call("stats", nil)
	if err != nil {
		return err
	}
	v.broadcast("stats", map[string]any{"counters": r.Counters, "lost_upstream": v.lostUpstream.Load()})
	args, _ := json.Marshal(control.FaultArgs{Op: "list"})
	r, err = c.Call("fault", json.RawMessage(args))
	if err == nil && len(r.Data) > 0 {
		v.broadcast("faults", json.RawMessage(r.Data))
	}
	return nil
}

func (v *View) addEvent(ev *inspect.Event) {
	v.mu.Lock()
	ce := v.conns[ev.Conn]
	if ce == nil {
		if len(v.conns) >= MaxConns {
			v.evictLocked()
		}
		ce = &connEvents{}
		v.conns[ev.Conn] = ce
	}
	ce.last = ev.Time
	if ev.Kind == inspect.KindSegment {
		// For the connection's ladder only: the page's event list is the
		// stack's events.
		if len(ce.segs) < MaxSegmentsPerConn {
			ce.segs = append(ce.segs, *ev)
		} else {
			ce.segsNotKept++
		}
		v.mu.Unlock()
		return
	}
	if len(ce.evs) < MaxEventsPerConn {
		ce.evs = append(ce.evs, *ev)
	} else {
		ce.evsNotKept++
	}
	v.mu.Unlock()
	v.broadcast("event", ev)
	if ev.Kind == inspect.KindState {
		v.tableSoon()
	}
}

// tableSoon has the poller fetch the table within minPoll.
func (v *View) tableSoon() {
	select {
	case v.ssSoon <- struct{}{}:
	default:
	}
}

// evictLocked forgets the connection heard from least recently.
func (v *View) evictLocked() {
	var oldest inspect.ConnID
	var t time.Time
	for id, ce := range v.conns {
		if t.IsZero() || ce.last.Before(t) {
			oldest, t = id, ce.last
		}
	}
	delete(v.conns, oldest)
}

// broadcast queues a message for every page; a page whose queue is full
// loses it (counted).
func (v *View) broadcast(typ string, data any) {
	b, err := json.Marshal(data)
	if err != nil {
		return
	}
	msg := outMsg{event: typ == "event", b: b}
	if !msg.event {
		msg.b = []byte("event: " + typ + "\ndata: " + string(b) + "\n\n")
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if typ == "ss" || typ == "stats" || typ == "faults" || typ == "status" {
		v.last[typ] = msg.b
	}
	if msg.event {
		if len(v.recent) >= Recent {
			v.recent = append(v.recent[:0], v.recent[1:]...)
		}
		v.recent = append(v.recent, b)
	}
	for c := range v.clients {
		select {
		case c.ch <- msg:
		default:
			if typ == "event" {
				c.droppedEvents.Add(1)
			} else {
				c.droppedOther.Add(1)
			}
		}
	}
}

// Handler is the web view's HTTP handler.
func (v *View) Handler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(assets, "assets")
	files := http.FileServerFS(static)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			v.bad(w, r, http.StatusMethodNotAllowed, "read-only page: GET only")
			return
		}
		switch r.URL.Path {
		case "/", "/app.js", "/style.css":
			w.Header().Set("Cache-Control", "no-store")
			files.ServeHTTP(w, r)
		default:
			v.bad(w, r, http.StatusNotFound, "no such page")
		}
	})
	mux.HandleFunc("/events", v.serveEvents)
	mux.HandleFunc("/conn", v.serveConn)
	mux.HandleFunc("/fault", v.serveFault)
	if len(v.opts.Hosts) == 0 {
		return mux
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, h := range v.opts.Hosts {
			if strings.EqualFold(r.Host, h) {
				mux.ServeHTTP(w, r)
				return
			}
		}
		v.bad(w, r, http.StatusForbidden, "Host "+r.Host+" is not this server's address")
	})
}

// LocalHosts are the Host headers a page served at addr (a listener's
// address) arrives with: the address itself, and localhost with its port
// for a loopback one. For an unspecified address (0.0.0.0) any host is
// accepted: nil.
func LocalHosts(addr string) []string {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || ap.Addr().IsUnspecified() {
		return nil
	}
	hosts := []string{ap.String()}
	if ap.Addr().IsLoopback() {
		hosts = append(hosts, fmt.Sprintf("localhost:%d", ap.Port()))
	}
	return hosts
}

// bad answers a bad request with a 4xx and logs one line.
func (v *View) bad(w http.ResponseWriter, r *http.Request, code int, msg string) {
	v.log.Warn("web: refused", "method", r.Method, "path", r.URL.Path, "from", r.RemoteAddr, "status", code, "why", msg)
	http.Error(w, msg, code)
}

func (v *View) serveEvents(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		v.bad(w, r, http.StatusMethodNotAllowed, "GET only")
		return
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		v.bad(w, r, http.StatusInternalServerError, "streaming unsupported")
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	c := &client{ch: make(chan outMsg, ClientQueue)}
	v.mu.Lock()
	st, _ := json.Marshal(v.status)
	w.Write([]byte("event: status\ndata: " + string(st) + "\n\n"))
	for _, k := range []string{"ss", "stats", "faults"} {
		if m := v.last[k]; m != nil {
			w.Write(m)
		}
	}
	hello, _ := json.Marshal(map[string]any{"control": v.opts.AllowControl})
	w.Write([]byte("event: hello\ndata: " + string(hello) + "\n\n"))
	w.Write(eventsMsg(v.recent))
	v.clients[c] = struct{}{}
	v.mu.Unlock()
	defer func() {
		v.mu.Lock()
		delete(v.clients, c)
		v.mu.Unlock()
	}()
	fl.Flush()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	batch := time.NewTimer(BatchEvery)
	batch.Stop()
	var reported droppedMsg
	// What goes out at the next write: the messages taken from the queue,
	// in order, consecutive events gathered into one.
	var out []byte
	var evs [][]byte
	queued, waiting := 0, false
	take := func(m outMsg) {
		queued++
		if m.event {
			evs = append(evs, m.b)
			return
		}
		out = append(out, eventsMsg(evs)...)
		evs = evs[:0]
		out = append(out, m.b...)
	}
	write := func() error {
		out = append(out, eventsMsg(evs)...)
		evs, queued = evs[:0], 0
		_, err := w.Write(out)
		out = out[:0]
		fl.Flush()
		return err
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case m := <-c.ch:
			take(m)
			for n := len(c.ch); n > 0; n-- {
				take(<-c.ch)
			}
			// Out after BatchEvery, or at once when a queue's worth
			// is waiting (what the page is sent stays bounded).
			if queued >= ClientQueue {
				if write() != nil {
					return
				}
			} else if !waiting {
				waiting = true
				batch.Reset(BatchEvery)
			}
		case <-batch.C:
			waiting = false
			if write() != nil {
				return
			}
		case <-tick.C:
			if d := (droppedMsg{c.droppedEvents.Load(), c.droppedOther.Load()}); d != reported {
				reported = d
				b, _ := json.Marshal(d)
				out = append(out, "event: dropped\ndata: "+string(b)+"\n\n"...)
			} else {
				out = append(out, ": keep-alive\n\n"...)
			}
			if write() != nil {
				return
			}
		}
	}
}

// eventsMsg is one server-sent "events" message carrying evs (each an
// event's JSON) as an array; nothing for none.
func eventsMsg(evs [][]byte) []byte {
	if len(evs) == 0 {
		return nil
	}
	n := 32
	for _, e := range evs {
		n += len(e) + 1
	}
	b := make([]byte, 0, n)
	b = append(b, "event: events\ndata: ["...)
	for i, e := range evs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, e...)
	}
	return append(b, "]\n\n"...)
}

// serveConn answers /conn?local=A:P&remote=B:P: the connection's ladder
// (its segments, and its stack's states and timers) and graphs, from the
// events and segments kept.
func (v *View) serveConn(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		v.bad(w, r, http.StatusMethodNotAllowed, "GET only")
		return
	}
	local, err1 := netip.ParseAddrPort(r.URL.Query().Get("local"))
	remote, err2 := netip.ParseAddrPort(r.URL.Query().Get("remote"))
	if err1 != nil || err2 != nil {
		v.bad(w, r, http.StatusBadRequest, "want /conn?local=ADDR:PORT&remote=ADDR:PORT")
		return
	}
	v.mu.Lock()
	ce := v.conns[inspect.ConnID{Local: local, Remote: remote}]
	var evs []inspect.Event
	nEvents, nSegs, evsNotKept, segsNotKept := 0, 0, 0, 0
	if ce != nil {
		evs = append(append(evs, ce.evs...), ce.segs...)
		nEvents, nSegs, evsNotKept, segsNotKept = len(ce.evs), len(ce.segs), ce.evsNotKept, ce.segsNotKept
	}
	v.mu.Unlock()
	if len(evs) == 0 {
		v.bad(w, r, http.StatusNotFound, "no events of that connection seen since this page's server started")
		return
	}
	s := viz.Build(nil, evs)
	out := struct {
		Ladder string            `json:"ladder"`
		Graphs map[string]string `json:"graphs"`
		// Events and Segments are how many of the stack's events and
		// segments the view kept of the connection.
		Events   int `json:"events"`
		Segments int `json:"segments"`
		// EventsNotKept and SegmentsNotKept: the ladder and graphs lack
		// the events after the first MaxEventsPerConn and the segments
		// after the first MaxSegmentsPerConn.
		EventsNotKept   int `json:"events_not_kept,omitempty"`
		SegmentsNotKept int `json:"segments_not_kept,omitempty"`
	}{Graphs: map[string]string{}, Events: nEvents, Segments: nSegs, EventsNotKept: evsNotKept, SegmentsNotKept: segsNotKept}
	if len(s.Conns) > 0 {
		out.Ladder = viz.LadderHTML(s, s.Conns[0], 80)
	}
	for _, f := range viz.Figures(s) {
		name := f.Name[strings.Index(f.Name, "-")+1:]
		if name == "cwnd" || name == "rtt" || name == "inflight" {
			out.Graphs[name] = f.SVG
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(out)
}

// serveFault changes the fault rules: only with --allow-control, only
// with the token, only POST.
func (v *View) serveFault(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		v.bad(w, r, http.StatusMethodNotAllowed, "POST only")
		return
	}
	if !v.opts.AllowControl {
		v.bad(w, r, http.StatusForbidden, "read-only: start tcp-upper-lab web with --allow-control to change faults")
		return
	}
	tok := r.Header.Get("X-Token")
	if tok == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(v.opts.Token)) != 1 {
		v.bad(w, r, http.StatusForbidden, "missing or wrong token (X-Token: the one printed at start)")
		return
	}
	var a control.FaultArgs
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&a); err != nil {
		v.bad(w, r, http.StatusBadRequest, `want {"op":"add","rule":"..."} or {"op":"del","id":N} or {"op":"clear"}`)
		return
	}
	if a.Op != "add" && a.Op != "del" && a.Op != "clear" {
		v.bad(w, r, http.StatusBadRequest, "op: add, del or clear")
		return
	}
	path, err := v.opts.Resolve()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	c, err := control.Dial(path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer c.Close()
	args, _ := json.Marshal(a)
	resp, err := c.Call("fault", json.RawMessage(args))
	if err != nil {
		var se *control.ServerError
		if errors.As(err, &se) {
			v.bad(w, r, http.StatusBadRequest, se.Msg)
			return
		}
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	v.log.Info("web: fault rules changed", "op", a.Op, "rule", a.Rule, "id", a.ID, "from", r.RemoteAddr)
	v.broadcast("faults", json.RawMessage(resp.Data))
	w.Header().Set("Content-Type", "application/json")
	w.Write(resp.Data)
}
