// Package experiment holds the canned fault-injection experiments of
// tcp-upper-lab run: each builds its own lab, runs our server's stack in
// apple with the experiment's faults, drives the kernel's TCP from ant,
// and checks what the stack's own events and counters say against what
// TCP should do, leaving capture.pcap, events.jsonl (both ends: our
// stack's events and the kernel client's, from its tracepoints),
// timeline.jsonl, summary.md and report.html.
package experiment

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/internal/kevents"
	"github.com/tcp-upper/tcp-upper/lab"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/netstack/fault"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
	"github.com/tcp-upper/tcp-upper/netstack/pcap"
	"github.com/tcp-upper/tcp-upper/netstack/trace"
	"github.com/tcp-upper/tcp-upper/node"
	"github.com/tcp-upper/tcp-upper/viz"
)

// Experiment is one lesson.
type Experiment struct {
	Name    string
	Summary string
	// Faults are installed before traffic starts.
	Faults []string
	// Server options beyond the defaults.
	TimeWait  time.Duration
	IdleClose time.Duration
	Classic   bool // classic loss recovery (no RACK/TLP)
	// Run drives the traffic and checks the expectations.
	Run func(e *Env) error
}

// Catalogue lists the experiments, in teaching order.
func Catalogue() []*Experiment { return catalogue }

// Find returns the experiment called name.
func Find(name string) (*Experiment, error) {
	var names []string
	for _, x := range catalogue {
		if x.Name == name {
			return x, nil
		}
		names = append(names, x.Name)
	}
	return nil, fmt.Errorf("no experiment %q: want one of %s (tcp-upper-lab run --list)", name, strings.Join(names, ", "))
}

// Verdict is one checked expectation.
type Verdict struct {
	Pass     bool   `json:"pass"`
	Expect   string `json:"expect"`
	Evidence string `json:"evidence"`
}

// Result is an experiment's outcome.
type Result struct {
	Name     string
	Seed     uint64
	Verdicts []Verdict
	Dir      string
}

// Passed reports whether every expectation held.
func (r *Result) Passed() bool {
	for _, v := range r.Verdicts {
		if !v.Pass {
			return false
		}
	}
	return len(r.Verdicts) > 0
}

// Env is what an experiment's Run works with.
type Env struct {
	Lab   *lab.Lab
	Stack *netstack.Stack
	Out   io.Writer // progress, one line per step
	Start time.Time

	exp      *Experiment
	sub      *inspect.Subscription
	mu       sync.Mutex // verdicts, kernel
	events   []inspect.Event
	kernel   []inspect.Event // the kernel client's, from its tracepoints
	verdicts []Verdict
	ks       *kevents.Stream
}

// Expect records an expectation and its evidence.
func (e *Env) Expect(ok bool, expect, evidence string, args ...any) {
	v := Verdict{Pass: ok, Expect: expect, Evidence: fmt.Sprintf(evidence, args...)}
	e.mu.Lock()
	e.verdicts = append(e.verdicts, v)
	e.mu.Unlock()
	mark := "PASS"
	if !ok {
		mark = "FAIL"
	}
	fmt.Fprintf(e.Out, "  %s  %s\n        %s\n", mark, v.Expect, v.Evidence)
}

// Step prints what the experiment does next.
func (e *Env) Step(format string, args ...any) {
	fmt.Fprintf(e.Out, "  ..  %s\n", fmt.Sprintf(format, args...))
}

// Events returns the stack's events so far: every event caused by what
// the stack did before the call (the tracker's Sync is the barrier).
// Events and Await are for the goroutine that runs the experiment.
func (e *Env) Events() []inspect.Event {
	e.Stack.Tracker().Sync()
	e.take()
	return append([]inspect.Event(nil), e.events...)
}

// take collects what the subscription holds, without waiting.
func (e *Env) take() {
	for {
		select {
		case ev, ok := <-e.sub.C():
			if !ok {
				return
			}
			e.events = append(e.events, ev)
		default:
			return
		}
	}
}

