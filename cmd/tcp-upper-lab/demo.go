package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/cmd/internal/cli"
	"github.com/tcp-upper/tcp-upper/internal/kevents"
	"github.com/tcp-upper/tcp-upper/lab"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/netstack/control"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
	"github.com/tcp-upper/tcp-upper/netstack/pcap"
	"github.com/tcp-upper/tcp-upper/netstack/trace"
	"github.com/tcp-upper/tcp-upper/node"
	"github.com/tcp-upper/tcp-upper/tun"
	"github.com/tcp-upper/tcp-upper/viz"
)

// demoLines is the seed's client session.
var demoLines = []string{"abc", "hello world!", "fasionchan.com"}

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet(prog+" demo", stderr, prog+" demo [--in-memory] [--name N] [--time-wait D] [--idle-close D]")
	inMemory := fs.Bool("in-memory", false, "run over an in-process link between two user-space stacks even when root")
	name := fs.String("name", fmt.Sprintf("demo%d", os.Getpid()%100000), "lab name for the demo's namespaces")
	tw := fs.Duration("time-wait", 5*time.Second, "TIME-WAIT of the server's stack (Linux holds 60s; shorter so the demo can show it end)")
	idle := fs.Duration("idle-close", time.Second, "the server closes a connection idle this long (part 2: our stack closes first)")
	logLevel := fs.String("log-level", "warn", "log level on stderr")
	explain := fs.Bool("explain", false, "under each state change, the rule behind it; the final ladder explained too")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *tw <= 0 || *tw > 2*time.Minute {
		return cli.Usagef("bad --time-wait %v: want 1ms to 2m", *tw)
	}
	if *idle <= 100*time.Millisecond || *idle > time.Minute {
		return cli.Usagef("bad --idle-close %v: want more than 100ms, at most 1m", *idle)
	}
	log, err := cli.Logger(stderr, *logLevel)
	if err != nil {
		return err
	}
	d := &demo{out: stdout, log: log, timeWait: *tw, idle: *idle, explain: *explain}
	if *inMemory {
		return d.inMemory(ctx)
	}
	if err := lab.CheckPrivileges(); err != nil {
		fmt.Fprintf(stdout, "no root/CAP_NET_ADMIN: running the same session in memory between two user-space stacks (no TUN, namespaces or tcpdump; run with sudo for the real lab)\n\n")
		return d.inMemory(ctx)
	}
	l, err := lab.New(*name, log)
	if err != nil {
		return cli.Usagef("%v", err)
	}
	return d.inLab(ctx, l)
}

// demo prints a session the way a reader of the seed would watch it in its
// terminal windows, each line tagged with the host it happens on, and
// annotated from our stack.
type demo struct {
	out      io.Writer
	log      *slog.Logger
	mu       sync.Mutex
	timeWait time.Duration
	idle     time.Duration
	explain  bool
}

func (d *demo) printf(host, format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, line := range strings.Split(strings.TrimRight(fmt.Sprintf(format, args...), "\n"), "\n") {
		fmt.Fprintf(d.out, "%-7s| %s\n", host, line)
	}
}

func (d *demo) section(title string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Fprintf(d.out, "\n== %s\n", title)
}

func (d *demo) say(format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Fprintf(d.out, format+"\n", args...)
}

// hostWriter tags each line written to it with host.
type hostWriter struct {
	d    *demo
	host string
}

func (w hostWriter) Write(p []byte) (int, error) {
	w.d.printf(w.host, "%s", p)
	return len(p), nil
}

// typedLines feeds lines to the client as if typed at its prompt. Before
// each line it lets the narrator print what the previous one caused. With
// hold set, after the last line it waits (an idle user) until released
// instead of ending the input.
type typedLines struct {
	d     *demo
	n     *narrator
	lines []string
	hold  <-chan struct{}
}

func (e *typedLines) ReadLine() (string, error) {
	e.n.checkpoint()
	if len(e.lines) == 0 {
		if e.hold != nil {
			e.d.printf("ant", "> (the user types nothing more...)")
			<-e.hold
			return "", io.EOF
		}
		e.d.printf("ant", "> ^D   (end of input: the client closes first)")
		return "", io.EOF
	}
	l := e.lines[0]
	e.lines = e.lines[1:]
	e.n.ann.expect(l + "\n")
	e.d.printf("ant", "> %s", l)
	return l + "\n", nil
}

// server is the uppercase server on the demo's stack, with its narrator.
type server struct {
	node  *node.Node
	out   *lineWatch
	narr  *narrator
	stack *netstack.Stack
	cap   *memFile
	pcap  *pcap.Writer
}

// memFile keeps the demo's capture in memory, for its ladder.
type memFile struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (m *memFile) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.buf.Write(p)
}
func (m *memFile) Close() error { return nil }
func (m *memFile) Truncate(n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.buf.Truncate(int(n))
	return nil
}

