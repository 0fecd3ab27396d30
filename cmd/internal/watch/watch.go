// Package watch holds the flags and plumbing the server and the
// netstack client share for watching their stack: --trace, --trace-x,
// --pcap, --events, --events-format, --time-wait and --control.
//
// It is neither gVisor's observe hook (netstack.Options.TCPObserve) nor
// the trace layer's packet observer (trace.Observer): a Session is what
// one program's flags opened to watch its stack.
package watch

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tcp-upper/tcp-upper/cmd/internal/cli"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/netstack/control"
	"github.com/tcp-upper/tcp-upper/netstack/fault"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
	"github.com/tcp-upper/tcp-upper/netstack/pcap"
	"github.com/tcp-upper/tcp-upper/node"
)

// Flags are the observation flags.
type Flags struct {
	Trace        bool
	TraceX       bool
	Pcap         string
	Events       bool
	EventsFormat inspect.Format
	TimeWait     time.Duration
	// Control is the control socket path; "" means the default for the
	// TUN, "none" means no control socket.
	Control string
	// Faults are the --fault rules, parsed; Seed seeds them (SeedSet:
	// given on the command line, else drawn at random and printed).
	Faults  []*fault.Rule
	Seed    uint64
	SeedSet bool
	// Recovery is the loss recovery: rack (gVisor's default) or classic.
	Recovery string

	format string
	names  map[string]bool // the flags Register added
}

// Register adds the flags to fs. what names the program's stack in help
// texts.
func (f *Flags) Register(fs *flag.FlagSet) {
	before := map[string]bool{}
	fs.VisitAll(func(fl *flag.Flag) { before[fl.Name] = true })
	defer func() {
		f.names = map[string]bool{}
		fs.VisitAll(func(fl *flag.Flag) {
			if !before[fl.Name] {
				f.names[fl.Name] = true
			}
		})
	}()
	fs.BoolVar(&f.Trace, "trace", false, "print every segment the stack sends or receives on stderr, as tcpdump does")
	fs.BoolVar(&f.TraceX, "trace-x", false, "like --trace, with tcpdump -X's hex and ASCII dump of each packet")
	fs.StringVar(&f.Pcap, "pcap", "", "write every packet to this pcap file (tcpdump -r, tshark -r, Wireshark)")
	fs.BoolVar(&f.Events, "events", false, "print each connection's state transitions, retransmissions and window events on stderr")
	fs.StringVar(&f.format, "events-format", "text", "format of --events: text, or json (one object per line)")
	fs.DurationVar(&f.TimeWait, "time-wait", netstack.DefaultTimeWait, "how long a connection the stack closed first stays in TIME-WAIT")
	fs.StringVar(&f.Control, "control", "", "control socket for tcp-upper-lab ss/stats/events/fault (default "+control.Dir+"/NETNS-TUN.sock; none to disable)")
	fs.Func("fault", "inject faults between the TUN and the stack: 'DIR MATCH ACTION [ARG] [OPTIONS]', e.g. 'in syn drop count=2' (repeatable; see docs/EXPERIMENTS.md)", func(s string) error {
		r, err := fault.Parse(s)
		if err != nil {
			return err
		}
		f.Faults = append(f.Faults, r)
		return nil
	})
	fs.StringVar(&f.Recovery, "recovery", "rack", "loss recovery: rack (gVisor's default: RACK and tail loss probes) or classic (duplicate-ACK fast retransmit and RTO only, as in textbooks)")
	fs.Func("seed", "seed for every random fault decision (default: random, printed so a run can be repeated)", func(s string) error {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return fmt.Errorf("want a number from 0 to %d", uint64(math.MaxUint64))
		}
		f.Seed, f.SeedSet = v, true
		return nil
	})
}

// NetstackOnly lists the flags Register added, for cli.CheckStack: they
// watch or change our stack, which the kernel's TCP is not. except are
// those the program also serves for the kernel (the server's --events:
// the kernel's tracepoints).
func (f *Flags) NetstackOnly(except ...string) cli.NetstackOnly {
	m := cli.NetstackOnly{}
	for n := range f.names {
		if !slices.Contains(except, n) {
			m[n] = "the kernel's TCP cannot be traced, faulted or inspected from here; use tcpdump and ss (the server's --events works on both)"
		}
	}
	return m
}

