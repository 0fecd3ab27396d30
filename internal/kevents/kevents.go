// Package kevents tells the kernel's side of the lab's connections in the
// project's event schema (netstack/inspect.Event, stack "kernel"): each
// state change as the kernel's tracepoint sock:inet_sock_set_state reported
// it, at the instant it fired (internal/ktrace), with the numbers of the
// socket's latest tcp:tcp_probe.
//
// A Follower keeps the lab's own sockets: those this process connects to
// the lab's server (the connecting thread of the first SYN-SENT record is
// ours; that record has port 0, since the kernel sets the state before it
// picks the port, so the socket is followed by its kernel address, Sk),
// or those with a given local port (a kernel server's) that sock_diag
// finds in the namespace, asked as their records arrive (the tracepoints
// carry no namespace); their events wait for that answer.
//
// The kernel's gaps are closed with its socket table, sock_diag (what ss
// reads), in the sockets' namespace. When a socket leaves FIN-WAIT-2 or
// CLOSING the tracepoint says FIN_WAIT2 -> CLOSE (or CLOSING -> CLOSE): the
// full socket is replaced by a mini-socket, which no tracepoint reports.
// sock_diag shows it. A TIME-WAIT entry makes the event FIN-WAIT-2 ->
// TIME-WAIT at the tracepoint's instant, if the entry's timer (restarted
// at 60 s when it enters TIME-WAIT) started within a tick of it. When the
// application had closed the socket already, the kernel keeps a FIN-WAIT-2
// mini-socket instead, and the peer's FIN turns it TIME-WAIT later,
// unmarked: that event is dated by the timer, to Tick. TIME-WAIT -> CLOSED
// follows when a poll finds the entry gone (at the poll's time, within one
// poll interval of the truth). Each event's cause names the kernel source
// that said so.
package kevents

import (
	"fmt"
	"net/netip"
	"os"
	"sort"
	"time"

	"github.com/tcp-upper/tcp-upper/internal/ktrace"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
)

// Diag is the kernel's socket table of one network namespace (sock_diag).
type Diag interface {
	// Lookup finds the TCP socket local -> remote; found is false if
	// the table has none.
	Lookup(local, remote netip.AddrPort) (e Entry, found bool, err error)
}

// Entry is a socket table entry.
type Entry struct {
	State ktrace.TCPState
	// Timer is the time left on the entry's timer (a TIME-WAIT entry's:
	// when it goes); 0 if none runs.
	Timer time.Duration
}

// DefaultPoll is how often sock_diag is asked whether a TIME-WAIT entry is
// still there.
const DefaultPoll = 100 * time.Millisecond

// Options choose the sockets a Follower keeps.
type Options struct {
	// Host is where the sockets live (ant or apple), for the events.
	Host string
	// Server, when valid, keeps the sockets this process connects to it
	// (the lab's kernel clients).
	Server netip.AddrPort
	// Port, when set, keeps the connections with this local port (a
	// kernel server's), not the listener.
	Port uint16
	// Ours reports whether a thread id is this process's (for Server):
	// the thread that ran connect. Default: it is in /proc/self/task.
	Ours func(pid int32) bool
	// AnyProcess, with Server, keeps the sockets any process connects to
	// Server from the namespace (sock_diag finds them there when their
	// port is known), not only this process's: tcp-upper-lab trace
	// follows the clients a user runs in ant.
	AnyProcess bool
	// Diag is the sockets' namespace's table. Without it a socket that
	// may have entered TIME-WAIT is reported as closed, saying that
	// nobody could tell.
	Diag Diag
	// Poll is how often TIME-WAIT entries are looked up (DefaultPoll).
	Poll time.Duration
	// Now is the clock sock_diag's answers are read at (time.Now).
	Now func() time.Time
}

// lookup is an answer of sock_diag's, and when it was asked.
type lookup struct {
	e     Entry
	found bool
	err   error
	at    time.Time
}

// Follower turns Records into events. It is not safe for concurrent use:
// Stream runs one.
type Follower struct {
	opts  Options
	conns map[uint64]*conn // by Sk, while the kernel socket lives
	tw    map[inspect.ConnID]*conn
	// here says whether a new socket of a kernel server's was in the
	// namespace when its first record arrived (Arrived).
	here map[uint64]bool
}