// Await waits until the stack's events satisfy ok, or for at most
// timeout; it reports whether they did. Experiments wait for what they
// expect with it, never for a guessed time.
func (e *Env) Await(timeout time.Duration, ok func(evs []inspect.Event) bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if ok(e.Events()) {
			return true
		}
		select {
		case ev, open := <-e.sub.C():
			if !open {
				return ok(e.events)
			}
			e.events = append(e.events, ev)
		case <-deadline.C:
			return ok(e.Events())
		}
	}
}

// states is each connection's latest state, as the stack reported it.
func states(evs []inspect.Event) map[inspect.ConnID]inspect.State {
	m := map[inspect.ConnID]inspect.State{}
	for _, ev := range evs {
		if ev.Kind == inspect.KindState {
			m[ev.Conn] = ev.To
		}
	}
	return m
}

// reached returns a condition for Await: some connection went to state.
func reached(from, to inspect.State) func([]inspect.Event) bool {
	return func(evs []inspect.Event) bool {
		for _, ev := range evs {
			if ev.Kind == inspect.KindState && ev.From == from && ev.To == to {
				return true
			}
		}
		return false
	}
}

// closed reports whether every connection the stack reported has finished
// its close: CLOSED, or TIME-WAIT when our stack closed first.
func closed(evs []inspect.Event) bool {
	for _, s := range states(evs) {
		if s != inspect.Closed && s != inspect.TimeWait {
			return false
		}
	}
	return true
}

// KernelEvents returns the kernel client's events so far (ant, from its
// tracepoints and sock_diag); none if the kernel's side could not be
// followed.
func (e *Env) KernelEvents() []inspect.Event {
	if e.ks != nil {
		e.ks.Sync()
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]inspect.Event(nil), e.kernel...)
}

// Counter is one of the stack's counters now.
func (e *Env) Counter(name string) uint64 {
	for _, c := range e.Stack.Counters() {
		if c.Name == name {
			return c.Value
		}
	}
	return 0
}

// Dial connects from ant with the kernel's TCP; rcvbuf > 0 sets a small
// receive buffer before connecting.
func (e *Env) Dial(timeout time.Duration, rcvbuf int) (*net.TCPConn, time.Duration, error) {
	var c net.Conn
	start := time.Now()
	err := e.Lab.Do(lab.Ant, func() error {
		d := net.Dialer{Timeout: timeout}
		if rcvbuf > 0 {
			d.Control = func(_, _ string, rc syscall.RawConn) error {
				var serr error
				rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf) })
				return serr
			}
		}
		var err error
		c, err = d.DialContext(context.Background(), "tcp4", net.JoinHostPort(lab.ServerAddr.Addr().String(), fmt.Sprint(lab.Port)))
		return err
	})
	if err != nil {
		return nil, time.Since(start), fmt.Errorf("connect from ant: %w", err)
	}
	return c.(*net.TCPConn), time.Since(start), nil
}

// Sysctl sets a network sysctl (net.ipv4.tcp_...) in host's namespace. It
// reports whether the kernel has it.
func (e *Env) Sysctl(host, name, value string) bool {
	err := e.Lab.Do(host, func() error {
		return os.WriteFile("/proc/sys/"+strings.ReplaceAll(name, ".", "/"), []byte(value), 0)
	})
	return err == nil
}

// Exchange sends line and reads its uppercased reply.
func Exchange(c net.Conn, line string, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, line); err != nil {
		return err
	}
	buf := make([]byte, len(line))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	want := []byte(line)
	app.Upper(want)
	if string(buf) != string(want) {
		return fmt.Errorf("reply %q, want %q", buf, want)
	}
	return nil
}

// Options configure a run.
type Options struct {
	// Dir receives capture.pcap, events.jsonl, timeline.jsonl and
	// summary.md; empty: a new directory under the system's temp dir.
	Dir string
	// Seed seeds the faults; 0 draws one.
	Seed uint64
	// Name is the lab name; empty: a unique one.
	Name string
	// PlainTUN opens the server's TUN without offloads (the server's
	// --offload=false).
	PlainTUN bool
	Log      *slog.Logger
}

