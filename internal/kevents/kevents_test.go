package kevents

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/internal/ktrace"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
)

// fakeDiag is a socket table the test edits.
type fakeDiag struct {
	entries map[[2]netip.AddrPort]Entry
	err     error
}

func (d *fakeDiag) Lookup(local, remote netip.AddrPort) (Entry, bool, error) {
	if d.err != nil {
		return Entry{}, false, d.err
	}
	e, ok := d.entries[[2]netip.AddrPort{local, remote}]
	return e, ok, nil
}

var (
	server = netip.MustParseAddrPort("10.0.2.2:9999")
	client = netip.MustParseAddrPort("10.0.1.2:40000")
	t0     = time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC)
)

const (
	ourPID   = 100
	otherPID = 200
	sk       = 0xffff888001
)

func ours(pid int32) bool { return pid == ourPID }

// at is t0 plus ms milliseconds.
func at(ms float64) time.Time { return t0.Add(time.Duration(ms * float64(time.Millisecond))) }

func state(ms float64, sk uint64, src netip.AddrPort, from, to ktrace.TCPState) ktrace.Record {
	return ktrace.Record{Time: at(ms), Kind: ktrace.SetState, PID: ourPID, Sk: sk, Src: src, Dst: server, OldState: from, NewState: to}
}

// clientLife is a kernel client's life up to FIN_WAIT2 -> CLOSE, as the
// tracepoints tell it: SYN-SENT with port 0, a tcp_probe once established.
func clientLife(sk uint64, pid int32) []ktrace.Record {
	noPort := netip.AddrPortFrom(client.Addr(), 0)
	syn := state(0, sk, noPort, ktrace.TCPClose, ktrace.TCPSynSent)
	syn.PID = pid
	return []ktrace.Record{
		syn,
		state(0.3, sk, client, ktrace.TCPSynSent, ktrace.TCPEstablished),
		{Time: at(1), Kind: ktrace.Probe, Sk: sk, Src: client, Dst: server, SndUna: 1001, SndNxt: 1005, SndCwnd: 10, Ssthresh: 0x7fffffff, SndWnd: 64240, RcvWnd: 65160, SRTT: 250 * time.Microsecond},
		state(5, sk, client, ktrace.TCPEstablished, ktrace.TCPFinWait1),
		state(5.2, sk, client, ktrace.TCPFinWait1, ktrace.TCPFinWait2),
		state(5.4, sk, client, ktrace.TCPFinWait2, ktrace.TCPClose),
	}
}

func feed(f *Follower, recs []ktrace.Record) []inspect.Event {
	var out []inspect.Event
	for _, r := range recs {
		out = append(out, f.Record(r)...)
	}
	return out
}

func transitions(evs []inspect.Event) string {
	var s []string
	for _, ev := range evs {
		if ev.Kind == inspect.KindState {
			s = append(s, ev.From.String()+">"+ev.To.String())
		} else {
			s = append(s, string(ev.Kind))
		}
	}
	return strings.Join(s, " ")
}