// conn is one followed socket.
type conn struct {
	id    inspect.ConnID
	state inspect.State
	// held are events made before the kernel picked the local port,
	// emitted once a record names it.
	held []inspect.Event
	// The latest tcp_probe of the socket.
	probe     ktrace.Record
	haveProbe bool
	// client: a socket connecting to Options.Server (else a kernel
	// server's connection). unsure: not yet found in the namespace (a
	// kernel server's, or AnyProcess's); its events are held. misses
	// counts the lookups that did not find it.
	client, unsure bool
	misses         int
	// rst says a reset was received or sent (which tracepoint).
	rst string
	// early is sock_diag's answer when the socket's going was read
	// (Arrived).
	early *lookup
	// twStart is when it entered TIME-WAIT, or became a FIN-WAIT-2
	// mini-socket (mini); looked when sock_diag was last asked (tw only).
	twStart, looked time.Time
	mini            bool
}

// New returns a Follower.
func New(opts Options) *Follower {
	if opts.Ours == nil {
		opts.Ours = ThisProcess
	}
	if opts.Poll <= 0 {
		opts.Poll = DefaultPoll
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Follower{opts: opts, conns: map[uint64]*conn{}, tw: map[inspect.ConnID]*conn{}, here: map[uint64]bool{}}
}

// ThisProcess reports whether pid is one of this process's threads.
func ThisProcess(pid int32) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", pid))
	return err == nil
}

// kernel converts a kernel state.
func kernel(s ktrace.TCPState) inspect.State {
	switch s {
	case ktrace.TCPEstablished:
		return inspect.Established
	case ktrace.TCPSynSent:
		return inspect.SynSent
	case ktrace.TCPSynRecv, ktrace.TCPNewSynRecv:
		return inspect.SynRcvd
	case ktrace.TCPFinWait1:
		return inspect.FinWait1
	case ktrace.TCPFinWait2:
		return inspect.FinWait2
	case ktrace.TCPTimeWait:
		return inspect.TimeWait
	case ktrace.TCPCloseWait:
		return inspect.CloseWait
	case ktrace.TCPLastAck:
		return inspect.LastAck
	case ktrace.TCPListen:
		return inspect.Listen
	case ktrace.TCPClosing:
		return inspect.Closing
	}
	return inspect.Closed
}

// Record takes one record (in time order) and returns the events it
// completes.
func (f *Follower) Record(r ktrace.Record) []inspect.Event {
	c := f.conns[r.Sk]
	if c == nil {
		if r.Kind != ktrace.SetState || !f.wanted(r) {
			delete(f.here, r.Sk) // a socket not followed
			return nil
		}
		c = &conn{id: inspect.ConnID{Local: r.Src, Remote: r.Dst}, state: kernel(r.OldState)}
		c.client = f.opts.Server.IsValid() && r.Dst == f.opts.Server
		c.unsure = !c.client || f.opts.AnyProcess
		f.conns[r.Sk] = c
		if c.id.Local.Port() != 0 {
			how := fmt.Sprintf("its first record, tracepoint inet_sock_set_state %s -> %s at this instant, came after the kernel took the entry over for its SYN", r.OldState, r.NewState)
			out0 := f.takeOver(c, r.Time, how)
			return append(out0, f.Record(r)...)
		}
	}
	var out []inspect.Event
	if c.unsure && r.Src.Port() != 0 {
		// Is it in our namespace? A client socket is in the table from
		// the first record that names its port; a server's connection
		// perhaps only from its second (the kernel reports SYN_RECV
		// before it inserts the socket).
		here, ok := f.here[r.Sk]
		if !ok {
			here = f.inNamespace(r)
		}
		delete(f.here, r.Sk)
		c.misses++
		switch {
		case here:
			c.unsure = false
			if c.id.Local.Port() != 0 {
				out = append(out, c.held...)
				c.held = nil
			}
		case c.client || c.misses >= 2 || (r.Kind == ktrace.SetState && r.NewState == ktrace.TCPClose):
			delete(f.conns, r.Sk) // another namespace's
			return nil
		}
	}
	if c.unsure && r.Kind == ktrace.SetState && r.NewState == ktrace.TCPClose {
		delete(f.conns, r.Sk) // gone before it was known to be ours
		return nil
	}
	if c.id.Local.Port() == 0 && r.Src.Port() != 0 {
		// The kernel picked the port: the held events get it.
		c.id.Local = r.Src
		start := r.Time
		if len(c.held) > 0 {
			start = c.held[0].Time
		}
		out = append(out, f.takeOver(c, start, "the new socket's tracepoint inet_sock_set_state CLOSE -> SYN_SENT at this instant; it got the port, taking the entry, right after")...)
		for _, ev := range c.held {
			ev.Conn = c.id
			out = append(out, ev)
		}
		c.held = nil
	}
	switch r.Kind {
	case ktrace.Probe:
		c.probe, c.haveProbe = r, true
	case ktrace.Retransmit:
		out = c.emit(out, f.event(c, r.Time, inspect.KindRetransmit, fmt.Sprintf("the kernel sent a segment again in %s (tracepoint tcp_retransmit_skb)", kernel(r.State))))
	case ktrace.ReceiveReset:
		c.rst = "RST received (tracepoint tcp_receive_reset)"
	case ktrace.SendReset:
		c.rst = "RST sent (tracepoint tcp_send_reset)"
	case ktrace.SetState:
		out = f.setState(c, r, out)
	}
	return out
}