// ladder prints the ladder of the session so far: the server's capture,
// its stack's events and the kernel client's (each drawn on its side).
func (d *demo) ladder(s *server) {
	if err := s.pcap.Flush(); err != nil {
		return
	}
	s.cap.mu.Lock()
	pkts, err := pcap.Read(bytes.NewReader(s.cap.buf.Bytes()))
	s.cap.mu.Unlock()
	if err != nil {
		return
	}
	d.section("the ladder of the session (tcp-upper-lab ladder draws it from any capture; --explain adds the rule behind each line)")
	d.mu.Lock()
	defer d.mu.Unlock()
	viz.Ladder(d.out, viz.Build(pkts, s.narr.printed), viz.LadderOptions{Width: 80, Explain: d.explain})
}

// newServerStack builds the server's stack over dev with tracing into a
// narrator, and starts the uppercase server on it.
func (d *demo) newServerStack(dev tun.Device) (*server, error) {
	n := &narrator{d: d, host: "apple"}
	n.ann.port, n.ann.idle = lab.Port, d.idle
	mf := &memFile{}
	pw, err := pcap.NewWriter(mf, "the demo's capture", 0, nil)
	if err != nil {
		return nil, err
	}
	w := &lineWatch{next: hostWriter{d, "apple"}}
	nd, err := node.Start(dev, node.Options{
		Stack: netstack.Options{
			Addr: lab.ServerAddr, TimeWait: d.timeWait, Inspect: true, Host: lab.Apple,
			Trace: trace.Options{Out: n, Pcap: pw},
		},
		Serve: true, Port: lab.Port, Server: app.ServerOptions{Out: w, IdleClose: d.idle},
		Log: d.log,
	})
	if err != nil {
		return nil, err
	}
	st := nd.Stack
	n.st = st
	n.sub = st.Tracker().Subscribe(4096)
	d.printf("apple", "$ tcp-upper-server --events --trace --idle-close %v --time-wait %v", d.idle, d.timeWait)
	nd.Serve()
	if !w.waitFor("listening at port", 5*time.Second) {
		nd.Close()
		return nil, errors.New("server did not start")
	}
	return &server{node: nd, out: w, narr: n, stack: st, cap: mf, pcap: pw}, nil
}

func (s *server) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.node.Shutdown(ctx)
}

// sessions runs the two parts of the story: the seed's session (the client
// closes first) and one where our stack closes first and holds TIME-WAIT.
// dial opens a client connection.
func (d *demo) sessions(s *server, dial func() (net.Conn, error)) error {
	d.section("part 1: the seed's session. The client (ant) closes first")
	d.say("Each segment as our stack saw it (tcpdump's format) with a # note, and * the connection's state changes with the stack's numbers:\napple/netstack from our stack's observe hook, ant/kernel from the kernel client's tracepoints (inet_sock_set_state, tcp_probe) and its socket table (sock_diag).")
	if k := s.narr.kernel; k != nil {
		// Half the offset's bracket, and 50ns for time.Now's own two reads.
		d.say("The kernel stamps its own records (its monotonic clock); they are put on our wall clock within ±%v.", (k.ClockBracket()/2 + 50*time.Nanosecond).Round(10*time.Nanosecond))
	}
	d.printf("ant", "$ tcp-upper-client -i %s", lab.ServerAddr.Addr())
	conn, err := dial()
	if err != nil {
		return err
	}
	local := conn.LocalAddr().String()
	in := &typedLines{d: d, n: s.narr, lines: append([]string(nil), demoLines...)}
	if err := app.Session(conn, in, hostWriter{d, "ant"}); err != nil {
		return fmt.Errorf("client session: %w", err)
	}
	if !s.out.waitFor(local+" disconnected", 5*time.Second) {
		return fmt.Errorf("server did not report %s disconnected within 5s", local)
	}
	// The client's last ACK ends our LAST-ACK.
	if !s.narr.await(local, inspect.Closed, 5*time.Second) {
		return fmt.Errorf("our stack did not report %s CLOSED within 5s", local)
	}
	s.narr.checkpoint()

	d.section(fmt.Sprintf("part 2: our stack closes first. The server closes a connection idle %v", d.idle))
	d.printf("ant", "$ tcp-upper-client -i %s", lab.ServerAddr.Addr())
	conn, err = dial()
	if err != nil {
		return err
	}
	local = conn.LocalAddr().String()
	hold := make(chan struct{})
	in = &typedLines{d: d, n: s.narr, lines: []string{"tcp/ip"}, hold: hold}
	err = app.Session(conn, in, hostWriter{d, "ant"})
	close(hold)
	if !errors.Is(err, app.ErrServerGone) {
		return fmt.Errorf("client session: want the server to close it after %v idle, got %v", d.idle, err)
	}
	d.printf("ant", "tcp-upper-client: the server closed the connection")
	// The client's FIN takes our stack to TIME-WAIT.
	if !s.narr.await(local, inspect.TimeWait, 5*time.Second) {
		return fmt.Errorf("our stack did not report %s in TIME-WAIT within 5s", local)
	}
	s.narr.checkpoint()

	d.section(fmt.Sprintf("TIME-WAIT in our stack: tcp-upper-lab ss -tan, every second (it lasts %v here, 60s by default as on Linux)", d.timeWait))
	deadline := time.Now().Add(d.timeWait + 3*time.Second)
	for time.Now().Before(deadline) {
		var rows []control.Socket
		tw := false
		for _, so := range s.stack.Tracker().Sockets() {
			rows = append(rows, control.FromInspect(so))
			tw = tw || so.State == inspect.TimeWait
		}
		d.printf("apple", "$ tcp-upper-lab ss -tan\n%s", FormatSS(rows, false))
		if !tw {
			break
		}
		time.Sleep(time.Second)
	}
	s.narr.checkpoint()
	return nil
}