// The client's life: SYN-SENT (port 0) attributed by Sk and given the
// port once known; TIME-WAIT at the tracepoint's instant with sock_diag's
// timer; CLOSED when a poll finds the entry gone.
func TestClientTimeWait(t *testing.T) {
	// sock_diag is asked 10ms after the tracepoint; the timer started
	// then (60s less 10ms left).
	diag := &fakeDiag{entries: map[[2]netip.AddrPort]Entry{{client, server}: {State: ktrace.TCPTimeWait, Timer: TimeWaitLen - 10*time.Millisecond}}}
	f := New(Options{Host: "ant", Server: server, Ours: ours, Diag: diag, Poll: 100 * time.Millisecond, Now: func() time.Time { return at(15.4) }})
	// Another process's connection to the same server, interleaved with
	// ours: never shown.
	other := clientLife(0xffff888999, otherPID)
	var recs []ktrace.Record
	for i, r := range clientLife(sk, ourPID) {
		recs = append(recs, r, other[i])
	}
	evs := feed(f, recs)
	if got, want := transitions(evs), "CLOSED>SYN-SENT SYN-SENT>ESTABLISHED ESTABLISHED>FIN-WAIT-1 FIN-WAIT-1>FIN-WAIT-2 FIN-WAIT-2>TIME-WAIT"; got != want {
		t.Fatalf("events %s\nwant   %s", got, want)
	}
	for _, ev := range evs {
		if ev.Conn.Local != client || ev.Conn.Remote != server || ev.Stack != "kernel" || ev.Host != "ant" {
			t.Errorf("%s: conn %v, stack %q host %q", ev.Text(), ev.Conn, ev.Stack, ev.Host)
		}
	}
	if !evs[0].Time.Equal(at(0)) || evs[0].N.Known || !strings.Contains(evs[0].Cause, "tracepoint inet_sock_set_state CLOSE -> SYN_SENT") {
		t.Errorf("SYN-SENT: %s", evs[0].Text())
	}
	fw1 := evs[2]
	if !fw1.N.Known || !fw1.N.SeqAbsolute || fw1.N.SndNxt != 1005 || fw1.N.Cwnd != 10 || fw1.N.Missing != inspect.FieldRcvNxt|inspect.FieldRTO|inspect.FieldRTTVar || fw1.N.RTTVarKnown() ||
		!strings.Contains(fw1.Cause, "latest tcp_probe, 4.0ms before") {
		t.Errorf("FIN-WAIT-1 numbers: %s (%+v)", fw1.Text(), fw1.N)
	}
	tw := evs[4]
	if !tw.Time.Equal(at(5.4)) || !strings.Contains(tw.Cause, "tracepoint inet_sock_set_state FIN_WAIT2 -> CLOSE at 08:00:00.005400") || !strings.Contains(tw.Cause, "sock_diag: TIME-WAIT entry, timer 60s, started within 5ms of that instant") {
		t.Errorf("TIME-WAIT: %s", tw.Text())
	}
	if !f.Waiting() {
		t.Fatal("not waiting for the TIME-WAIT entry to go")
	}
	if evs := f.Poll(at(1000)); len(evs) != 0 {
		t.Fatalf("entry still there, yet %s", transitions(evs))
	}
	delete(diag.entries, [2]netip.AddrPort{client, server})
	evs = f.Poll(at(60005.4))
	if transitions(evs) != "TIME-WAIT>CLOSED" {
		t.Fatalf("entry gone: %s", transitions(evs))
	}
	end := evs[0]
	if !end.Time.Equal(at(60005.4)) || end.Held != 60*time.Second || end.N.Known ||
		!strings.Contains(end.Cause, "sock_diag: entry gone, after 60.0s in TIME-WAIT (looked up every 100ms: it went at most 100ms before this time)") {
		t.Errorf("CLOSED: %s (held %v)", end.Text(), end.Held)
	}
	if f.Waiting() || len(f.Poll(at(70000))) != 0 {
		t.Error("still polling a closed connection")
	}
}

// FIN_WAIT2 -> CLOSE without a TIME-WAIT entry (a reset, say) is CLOSED;
// without sock_diag, or when it fails, the event says nobody could tell.
func TestClientCloseWithoutTimeWait(t *testing.T) {
	for _, tc := range []struct {
		name string
		diag Diag
		want string
	}{
		{"no entry", &fakeDiag{}, "the kernel's socket went (tracepoint inet_sock_set_state FIN_WAIT2 -> CLOSE at 08:00:00.005400); sock_diag, 10.0ms later: no entry: no mini-socket took its place, or it had gone already (a RST ends TIME-WAIT on Linux)"},
		{"no diag", nil, "is not known: no sock_diag"},
		{"diag fails", &fakeDiag{err: errors.New("netns gone")}, "is not known: sock_diag: netns gone"},
	} {
		f := New(Options{Host: "ant", Server: server, Ours: ours, Diag: tc.diag, Now: func() time.Time { return at(15.4) }})
		evs := feed(f, clientLife(sk, ourPID))
		last := evs[len(evs)-1]
		if last.From != inspect.FinWait2 || last.To != inspect.Closed || !strings.Contains(last.Cause, tc.want) {
			t.Errorf("%s: %s", tc.name, last.Text())
		}
		if f.Waiting() {
			t.Errorf("%s: polling for a TIME-WAIT entry never seen", tc.name)
		}
	}
}