// takeOver ends the TIME-WAIT (or FIN-WAIT-2 mini-socket) of an earlier
// connection with c's port pair: the kernel gives a new connection the
// port pair only by taking its entry over. at and how say when and what
// shows it.
func (f *Follower) takeOver(c *conn, at time.Time, how string) []inspect.Event {
	old, ok := f.tw[c.id]
	if !ok || old == c {
		return nil
	}
	delete(f.tw, c.id)
	held := at.Sub(old.twStart)
	return []inspect.Event{{
		Time: at, Kind: inspect.KindState, Stack: inspect.StackKernel, Host: f.opts.Host, Conn: c.id,
		From: old.state, To: inspect.Closed, Held: held,
		Cause: fmt.Sprintf("a new connection took the port pair, and with it the entry, after %.1fs (%s); the kernel keeps no numbers for a mini-socket", held.Seconds(), how),
	}}
}

// wanted reports whether an unfollowed socket's state record starts one
// to follow.
func (f *Follower) wanted(r ktrace.Record) bool {
	if f.opts.Server.IsValid() && r.NewState == ktrace.TCPSynSent && r.Dst == f.opts.Server && (f.opts.AnyProcess || f.opts.Ours(r.PID)) {
		return true
	}
	// A kernel server's connection from its first record, when the
	// kernel makes its socket from the listener's; unsure until sock_diag
	// finds it in our namespace.
	return f.opts.Port != 0 && r.Src.Port() == f.opts.Port && r.Dst.Port() != 0 && r.OldState == ktrace.TCPListen && r.NewState != ktrace.TCPClose
}

// inNamespace reports whether sock_diag has r's socket (unknown without
// sock_diag: kept).
func (f *Follower) inNamespace(r ktrace.Record) bool {
	if f.opts.Diag == nil {
		return true
	}
	_, found, err := f.opts.Diag.Lookup(r.Src, r.Dst)
	return err == nil && found
}

// Arrived lets the follower look at a record as soon as it is read, before
// Record gets it in time order, and ask sock_diag what must be asked while
// it is still so: whether a new socket of a kernel server's is in the
// namespace, and what replaced a followed socket that went (a mini-socket
// may go soon: a RST ends TIME-WAIT on Linux).
func (f *Follower) Arrived(r ktrace.Record) {
	if r.Kind != ktrace.SetState || r.NewState != ktrace.TCPClose || (r.OldState != ktrace.TCPFinWait2 && r.OldState != ktrace.TCPClosing) {
		f.arrivedNew(r)
		return
	}
	c, ok := f.conns[r.Sk]
	if !ok || f.opts.Diag == nil || c.id.Local.Port() == 0 {
		return
	}
	l := &lookup{at: f.now()}
	l.e, l.found, l.err = f.opts.Diag.Lookup(c.id.Local, c.id.Remote)
	c.early = l
}

// arrivedNew asks sock_diag, at each state record as it arrives, whether
// a socket not yet known to be in the namespace is there.
func (f *Follower) arrivedNew(r ktrace.Record) {
	if r.Kind != ktrace.SetState || r.Src.Port() == 0 || r.Dst.Port() == 0 || r.NewState == ktrace.TCPClose {
		return
	}
	client := f.opts.AnyProcess && f.opts.Server.IsValid() && r.Dst == f.opts.Server
	server := f.opts.Port != 0 && r.Src.Port() == f.opts.Port
	if !client && !server {
		return
	}
	if c, ok := f.conns[r.Sk]; ok && !c.unsure {
		return
	}
	if !f.here[r.Sk] { // once found it stays found: it may be gone by the next record
		f.here[r.Sk] = f.inNamespace(r)
	}
}