// KernelEvents are the flags the kernel's side serves too, from its
// tracepoints.
var KernelEvents = []string{"events", "events-format"}

// ValidateFormat checks --events-format alone (the kernel's side).
func (f *Flags) ValidateFormat() error {
	format, err := inspect.ParseFormat(f.format)
	if err != nil {
		return cli.Usagef("bad --events-format: %v", err)
	}
	f.EventsFormat = format
	return nil
}

// Validate checks the flags after parsing; tun is the TUN device's name
// (for the default control path).
func (f *Flags) Validate(tun string) error {
	format, err := inspect.ParseFormat(f.format)
	if err != nil {
		return cli.Usagef("bad --events-format: %v", err)
	}
	f.EventsFormat = format
	if f.TimeWait <= 0 || f.TimeWait > time.Hour {
		return cli.Usagef("bad --time-wait %v: want a duration from 1ms to 1h, such as 60s", f.TimeWait)
	}
	if f.TraceX {
		f.Trace = true
	}
	if f.Recovery != "rack" && f.Recovery != "classic" {
		return cli.Usagef("bad --recovery %q: want rack or classic", f.Recovery)
	}
	if f.Control == "" {
		f.Control = control.DefaultPath(tun)
	}
	return nil
}

// Session is what a program watches its stack through while it runs: the
// pcap file, the event printer and the control socket of one stack.
type Session struct {
	f      *Flags
	log    *slog.Logger
	stderr *cli.SyncWriter
	pcap   *pcap.Writer
	ctrl   *control.Server
	st     *netstack.Stack

	sub      *inspect.Subscription
	printed  chan struct{} // closed when the printer ends
	nPrinted atomic.Uint64 // events the printer has written
	progress chan struct{} // a token after each event printed
}

// New opens what must exist before the stack is built (the pcap file) and
// fills in opts' tracing fields. Call Start once the stack exists, and
// Close at the end (a node does both, given Watcher).
func New(f *Flags, opts *netstack.Options, stderr io.Writer, log *slog.Logger) (*Session, error) {
	o := &Session{f: f, log: log, stderr: cli.NewSyncWriter(stderr)}
	if f.Pcap != "" {
		var once sync.Once
		w, err := pcap.Create(f.Pcap, 0, func(err error) {
			once.Do(func() {
				o.stderr.Line(fmt.Sprintf("pcap: %v: capture stops here; the file stays readable up to the last whole packet", err))
			})
		})
		if err != nil {
			return nil, fmt.Errorf("%w: check the directory exists and is writable", err)
		}
		o.pcap = w
		opts.Trace.Pcap = w
	}
	if f.Trace {
		opts.Trace.Out = o.stderr.Lines()
		opts.Trace.HexDump = f.TraceX
	}
	opts.TimeWait = f.TimeWait
	opts.Inspect = f.Events || f.Control != "none"
	if !f.SeedSet {
		f.Seed = rand.Uint64() & (1<<53 - 1) // short enough to retype
		if len(f.Faults) > 0 {
			o.stderr.Line(fmt.Sprintf("fault seed %d (repeat this run with --seed %d)", f.Seed, f.Seed))
		}
	}
	opts.ClassicRecovery = f.Recovery == "classic"
	opts.Fault.Seed = f.Seed
	opts.Fault.Rules = f.Faults
	return o, nil
}

// Start begins printing events and serving the control socket. hello
// describes the program for tcp-upper-lab.
func (o *Session) Start(st *netstack.Stack, hello control.Hello) error {
	o.st = st
	if o.f.Control != "none" {
		srv, err := control.Listen(o.f.Control, o.log)
		if err != nil {
			return err
		}
		hello.TimeWait = o.f.TimeWait
		hello.Seed = o.f.Seed
		control.ServeStack(srv, st, hello)
		srv.Serve()
		o.ctrl = srv
		o.log.Info("control socket", "path", srv.Path())
	}
	if o.f.Events {
		o.sub = st.Tracker().Subscribe(control.StreamBuffer)
		o.printed = make(chan struct{})
		o.progress = make(chan struct{}, 1)
		go o.printEvents()
	}
	return nil
}

func (o *Session) printEvents() {
	defer close(o.printed)
	PrintEvents(o.sub.C(), o.f.EventsFormat, o.stderr, func() {
		o.nPrinted.Add(1)
		select {
		case o.progress <- struct{}{}:
		default:
		}
	})
}