// The application closed the socket before its FIN was acknowledged: the
// kernel makes it a FIN-WAIT-2 mini-socket (the tracepoint's FIN_WAIT2 ->
// CLOSE), which the peer's FIN turns TIME-WAIT later, unmarked: sock_diag
// shows it, and its timer dates it.
func TestFinWait2MiniSocket(t *testing.T) {
	key := [2]netip.AddrPort{client, server}
	diag := &fakeDiag{entries: map[[2]netip.AddrPort]Entry{key: {State: ktrace.TCPFinWait2, Timer: TimeWaitLen}}}
	now := at(15.4)
	f := New(Options{Host: "ant", Server: server, Ours: ours, Diag: diag, Poll: 100 * time.Millisecond, Now: func() time.Time { return now }})
	evs := feed(f, clientLife(sk, ourPID))
	if got, want := transitions(evs), "CLOSED>SYN-SENT SYN-SENT>ESTABLISHED ESTABLISHED>FIN-WAIT-1 FIN-WAIT-1>FIN-WAIT-2"; got != want {
		t.Fatalf("events %s\nwant   %s (a FIN-WAIT-2 mini-socket is no state change)", got, want)
	}
	if evs := f.Poll(at(115.4)); len(evs) != 0 {
		t.Fatalf("still FIN-WAIT-2, yet %s", transitions(evs))
	}
	// The FIN came at 150ms; the lookup at 215.4ms sees the timer
	// restarted 65.4ms ago.
	diag.entries[key] = Entry{State: ktrace.TCPTimeWait, Timer: TimeWaitLen - 65400*time.Microsecond}
	evs = f.Poll(at(215.4))
	// Dated at the latest it can have been: the timer's 150ms, plus a
	// tick.
	if transitions(evs) != "FIN-WAIT-2>TIME-WAIT" || !evs[0].Time.Equal(at(155)) || !strings.Contains(evs[0].Cause, "FIN-WAIT-2 mini-socket turned TIME-WAIT, which no tracepoint marks, in the 10.0ms before this time (sock_diag: FIN-WAIT-2 entry at 08:00:00.115400, TIME-WAIT entry at 08:00:00.215400, timer 60s") {
		t.Fatalf("TIME-WAIT: %s at %v", transitions(evs), evs)
	}
	delete(diag.entries, key)
	evs = f.Poll(at(60155))
	if transitions(evs) != "TIME-WAIT>CLOSED" || evs[0].Held != 60*time.Second {
		t.Fatalf("CLOSED: %v", evs)
	}

	// The FIN reached the mini-socket between the tracepoint and the
	// first lookup, 50ms after: dated by the timer, not the tracepoint.
	diag.entries[key] = Entry{State: ktrace.TCPTimeWait, Timer: TimeWaitLen - 10*time.Millisecond}
	now = at(65.4)
	f = New(Options{Host: "ant", Server: server, Ours: ours, Diag: diag, Now: func() time.Time { return now }})
	evs = feed(f, clientLife(sk, ourPID))
	last := evs[len(evs)-1]
	if last.To != inspect.TimeWait || !last.Time.Equal(at(60.4)) || !strings.Contains(last.Cause, "in the 10.0ms before this time (its full socket went at ") {
		t.Errorf("TIME-WAIT after the tracepoint: %s", last.Text())
	}
}

// sock_diag is asked when the record is read, not when its turn comes in
// time order: a mini-socket a RST ends right after is still seen.
func TestLookupOnArrival(t *testing.T) {
	key := [2]netip.AddrPort{client, server}
	diag := &fakeDiag{entries: map[[2]netip.AddrPort]Entry{key: {State: ktrace.TCPTimeWait, Timer: TimeWaitLen}}}
	now := at(5.5)
	f := New(Options{Host: "ant", Server: server, Ours: ours, Diag: diag, Now: func() time.Time { return now }})
	recs := clientLife(sk, ourPID)
	feed(f, recs[:5])
	f.Arrived(recs[5])
	delete(diag.entries, key) // the RST
	now = at(20)
	evs := f.Record(recs[5])
	if len(evs) != 1 || evs[0].To != inspect.TimeWait || !evs[0].Time.Equal(at(5.4)) {
		t.Fatalf("events %v: want TIME-WAIT at the tracepoint, from the lookup on arrival", evs)
	}
	if evs := f.Poll(at(120)); transitions(evs) != "TIME-WAIT>CLOSED" {
		t.Errorf("entry gone: %s", transitions(evs))
	}
}