// emit appends ev to out, or holds it while the local port is unknown or
// the socket is not yet known to be in the namespace.
func (c *conn) emit(out []inspect.Event, ev inspect.Event) []inspect.Event {
	if c.id.Local.Port() == 0 || c.unsure {
		c.held = append(c.held, ev)
		return out
	}
	return append(out, ev)
}

// event is an event of c's with the latest tcp_probe's numbers.
func (f *Follower) event(c *conn, at time.Time, kind inspect.Kind, cause string) inspect.Event {
	ev := inspect.Event{Time: at, Kind: kind, Stack: inspect.StackKernel, Host: f.opts.Host, Conn: c.id, Cause: cause}
	if !c.haveProbe {
		ev.Cause += "; numbers: none yet (tcp_probe fires on segments received once established)"
		return ev
	}
	p := &c.probe
	ev.N = inspect.Numbers{
		Known: true, Missing: inspect.FieldRcvNxt | inspect.FieldRTO | inspect.FieldRTTVar, SeqAbsolute: true,
		SndUna: p.SndUna, SndNxt: p.SndNxt, SndWnd: p.SndWnd, RcvWnd: p.RcvWnd,
		Cwnd: int(p.SndCwnd), Ssthresh: int(p.Ssthresh),
		SRTTKnown: p.SRTT > 0, SRTT: p.SRTT,
	}
	ev.Cause += fmt.Sprintf("; numbers: the socket's latest tcp_probe, %s before", fmtDur(at.Sub(p.Time)))
	return ev
}

func fmtDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.1fs", d.Seconds())
}

const tracepoint = "tracepoint inet_sock_set_state"

// setState reports a state change.
func (f *Follower) setState(c *conn, r ktrace.Record, out []inspect.Event) []inspect.Event {
	from, to := kernel(r.OldState), kernel(r.NewState)
	if r.NewState == ktrace.TCPClose {
		delete(f.conns, r.Sk) // the kernel may give the address to a new socket
	}
	if r.NewState == ktrace.TCPClose && (r.OldState == ktrace.TCPFinWait2 || r.OldState == ktrace.TCPClosing) && c.rst == "" {
		return f.maybeTimeWait(c, r, out)
	}
	cause := meaning(from, to)
	if to == inspect.Closed && c.rst != "" {
		cause = c.rst
	}
	ev := f.event(c, r.Time, inspect.KindState, fmt.Sprintf("%s (%s %s -> %s)", cause, tracepoint, r.OldState, r.NewState))
	ev.From, ev.To = from, to
	c.state = to
	if to == inspect.Closed {
		// Its held events go out as they are: the port was never
		// picked.
		out = append(out, c.held...)
		c.held = nil
		return append(out, ev)
	}
	return c.emit(out, ev)
}

// TimeWaitLen is how long the kernel holds TIME-WAIT (TCP_TIMEWAIT_LEN,
// fixed at 60 s): a TIME-WAIT entry's timer starts there when it enters
// TIME-WAIT.
const TimeWaitLen = 60 * time.Second

// Tick is how precisely sock_diag's timer dates an entry: it reports
// milliseconds, counted in the kernel's jiffies (4 ms at HZ=250).
const Tick = 5 * time.Millisecond