// PrintEvents prints each event from evs as a line of w, in format, until
// evs is closed; printed, if not nil, is called after each line.
func PrintEvents(evs <-chan inspect.Event, format inspect.Format, w *cli.SyncWriter, printed func()) {
	var buf bytes.Buffer
	for ev := range evs {
		buf.Reset()
		if format == inspect.JSON {
			b, _ := ev.MarshalJSON()
			buf.Write(b)
		} else {
			buf.WriteString(ev.Text())
		}
		w.Line(buf.String())
		if printed != nil {
			printed()
		}
	}
}

// Ordered wraps the program's own output (the server's "PEER connected"
// and "PEER disconnected" lines) so that each line comes after what
// caused it: before a line is written, every packet the trace layer saw
// so far is printed and every event the stack has caused so far is
// printed (the trace's Flush and the tracker's Sync, then the event
// printer catching up, for at most a second). Without --trace and
// --events it is w itself.
func (o *Session) Ordered(w io.Writer) io.Writer {
	if !o.f.Trace && !o.f.Events {
		return w
	}
	return orderedWriter{o: o, w: w}
}

type orderedWriter struct {
	o *Session
	w io.Writer
}

func (ow orderedWriter) Write(p []byte) (int, error) {
	ow.o.catchUp(time.Second)
	return ow.w.Write(p)
}

// catchUp returns once the trace and the events printed cover everything
// the stack did before the call, or after timeout.
func (o *Session) catchUp(timeout time.Duration) {
	if o.st == nil {
		return
	}
	if tr := o.st.Trace(); tr != nil {
		tr.Flush()
	}
	if o.sub == nil {
		return
	}
	o.st.Tracker().Sync()
	want := o.sub.Delivered()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for o.nPrinted.Load() < want {
		select {
		case <-o.progress:
		case <-o.printed:
			return
		case <-deadline.C:
			return
		}
	}
}

// ControlPath is the control socket's path, or "" without one.
func (o *Session) ControlPath() string {
	if o.ctrl == nil {
		return ""
	}
	return o.ctrl.Path()
}

// Close ends the observation after the stack has been closed (so the trace
// recorder and the tracker have finished): it stops the control socket,
// closes the pcap file, and reports on stderr anything that could not be
// recorded. Nothing is lost silently.
func (o *Session) Close(ctx context.Context) {
	if o.ctrl != nil {
		o.ctrl.Close()
	}
	if o.printed != nil {
		select {
		case <-o.printed:
		case <-ctx.Done():
		}
	}
	if o.pcap != nil {
		if err := o.pcap.Close(); err != nil {
			o.stderr.Line(fmt.Sprintf("pcap: close %s: %v", o.f.Pcap, err))
		}
		if lost := o.pcap.Lost(); lost > 0 {
			o.stderr.Line(fmt.Sprintf("pcap: %d packets not written to %s (write error)", lost, o.f.Pcap))
		}
	}
	if o.st == nil {
		return
	}
	if tr := o.st.Trace(); tr != nil {
		if d := tr.Stats().Dropped.Load(); d > 0 {
			o.stderr.Line(fmt.Sprintf("trace: %d of %d packets not printed or captured (the recorder fell behind: its queue held its byte budget)", d, tr.Stats().Packets.Load()))
		}
	}
	if t := o.st.Tracker(); t != nil {
		if d := t.Stats().Dropped.Load(); d > 0 {
			o.stderr.Line(fmt.Sprintf("events: %d packet summaries lost (the tracker fell behind); events may be missing", d))
		}
		if o.sub != nil {
			if d := o.sub.Dropped(); d > 0 {
				o.stderr.Line(fmt.Sprintf("events: %d events not printed (stderr too slow)", d))
			}
		}
	}
}

// Watcher is s as the node.Watcher of the node it watches; hello
// describes the program for tcp-upper-lab.
func (o *Session) Watcher(hello control.Hello) node.Watcher {
	return sessionWatcher{o, hello}
}

type sessionWatcher struct {
	s     *Session
	hello control.Hello
}

func (w sessionWatcher) Start(st *netstack.Stack) error { return w.s.Start(st, w.hello) }
func (w sessionWatcher) Close(ctx context.Context)      { w.s.Close(ctx) }