// Run runs x in a lab of its own and removes the lab afterwards.
func Run(ctx context.Context, x *Experiment, opts Options, out io.Writer) (res *Result, err error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Seed == 0 {
		opts.Seed = mrand.Uint64()&(1<<32-1) | 1 // short enough to retype
	}
	if opts.Dir == "" {
		if opts.Dir, err = os.MkdirTemp("", "tcp-upper-"+x.Name+"-"); err != nil {
			return nil, err
		}
	} else if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("--out %s: %w", opts.Dir, err)
	}
	if opts.Name == "" {
		b := make([]byte, 3)
		rand.Read(b)
		opts.Name = "x" + hex.EncodeToString(b)
	}
	var rules []*fault.Rule
	for _, s := range x.Faults {
		r, err := fault.Parse(s)
		if err != nil {
			return nil, err
		}
		rules = append(rules, r)
	}
	l, err := lab.New(opts.Name, opts.Log)
	if err != nil {
		return nil, err
	}
	if err := l.Up(); err != nil {
		return nil, err
	}
	defer func() {
		if derr := l.Down(); derr != nil && err == nil {
			err = derr
		}
	}()
	dev, err := l.OpenServerTUN(opts.Log, opts.PlainTUN)
	if err != nil {
		return nil, err
	}
	pw, err := pcap.Create(filepath.Join(opts.Dir, "capture.pcap"), 0, nil)
	if err != nil {
		dev.Close()
		return nil, err
	}
	tw := x.TimeWait
	if tw == 0 {
		tw = netstack.DefaultTimeWait
	}
	nd, err := node.Start(dev, node.Options{
		Stack: netstack.Options{
			Addr: lab.ServerAddr, TimeWait: tw, Inspect: true, ClassicRecovery: x.Classic, Host: lab.Apple,
			Trace: trace.Options{Pcap: pw},
			Fault: fault.Options{Seed: opts.Seed, Rules: rules},
		},
		Serve: true, Port: lab.Port, Server: app.ServerOptions{IdleClose: x.IdleClose},
		Log: opts.Log,
	})
	if err != nil {
		pw.Close()
		return nil, err
	}
	st := nd.Stack
	e := &Env{Lab: l, Stack: st, Out: out, Start: time.Now(), exp: x, sub: st.Tracker().Subscribe(1 << 16)}
	// The kernel client's side: the sockets this process connects from
	// ant, from the kernel's tracepoints.
	var kcollected chan struct{}
	kernelNote := ""
	if ks, err := kevents.Start(kevents.Options{Host: lab.Ant, Server: netip.AddrPortFrom(lab.ServerAddr.Addr(), lab.Port)}, l.NetNSPath(lab.Ant)); err != nil {
		kernelNote = fmt.Sprintf("   the kernel client's side is not recorded: %v\n", err)
	} else {
		e.ks = ks
		kcollected = make(chan struct{})
		go func() {
			defer close(kcollected)
			for ev := range ks.C() {
				e.mu.Lock()
				e.kernel = append(e.kernel, ev)
				e.mu.Unlock()
			}
		}()
	}
	nd.Serve()

	fmt.Fprintf(out, "== %s: %s\n   faults: %s; seed %d; output in %s\n%s", x.Name, x.Summary, faultList(x.Faults), opts.Seed, opts.Dir, kernelNote)
	runErr := x.Run(e)
	if runErr != nil {
		e.Expect(false, "the experiment runs to the end", "%v", runErr)
	}
	e.finish()
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	nd.Shutdown(sctx)
	cancel()
	e.take() // the tracker is closed: everything it emitted is here
	if e.ks != nil {
		e.ks.Sync()
		e.ks.Close()
		<-kcollected
		if lost := e.ks.Lost(); lost > 0 {
			fmt.Fprintf(out, "   the kernel client's side: %d records or events lost (its trace buffer overflowed or we fell behind)\n", lost)
		}
	}
	pw.Close()
	if d := e.sub.Dropped(); d > 0 {
		e.Expect(false, "every event recorded", "%d events lost (the experiment fell behind the tracker)", d)
	}

	res = &Result{Name: x.Name, Seed: opts.Seed, Verdicts: e.verdicts, Dir: opts.Dir}
	if err := writeOutputs(e, res); err != nil {
		return res, err
	}
	verdict := "PASS"
	if !res.Passed() {
		verdict = "FAIL"
	}
	fmt.Fprintf(out, "   %s %s (%d expectations)\n", verdict, x.Name, len(res.Verdicts))
	return res, nil
}