// maybeTimeWait handles FIN_WAIT2 (or CLOSING) -> CLOSE: the full socket
// went; sock_diag says whether a mini-socket took its place. That
// mini-socket is TIME-WAIT, or, when the application had already closed
// the socket, FIN-WAIT-2 until the peer's FIN turns it TIME-WAIT (no
// tracepoint marks that: its timer, restarted at 60 s then, dates it).
func (f *Follower) maybeTimeWait(c *conn, r ktrace.Record, out []inspect.Event) []inspect.Event {
	from := kernel(r.OldState)
	what := fmt.Sprintf("%s %s -> CLOSE at %s", tracepoint, r.OldState, r.Time.Format("15:04:05.000000"))
	out = append(out, c.held...)
	c.held = nil
	ev := f.event(c, r.Time, inspect.KindState, "")
	numbers := ev.Cause // the numbers' note
	ev.From, ev.To = from, inspect.Closed
	l := c.early
	c.early = nil
	if l == nil && f.opts.Diag != nil {
		l = &lookup{at: f.now()}
		l.e, l.found, l.err = f.opts.Diag.Lookup(c.id.Local, c.id.Remote)
	}
	var e Entry
	var found bool
	var err error
	now := f.now()
	if l != nil {
		e, found, err, now = l.e, l.found, l.err, l.at
	}
	switch {
	case f.opts.Diag == nil:
		ev.Cause = fmt.Sprintf("the kernel's socket went (%s); whether a TIME-WAIT mini-socket took its place is not known: no sock_diag", what)
	case err != nil:
		ev.Cause = fmt.Sprintf("the kernel's socket went (%s); whether a TIME-WAIT mini-socket took its place is not known: sock_diag: %v", what, err)
	case found && e.State == ktrace.TCPFinWait2:
		// Still FIN-WAIT-2, in a mini-socket: no state change yet.
		c.twStart, c.mini, c.looked = r.Time, true, now
		f.tw[c.id] = c
		c.state = from
		return out
	case found && e.State == ktrace.TCPTimeWait:
		ev.To = inspect.TimeWait
		ev.Time, ev.Cause = f.timeWaitSince(r.Time, now, e, what, from)
		c.twStart = ev.Time
		f.tw[c.id] = c
	default:
		ev.Cause = fmt.Sprintf("the kernel's socket went (%s); sock_diag, %s later: no entry: no mini-socket took its place, or it had gone already (a RST ends TIME-WAIT on Linux)", what, fmtDur(now.Sub(r.Time)))
	}
	ev.Cause += numbers
	c.state = ev.To
	return append(out, ev)
}

// timeWaitSince dates a TIME-WAIT entry found at now, whose full socket
// went at gone: by its timer, which started at TimeWaitLen when it
// entered TIME-WAIT.
func (f *Follower) timeWaitSince(gone, now time.Time, e Entry, what string, from inspect.State) (time.Time, string) {
	entered := now.Add(e.Timer - TimeWaitLen)
	if entered.Sub(gone) <= Tick {
		return gone, fmt.Sprintf("%s; the kernel replaced the socket with a TIME-WAIT mini-socket (%s; sock_diag: TIME-WAIT entry, timer %s, started within %v of that instant: then, or, if the application had closed the socket, when the peer's FIN reached its FIN-WAIT-2 mini-socket within those %v, which no tracepoint marks)",
			meaning(from, inspect.TimeWait), what, fmtTimer(e.Timer), Tick, Tick)
	}
	at, window := dateTimeWait(gone, now, now, e.Timer)
	return at, fmt.Sprintf("received FIN: the kernel's FIN-WAIT-2 mini-socket turned TIME-WAIT, which no tracepoint marks, in the %s before this time (its full socket went at %s; sock_diag: TIME-WAIT entry, timer %s, started at 60s to %v)",
		fmtDur(window), what, fmtTimer(e.Timer), Tick)
}

// dateTimeWait dates the start of TIME-WAIT of a mini-socket not yet in
// TIME-WAIT at lo and found in it at hi with timer left: its timer started
// at TimeWaitLen then, to Tick. It returns the latest instant it can have
// been (never before the truth, so never before the peer's FIN in a
// timeline) and the span it lies in.
func dateTimeWait(lo, hi, now time.Time, timer time.Duration) (time.Time, time.Duration) {
	est := now.Add(timer - TimeWaitLen)
	from, to := est.Add(-Tick), est.Add(Tick)
	if from.Before(lo) {
		from = lo
	}
	if to.After(hi) {
		to = hi
	}
	if to.Before(from) { // the timer disagrees: the lookups alone
		from, to = lo, hi
	}
	return to, to.Sub(from)
}