// A new connection bound to the port pair takes the TIME-WAIT entry over:
// TIME-WAIT -> CLOSED at its SYN-SENT, before its own events.
func TestTakeOver(t *testing.T) {
	diag := &fakeDiag{entries: map[[2]netip.AddrPort]Entry{{client, server}: {State: ktrace.TCPTimeWait, Timer: TimeWaitLen}}}
	f := New(Options{Host: "ant", Server: server, Ours: ours, Diag: diag, Now: func() time.Time { return at(5.4) }})
	feed(f, clientLife(sk, ourPID))
	again := clientLife(sk+8, ourPID)
	for i := range again {
		again[i].Time = again[i].Time.Add(20 * time.Millisecond)
	}
	evs := feed(f, again[:2])
	if got, want := transitions(evs), "TIME-WAIT>CLOSED CLOSED>SYN-SENT SYN-SENT>ESTABLISHED"; got != want {
		t.Fatalf("events %s, want %s", got, want)
	}
	if !evs[0].Time.Equal(at(20)) || evs[0].Held != 14600*time.Microsecond || !strings.Contains(evs[0].Cause, "a new connection took the port pair") {
		t.Errorf("take-over: %s (held %v)", evs[0].Text(), evs[0].Held)
	}
	if f.Waiting() {
		t.Error("still polling the old entry")
	}
}

// A RST: the close says which tracepoint told it; no TIME-WAIT lookup.
// The kernel reuses a socket's address: a new socket at the same Sk is a
// new connection, followed only if it is ours.
func TestResetAndSkReuse(t *testing.T) {
	diag := &fakeDiag{entries: map[[2]netip.AddrPort]Entry{{client, server}: {State: ktrace.TCPTimeWait, Timer: time.Minute}}}
	f := New(Options{Host: "ant", Server: server, Ours: ours, Diag: diag})
	recs := clientLife(sk, ourPID)
	recs = append(recs[:5:5], ktrace.Record{Time: at(5.3), Kind: ktrace.ReceiveReset, Sk: sk, Src: client, Dst: server}, recs[5])
	evs := feed(f, recs)
	last := evs[len(evs)-1]
	if last.To != inspect.Closed || !strings.HasPrefix(last.Cause, "RST received (tracepoint tcp_receive_reset)") {
		t.Errorf("reset: %s", last.Text())
	}
	// Sk reused by another process's socket: not ours.
	if evs := feed(f, clientLife(sk, otherPID)); len(evs) != 0 {
		t.Errorf("another process's socket at a reused address: %s", transitions(evs))
	}
}

// A retransmission of the SYN names the port before the SYN-ACK: the held
// SYN-SENT goes out then, in order.
func TestSynRetransmitGivesPort(t *testing.T) {
	f := New(Options{Host: "ant", Server: server, Ours: ours, Diag: &fakeDiag{}})
	recs := clientLife(sk, ourPID)[:1]
	if evs := feed(f, recs); len(evs) != 0 {
		t.Fatalf("SYN-SENT emitted before its port is known: %s", transitions(evs))
	}
	evs := f.Record(ktrace.Record{Time: at(1000), Kind: ktrace.Retransmit, Sk: sk, Src: client, Dst: server, State: ktrace.TCPSynSent})
	if transitions(evs) != "CLOSED>SYN-SENT retransmit" || evs[0].Conn.Local != client || !strings.Contains(evs[1].Cause, "tcp_retransmit_skb") {
		t.Errorf("events %s (%v)", transitions(evs), evs)
	}
}

// A kernel server: its connections by local port, not the listener; the
// passive close goes LAST-ACK -> CLOSED without a lookup.
// Another namespace's socket on the port (not in our sock_diag) is not.
func TestServerByPort(t *testing.T) {
	srv := netip.AddrPortFrom(server.Addr(), 9999)
	elsewhere := netip.MustParseAddrPort("10.0.1.2:14802")
	// sock_diag has the connection when its first record arrives.
	diag := &fakeDiag{entries: map[[2]netip.AddrPort]Entry{{srv, client}: {State: ktrace.TCPEstablished}}}
	f := New(Options{Host: "apple", Port: 9999, Diag: diag})
	rec := func(ms float64, sk uint64, from, to ktrace.TCPState) ktrace.Record {
		return ktrace.Record{Time: at(ms), Kind: ktrace.SetState, PID: otherPID, Sk: sk, Src: srv, Dst: client, OldState: from, NewState: to}
	}
	listener := rec(0, 1, ktrace.TCPClose, ktrace.TCPListen)
	listener.Dst = netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
	other := rec(0.5, 3, ktrace.TCPListen, ktrace.TCPSynRecv)
	other.Dst = elsewhere
	recs := []ktrace.Record{
		listener,
		other,
		rec(1, 2, ktrace.TCPListen, ktrace.TCPSynRecv),
		rec(1, 2, ktrace.TCPSynRecv, ktrace.TCPEstablished),
		rec(5, 2, ktrace.TCPEstablished, ktrace.TCPCloseWait),
		rec(6, 2, ktrace.TCPCloseWait, ktrace.TCPLastAck),
		rec(7, 2, ktrace.TCPLastAck, ktrace.TCPClose),
	}
	for _, r := range recs {
		f.Arrived(r)
	}
	// By the time the records are handled in order, the socket is gone.
	delete(diag.entries, [2]netip.AddrPort{srv, client})
	evs := feed(f, recs)
	if got, want := transitions(evs), "LISTEN>SYN-RCVD SYN-RCVD>ESTABLISHED ESTABLISHED>CLOSE-WAIT CLOSE-WAIT>LAST-ACK LAST-ACK>CLOSED"; got != want {
		t.Errorf("events %s\nwant   %s", got, want)
	}
	for _, ev := range evs {
		if ev.Host != "apple" || ev.Conn.Remote != client {
			t.Errorf("%s", ev.Text())
		}
	}
}