func (d *demo) inMemory(ctx context.Context) error {
	fmt.Fprintf(d.out, "tcp-upper demo (in memory): client stack %s <-> server stack %s:%d, both gVisor netstack, joined by an in-process link\n",
		lab.AntAddr.Addr(), lab.ServerAddr.Addr(), lab.Port)
	a, b := tun.Pipe("apple0", "ant0", 1500)
	srv, err := d.newServerStack(a)
	if err != nil {
		return err
	}
	defer srv.close()
	cli, err := node.Start(b, node.Options{Stack: netstack.Options{Addr: lab.AntAddr, Host: lab.Ant}, Log: d.log})
	if err != nil {
		return err
	}
	defer cli.Close()
	cliStack := cli.Stack
	dial := func() (net.Conn, error) {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return cliStack.Dial(dctx, netip.AddrPortFrom(lab.ServerAddr.Addr(), lab.Port))
	}
	if err := d.sessions(srv, dial); err != nil {
		return err
	}
	d.ladder(srv)
	fmt.Fprintf(d.out, "\ndone: both close orders seen from inside the stack; run with sudo to see the same over a real TUN with tcpdump and ss.\n")
	return nil
}

func (d *demo) inLab(ctx context.Context, l *lab.Lab) (err error) {
	fmt.Fprintf(d.out, "tcp-upper demo: the seed's lab with the server's TCP in gVisor's netstack on a TUN\n")
	fmt.Fprintf(d.out, "  ant %s (kernel TCP, client) --veth-- apple %s --tun0 %s--> netstack %s:%d (server)\n",
		lab.AntAddr.Addr(), lab.AppleAddr.Addr(), lab.TunAddr.Addr(), lab.ServerAddr.Addr(), lab.Port)
	if err := l.Up(); err != nil {
		return err
	}
	defer func() {
		if derr := l.Down(); derr != nil && err == nil {
			err = derr
		}
	}()
	fmt.Fprintf(d.out, "  namespaces %s and %s (removed at the end)\n", l.NetNS(lab.Ant), l.NetNS(lab.Apple))

	dev, err := l.OpenServerTUN(d.log, false)
	if err != nil {
		return err
	}
	dump := d.startTcpdump(l)
	srv, err := d.newServerStack(dev)
	if err != nil {
		return err
	}
	defer srv.close()
	// The kernel client's side, from its tracepoints: the sockets this
	// process connects from ant to the server.
	ks, err := kevents.Start(kevents.Options{Host: lab.Ant, Server: netip.AddrPortFrom(lab.ServerAddr.Addr(), lab.Port)}, l.NetNSPath(lab.Ant))
	if err != nil {
		fmt.Fprintf(d.out, "(the kernel client's side is not shown: %v)\n", err)
	} else {
		defer ks.Close()
		srv.narr.kernel = ks
	}
	dial := func() (net.Conn, error) {
		var conn net.Conn
		err := l.Do(lab.Ant, func() error {
			var derr error
			conn, derr = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp4", net.JoinHostPort(lab.ServerAddr.Addr().String(), fmt.Sprint(lab.Port)))
			return derr
		})
		if err != nil {
			return nil, fmt.Errorf("client in ant: %w", err)
		}
		return conn, nil
	}
	if err := d.sessions(srv, dial); err != nil {
		return err
	}
	if ks != nil {
		if lost := ks.Lost(); lost > 0 {
			d.say("(%d of the kernel's records or events were lost: its trace buffer overflowed or we fell behind; the kernel client's side above may miss lines)", lost)
		}
	}

	d.section("the kernel's view")
	if dump != nil {
		seen := dump.stop()
		ours := srv.narr.traced()
		if sameButTime(seen, ours) {
			d.printf("apple", "$ tcpdump -ni tun0 tcp port %d\n(%d packets: field for field the lines of our stack's trace above; only the timestamps differ by microseconds, tcpdump's are taken in the kernel)", lab.Port, len(seen))
		} else {
			d.printf("apple", "$ tcpdump -ni tun0 tcp port %d   (%d packets; our trace had %d)\n%s", lab.Port, len(seen), len(ours), strings.Join(seen, "\n"))
		}
	}
	if out, err := d.runIn(l, lab.Ant, "ss", "-tan", "state", "time-wait"); err == nil {
		d.printf("ant", "$ ss -tan state time-wait   # part 1's connection: the kernel client closed first, TIME-WAIT is its (60s)\n%s", out)
	}
	if out, err := d.runIn(l, lab.Apple, "ss", "-ntl"); err == nil {
		d.printf("apple", "$ ss -ntl   # no kernel listener on %d: the server's TCP is ours\n%s", lab.Port, out)
	}
	d.ladder(srv)
	fmt.Fprintf(d.out, "\ndone: lab %q torn down.\n", l.Name)
	return nil
}

