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
	"strconv"
	"sync"
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
	fs.Func("fault", "inject faults between the TUN and the stack: 'DIR MATCH ACTION [ARG] [OPTIONS]', e.g. 'in syn drop count=2' (repeatable; see README)", func(s string) error {
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
// watch or change our stack, which the kernel's TCP is not.
func (f *Flags) NetstackOnly() cli.NetstackOnly {
	m := cli.NetstackOnly{}
	for n := range f.names {
		m[n] = "the kernel's TCP cannot be traced, faulted or inspected from here; use tcpdump and ss"
	}
	return m
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

	sub     *inspect.Subscription
	printed chan struct{}
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
		go o.printEvents()
	}
	return nil
}

func (o *Session) printEvents() {
	defer close(o.printed)
	var buf bytes.Buffer
	for ev := range o.sub.C() {
		buf.Reset()
		if o.f.EventsFormat == inspect.JSON {
			b, _ := ev.MarshalJSON()
			buf.Write(b)
		} else {
			buf.WriteString(ev.Text())
		}
		o.stderr.Line(buf.String())
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