func TestFmtTimer(t *testing.T) {
	for d, want := range map[time.Duration]string{59600 * time.Millisecond: "60s", 1500 * time.Millisecond: "2s", 300 * time.Millisecond: "300ms"} {
		if got := fmtTimer(d); got != want {
			t.Errorf("fmtTimer(%v) = %s, want %s", d, got, want)
		}
	}
}

// A kernel server that closed first holds TIME-WAIT; the client's next SYN
// for the same pair takes it over: the new socket's first record (at the
// handshake's ACK) ends it.
func TestServerTakeOver(t *testing.T) {
	srv := netip.AddrPortFrom(server.Addr(), 9999)
	key := [2]netip.AddrPort{srv, client}
	diag := &fakeDiag{entries: map[[2]netip.AddrPort]Entry{key: {State: ktrace.TCPTimeWait, Timer: TimeWaitLen}}}
	f := New(Options{Host: "apple", Port: 9999, Diag: diag, Now: func() time.Time { return at(6) }})
	rec := func(ms float64, sk uint64, from, to ktrace.TCPState) ktrace.Record {
		return ktrace.Record{Time: at(ms), Kind: ktrace.SetState, PID: otherPID, Sk: sk, Src: srv, Dst: client, OldState: from, NewState: to}
	}
	evs := feed(f, []ktrace.Record{
		rec(1, 2, ktrace.TCPListen, ktrace.TCPSynRecv),
		rec(1, 2, ktrace.TCPSynRecv, ktrace.TCPEstablished),
		rec(5, 2, ktrace.TCPEstablished, ktrace.TCPFinWait1),
		rec(5.2, 2, ktrace.TCPFinWait1, ktrace.TCPFinWait2),
		rec(5.4, 2, ktrace.TCPFinWait2, ktrace.TCPClose),
		rec(900, 3, ktrace.TCPListen, ktrace.TCPSynRecv),
	})
	if got, want := transitions(evs), "LISTEN>SYN-RCVD SYN-RCVD>ESTABLISHED ESTABLISHED>FIN-WAIT-1 FIN-WAIT-1>FIN-WAIT-2 FIN-WAIT-2>TIME-WAIT TIME-WAIT>CLOSED LISTEN>SYN-RCVD"; got != want {
		t.Fatalf("events %s\nwant   %s", got, want)
	}
	end := evs[5]
	if !end.Time.Equal(at(900)) || !strings.Contains(end.Cause, "its first record, tracepoint inet_sock_set_state LISTEN -> SYN_RECV at this instant, came after the kernel took the entry over for its SYN") {
		t.Errorf("take-over: %s", end.Text())
	}
}