// meaning says in words what a change of the kernel's state means.
func meaning(from, to inspect.State) string {
	switch {
	case from == inspect.Closed && to == inspect.SynSent:
		return "connect: SYN to be sent"
	case from == inspect.SynSent && to == inspect.Established:
		return "received SYN-ACK; ACK to be sent"
	case from == inspect.Listen && to == inspect.SynRcvd:
		return "the handshake's ACK arrived: the kernel made the connection's socket (a request socket, which no tracepoint reports, handled the SYN)"
	case from == inspect.SynRcvd && to == inspect.Established:
		return "received the ACK of its SYN-ACK"
	case to == inspect.FinWait1:
		return "the application closed: FIN to be sent"
	case from == inspect.Established && to == inspect.CloseWait:
		return "received FIN: the peer closed its side"
	case from == inspect.CloseWait && to == inspect.LastAck:
		return "the application closed too: FIN to be sent"
	case from == inspect.FinWait1 && to == inspect.FinWait2:
		return "its FIN was acknowledged"
	case from == inspect.FinWait1 && to == inspect.Closing:
		return "received FIN before the ACK of its own (simultaneous close)"
	case from == inspect.FinWait2 && to == inspect.TimeWait:
		return "received FIN; ACK sent"
	case from == inspect.Closing && to == inspect.TimeWait:
		return "its FIN was acknowledged"
	case from == inspect.LastAck && to == inspect.Closed:
		return "its FIN was acknowledged"
	case to == inspect.Closed:
		return "closed"
	}
	return "state changed"
}

func (f *Follower) now() time.Time { return f.opts.Now() }

// Waiting reports whether connections are in TIME-WAIT or a FIN-WAIT-2
// mini-socket (Poll has work).
func (f *Follower) Waiting() bool { return len(f.tw) > 0 }

// Poll looks up each mini-socket: FIN-WAIT-2 -> TIME-WAIT for those the
// peer's FIN turned TIME-WAIT, and -> CLOSED, at now, for those gone.
func (f *Follower) Poll(now time.Time) []inspect.Event {
	var out []inspect.Event
	ids := make([]inspect.ConnID, 0, len(f.tw))
	for id := range f.tw {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i].Local.Compare(ids[j].Local) < 0 })
	for _, id := range ids {
		c := f.tw[id]
		if f.opts.Diag == nil {
			delete(f.tw, id)
			continue
		}
		e, found, err := f.opts.Diag.Lookup(id.Local, id.Remote)
		if err != nil {
			continue
		}
		prev := c.looked
		c.looked = now
		if found && c.mini && e.State == ktrace.TCPTimeWait {
			ev := inspect.Event{Kind: inspect.KindState, Stack: inspect.StackKernel, Host: f.opts.Host, Conn: id, From: inspect.FinWait2, To: inspect.TimeWait}
			entered, window := dateTimeWait(prev, now, now, e.Timer)
			ev.Time = entered
			ev.Cause = fmt.Sprintf("received FIN: the kernel's FIN-WAIT-2 mini-socket turned TIME-WAIT, which no tracepoint marks, in the %s before this time (sock_diag: FIN-WAIT-2 entry at %s, TIME-WAIT entry at %s, timer %s, started at 60s to %v); the kernel keeps no numbers for a mini-socket",
				fmtDur(window), prev.Format("15:04:05.000000"), now.Format("15:04:05.000000"), fmtTimer(e.Timer), Tick)
			c.mini, c.twStart, c.state = false, entered, inspect.TimeWait
			out = append(out, ev)
			continue
		}
		if found && (e.State == ktrace.TCPTimeWait || e.State == ktrace.TCPFinWait2) {
			continue
		}
		delete(f.tw, id)
		held := now.Sub(c.twStart)
		in := "TIME-WAIT"
		if c.mini {
			in = "a FIN-WAIT-2 mini-socket"
		}
		what := "sock_diag: entry gone"
		if found {
			what = fmt.Sprintf("sock_diag: the port pair's entry is another socket's now (%s)", e.State)
		}
		out = append(out, inspect.Event{
			Time: now, Kind: inspect.KindState, Stack: inspect.StackKernel, Host: f.opts.Host, Conn: id,
			From: c.state, To: inspect.Closed, Held: held,
			Cause: fmt.Sprintf("%s, after %.1fs in %s (looked up every %v: it went at most %v before this time); the kernel keeps no numbers for a mini-socket",
				what, held.Seconds(), in, f.opts.Poll, f.opts.Poll),
		})
	}
	return out
}

func fmtTimer(d time.Duration) string {
	if d >= time.Second {
		return fmt.Sprintf("%ds", int(d.Round(time.Second)/time.Second))
	}
	return fmt.Sprintf("%dms", d.Milliseconds())
}