// sameButTime reports whether two tcpdump listings match line for line
// after their timestamps.
func sameButTime(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		_, x, _ := strings.Cut(a[i], " ")
		_, y, _ := strings.Cut(b[i], " ")
		if x != y {
			return false
		}
	}
	return true
}

func (d *demo) runIn(l *lab.Lab, host string, name string, args ...string) (string, error) {
	if _, err := exec.LookPath(name); err != nil {
		return "", err
	}
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := l.Start(host, cmd); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
		return "", fmt.Errorf("%s timed out", name)
	}
}

// capture is a running tcpdump.
type capture struct {
	cmd  *exec.Cmd
	out  *lineWatch
	done chan error
}

// startTcpdump starts tcpdump on apple's tun0 if it is installed, and
// waits until it is capturing. It returns nil (and says so) otherwise.
func (d *demo) startTcpdump(l *lab.Lab) *capture {
	if _, err := exec.LookPath("tcpdump"); err != nil {
		fmt.Fprintf(d.out, "(tcpdump is not installed: skipping the capture; apt-get install tcpdump to see it)\n")
		return nil
	}
	c := &capture{out: &lineWatch{}, done: make(chan error, 1)}
	c.cmd = exec.Command("tcpdump", "-l", "-n", "-i", "tun0", "tcp", "port", fmt.Sprint(lab.Port))
	c.cmd.Stdout, c.cmd.Stderr = c.out, c.out
	if err := l.Start(lab.Apple, c.cmd); err != nil {
		fmt.Fprintf(d.out, "(tcpdump did not start: %v)\n", err)
		return nil
	}
	go func() { c.done <- c.cmd.Wait() }()
	if !c.out.waitFor("listening on", 5*time.Second) {
		c.stop()
		fmt.Fprintf(d.out, "(tcpdump did not start capturing: %s)\n", strings.TrimSpace(c.out.String()))
		return nil
	}
	return c
}

// stop interrupts tcpdump and returns the packets it printed.
func (c *capture) stop() []string {
	c.cmd.Process.Signal(os.Interrupt)
	select {
	case <-c.done:
	case <-time.After(3 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(c.out.String()))
	for sc.Scan() {
		t := sc.Text()
		if strings.Contains(t, " IP ") {
			lines = append(lines, t)
		}
	}
	return lines
}

// lineWatch collects output (passing it on to next, if set) and lets a
// caller wait for a substring to appear.
type lineWatch struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	next    io.Writer
	changed chan struct{} // a token after each write (made on first use)
}

func (w *lineWatch) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf.Write(p)
	ch := w.changedLocked()
	w.mu.Unlock()
	select {
	case ch <- struct{}{}:
	default:
	}
	if w.next != nil {
		w.next.Write(p)
	}
	return len(p), nil
}

func (w *lineWatch) changedLocked() chan struct{} {
	if w.changed == nil {
		w.changed = make(chan struct{}, 1)
	}
	return w.changed
}

func (w *lineWatch) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// waitFor waits until s has been written, or for at most timeout. One
// goroutine at a time may wait (a write wakes one waiter).
func (w *lineWatch) waitFor(s string, timeout time.Duration) bool {
	w.mu.Lock()
	ch := w.changedLocked()
	w.mu.Unlock()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for !strings.Contains(w.String(), s) {
		select {
		case <-ch:
		case <-deadline.C:
			return strings.Contains(w.String(), s)
		}
	}
	return true
}