// AnyProcess: every process's clients, those sock_diag finds in the
// namespace once their port is known (looked up when the record arrives).
func TestAnyProcess(t *testing.T) {
	elsewhere := netip.MustParseAddrPort("10.0.1.2:50000")
	diag := &fakeDiag{entries: map[[2]netip.AddrPort]Entry{{client, server}: {State: ktrace.TCPEstablished}}}
	f := New(Options{Host: "ant", Server: server, AnyProcess: true, Diag: diag, Ours: ours})
	mine := clientLife(sk, otherPID)[:3]
	theirs := clientLife(sk+8, otherPID)[:3]
	for i := range theirs {
		if theirs[i].Src.Port() != 0 {
			theirs[i].Src = elsewhere
		}
	}
	var recs []ktrace.Record
	for i := range mine {
		recs = append(recs, mine[i], theirs[i])
	}
	for _, r := range recs {
		f.Arrived(r)
	}
	evs := feed(f, recs)
	if got := transitions(evs); got != "CLOSED>SYN-SENT SYN-SENT>ESTABLISHED" {
		t.Fatalf("events %s: want the namespace's client only", got)
	}
	for _, ev := range evs {
		if ev.Conn.Local != client {
			t.Errorf("%s: from %v", ev.Text(), ev.Conn.Local)
		}
	}
	if len(f.here) != 0 || len(f.conns) != 1 {
		t.Errorf("left behind: %d lookups, %d sockets", len(f.here), len(f.conns))
	}
}

// The kernel reports a server's new connection (LISTEN -> SYN_RECV) before
// it puts the socket in its table: a first lookup that misses is asked
// again at the next record, and the held event goes out then.
func TestServerFoundAtSecondRecord(t *testing.T) {
	srv := netip.AddrPortFrom(server.Addr(), 9999)
	diag := &fakeDiag{entries: map[[2]netip.AddrPort]Entry{}}
	f := New(Options{Host: "apple", Port: 9999, Diag: diag})
	rec := func(ms float64, from, to ktrace.TCPState) ktrace.Record {
		return ktrace.Record{Time: at(ms), Kind: ktrace.SetState, PID: otherPID, Sk: 2, Src: srv, Dst: client, OldState: from, NewState: to}
	}
	first, second := rec(1, ktrace.TCPListen, ktrace.TCPSynRecv), rec(1.01, ktrace.TCPSynRecv, ktrace.TCPEstablished)
	f.Arrived(first) // not in the table yet
	if evs := f.Record(first); len(evs) != 0 {
		t.Fatalf("emitted before the socket was found in the namespace: %s", transitions(evs))
	}
	diag.entries[[2]netip.AddrPort{srv, client}] = Entry{State: ktrace.TCPEstablished}
	f.Arrived(second)
	if evs := f.Record(second); transitions(evs) != "LISTEN>SYN-RCVD SYN-RCVD>ESTABLISHED" {
		t.Fatalf("events %s", transitions(evs))
	}
	// Another namespace's: missed twice, dropped with its events.
	other := func(r ktrace.Record) ktrace.Record {
		r.Sk, r.Dst = 3, netip.MustParseAddrPort("10.0.1.2:50000")
		return r
	}
	for _, r := range []ktrace.Record{other(first), other(second), other(rec(2, ktrace.TCPEstablished, ktrace.TCPCloseWait))} {
		f.Arrived(r)
		if evs := f.Record(r); len(evs) != 0 {
			t.Errorf("another namespace's socket: %s", transitions(evs))
		}
	}
	if _, ok := f.conns[3]; ok || len(f.here) != 0 {
		t.Errorf("another namespace's socket still held (%v), lookups left %d", ok, len(f.here))
	}
}

// A short connection: found at its first record, gone from the table by
// the time the later records arrive. Found once is found.
func TestServerFoundThenGone(t *testing.T) {
	srv := netip.AddrPortFrom(server.Addr(), 9999)
	key := [2]netip.AddrPort{srv, client}
	diag := &fakeDiag{entries: map[[2]netip.AddrPort]Entry{key: {State: ktrace.TCPSynRecv}}}
	f := New(Options{Host: "apple", Port: 9999, Diag: diag})
	rec := func(ms float64, from, to ktrace.TCPState) ktrace.Record {
		return ktrace.Record{Time: at(ms), Kind: ktrace.SetState, PID: otherPID, Sk: 2, Src: srv, Dst: client, OldState: from, NewState: to}
	}
	recs := []ktrace.Record{rec(1, ktrace.TCPListen, ktrace.TCPSynRecv), rec(1.01, ktrace.TCPSynRecv, ktrace.TCPEstablished), rec(2, ktrace.TCPEstablished, ktrace.TCPCloseWait)}
	for i, r := range recs {
		f.Arrived(r)
		if i == 0 {
			delete(diag.entries, key)
		}
	}
	if evs := feed(f, recs); transitions(evs) != "LISTEN>SYN-RCVD SYN-RCVD>ESTABLISHED ESTABLISHED>CLOSE-WAIT" {
		t.Errorf("events %s", transitions(evs))
	}
}