// finish waits for the close the experiment started (its client closed
// when Run returned, or our server closed first) to finish on our stack,
// and checks that it ended cleanly, without a RST. Only then does the
// experiment tear its stack down: a stack closed while its connections
// are still closing resets them, which is not what TCP does.
func (e *Env) finish() {
	done := e.Await(10*time.Second, closed)
	var open []string
	for id, s := range states(e.events) {
		if s != inspect.Closed && s != inspect.TimeWait {
			open = append(open, id.Remote.String()+" "+s.String())
		}
	}
	sort.Strings(open)
	rst := e.Counter("tcp.resets_out")
	evidence := fmt.Sprintf("every connection CLOSED or in TIME-WAIT; tcp.resets_out=%d", rst)
	if !done {
		evidence = fmt.Sprintf("still closing after 10s: %s; tcp.resets_out=%d", strings.Join(open, ", "), rst)
	}
	e.Expect(done && rst == 0, "the connection closes cleanly: FIN both ways, no RST", "%s", evidence)
}

func faultList(fs []string) string {
	if len(fs) == 0 {
		return "none at start"
	}
	return "'" + strings.Join(fs, "', '") + "'"
}

func writeOutputs(e *Env, res *Result) error {
	// Both ends: the server's (our stack's) and the kernel client's.
	e.mu.Lock()
	evs := append(append([]inspect.Event(nil), e.events...), e.kernel...)
	e.mu.Unlock()
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].Time.Before(evs[j].Time) })
	f, err := os.Create(filepath.Join(res.Dir, "events.jsonl"))
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	for i := range evs {
		enc.Encode(&evs[i])
	}
	if err := f.Close(); err != nil {
		return err
	}
	entries, err := timeline(filepath.Join(res.Dir, "capture.pcap"), evs)
	if err != nil {
		return fmt.Errorf("timeline: %w", err)
	}
	tf, err := os.Create(filepath.Join(res.Dir, "timeline.jsonl"))
	if err != nil {
		return err
	}
	if err := writeTimeline(tf, entries); err != nil {
		tf.Close()
		return err
	}
	if err := tf.Close(); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Experiment %s\n\n%s\n\n- faults: %s\n- seed: %d (repeat: `tcp-upper-lab run %s --seed %d`)\n- files: capture.pcap (pcapng: tcpdump -nr, or tshark/Wireshark to see what the fault layer did to a packet), events.jsonl, timeline.jsonl, report.html (ladder, graphs)\n\n",
		e.exp.Name, e.exp.Summary, faultList(e.exp.Faults), res.Seed, e.exp.Name, res.Seed)
	b.WriteString("## Verdicts\n\n")
	for _, v := range res.Verdicts {
		mark := "PASS"
		if !v.Pass {
			mark = "FAIL"
		}
		fmt.Fprintf(&b, "- **%s** %s — %s\n", mark, v.Expect, v.Evidence)
	}
	b.WriteString("\n## Timeline\n\nThe wire (the segments our stack sent and received, as capture.pcap holds them, with what the fault layer did to them), our stack's events (`*`) and the faults injected (`!!!`), by connection, in seconds from the start; timeline.jsonl has the same, one JSON object a line.\n")
	summaryTimeline(&b, entries, e.Start)
	if err := os.WriteFile(filepath.Join(res.Dir, "summary.md"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	return writeReport(e, res)
}

// writeReport writes report.html: the lesson, verdicts, ladder, graphs and
// timeline in one self-contained page.
func writeReport(e *Env, res *Result) error {
	s, err := viz.Load(res.Dir)
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	info := viz.ReportInfo{Name: e.exp.Name, Lesson: e.exp.Summary, Faults: e.exp.Faults, Seed: res.Seed}
	for _, v := range res.Verdicts {
		info.Verdicts = append(info.Verdicts, viz.Verdict{Pass: v.Pass, Expect: v.Expect, Evidence: v.Evidence})
	}
	f, err := os.Create(filepath.Join(res.Dir, "report.html"))
	if err != nil {
		return err
	}
	if err := viz.Report(f, s, info); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
