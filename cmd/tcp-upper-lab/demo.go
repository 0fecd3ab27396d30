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
	"github.com/tcp-upper/tcp-upper/lab"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/tun"
)

// demoLines is the seed's client session.
var demoLines = []string{"abc", "hello world!", "fasionchan.com"}

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet(prog+" demo", stderr, prog+" demo [--in-memory] [--name N]")
	inMemory := fs.Bool("in-memory", false, "run over an in-process link between two user-space stacks even when root")
	name := fs.String("name", fmt.Sprintf("demo%d", os.Getpid()%100000), "lab name for the demo's namespaces")
	logLevel := fs.String("log-level", "warn", "log level on stderr")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	log, err := cli.Logger(stderr, *logLevel)
	if err != nil {
		return err
	}
	d := &demo{out: stdout, log: log}
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
// terminal windows, each line tagged with the host it happens on.
type demo struct {
	out io.Writer
	log *slog.Logger
	mu  sync.Mutex
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

// hostWriter tags each line written to it with host.
type hostWriter struct {
	d    *demo
	host string
}

func (w hostWriter) Write(p []byte) (int, error) {
	w.d.printf(w.host, "%s", p)
	return len(p), nil
}

// echoLines feeds the demo's lines to the client as if typed at its prompt.
type echoLines struct {
	d     *demo
	lines []string
}

func (e *echoLines) ReadLine() (string, error) {
	if len(e.lines) == 0 {
		e.d.printf("ant", "> ^D   (end of input: the client closes first)")
		return "", io.EOF
	}
	l := e.lines[0]
	e.lines = e.lines[1:]
	e.d.printf("ant", "> %s", l)
	return l + "\n", nil
}

// session runs the client's side over conn and waits for the server to
// report the disconnect.
func (d *demo) session(conn net.Conn, serverOut *lineWatch) error {
	local := conn.LocalAddr().String()
	if err := app.Session(conn, &echoLines{d: d, lines: append([]string(nil), demoLines...)}, hostWriter{d, "ant"}); err != nil {
		return fmt.Errorf("client session: %w", err)
	}
	if !serverOut.waitFor(local+" disconnected", 5*time.Second) {
		return fmt.Errorf("server did not report %s disconnected within 5s", local)
	}
	return nil
}

// startServer runs the uppercase server on st, printing as apple.
func (d *demo) startServer(st *netstack.Stack) (*app.Server, *lineWatch, error) {
	ln, err := st.Listen(lab.Port)
	if err != nil {
		return nil, nil, err
	}
	w := &lineWatch{next: hostWriter{d, "apple"}}
	srv := app.NewServer(ln, app.ServerOptions{Out: w}, d.log)
	go srv.Serve()
	if !w.waitFor("listening at port", 5*time.Second) {
		return nil, nil, errors.New("server did not start")
	}
	return srv, w, nil
}

func (d *demo) inMemory(ctx context.Context) error {
	fmt.Fprintf(d.out, "tcp-upper demo (in memory): client stack %s <-> server stack %s:%d, both gVisor netstack, joined by an in-process link\n",
		lab.AntAddr.Addr(), lab.ServerAddr.Addr(), lab.Port)
	a, b := tun.Pipe("apple0", "ant0", 1500)
	srvStack, err := netstack.New(a, netstack.Options{Addr: lab.ServerAddr}, d.log)
	if err != nil {
		return err
	}
	defer srvStack.Close()
	cliStack, err := netstack.New(b, netstack.Options{Addr: lab.AntAddr}, d.log)
	if err != nil {
		return err
	}
	defer cliStack.Close()

	d.section("the session")
	d.printf("apple", "$ tcp-upper-server")
	srv, watch, err := d.startServer(srvStack)
	if err != nil {
		return err
	}
	d.printf("ant", "$ tcp-upper-client -i %s", lab.ServerAddr.Addr())
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := cliStack.Dial(dctx, netip.AddrPortFrom(lab.ServerAddr.Addr(), lab.Port))
	if err != nil {
		return err
	}
	if err := d.session(conn, watch); err != nil {
		return err
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "\ndone: three lines uppercased, the client closed first; run with sudo to see the same over a real TUN with tcpdump and ss.\n")
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

	dev, err := tun.Open(tun.Config{Name: "tun0", MTU: 1500, Addr: lab.TunAddr, NetNS: l.NetNSPath(lab.Apple)}, d.log)
	if err != nil {
		return err
	}
	defer dev.Close()
	st, err := netstack.New(dev, netstack.Options{Addr: lab.ServerAddr}, d.log)
	if err != nil {
		return err
	}
	defer st.Close()

	d.section("the session (server on our stack in apple, client on the kernel's TCP in ant)")
	dump := d.startTcpdump(l)
	d.printf("apple", "$ tcp-upper-server")
	srv, watch, err := d.startServer(st)
	if err != nil {
		return err
	}
	d.printf("ant", "$ tcp-upper-client -i %s", lab.ServerAddr.Addr())
	var conn net.Conn
	if err := l.Do(lab.Ant, func() error {
		var derr error
		conn, derr = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp4", fmt.Sprintf("%s:%d", lab.ServerAddr.Addr(), lab.Port))
		return derr
	}); err != nil {
		return fmt.Errorf("client in ant: %w", err)
	}
	if err := d.session(conn, watch); err != nil {
		return err
	}

	if dump != nil {
		time.Sleep(300 * time.Millisecond) // let tcpdump print the last ACK
		d.section("what tcpdump saw on tun0 in apple: handshake, data with its ACKs, the four-way close")
		d.printf("apple", "$ tcpdump -ni tun0 tcp port %d", lab.Port)
		d.printf("apple", "%s", dump.stop())
	}
	if out, err := d.runIn(l, lab.Ant, "ss", "-tan", "state", "time-wait"); err == nil {
		d.section("ss in ant: the client closed first, so TIME-WAIT is on its side (60s on Linux)")
		d.printf("ant", "$ ss -tan state time-wait")
		d.printf("ant", "%s", out)
	}
	if out, err := d.runIn(l, lab.Apple, "ss", "-ntl"); err == nil {
		d.section("ss in apple: no kernel listener on 9999; the server's TCP is ours")
		d.printf("apple", "$ ss -ntl")
		d.printf("apple", "%s", out)
	}

	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "\ndone: lab %q torn down.\n", l.Name)
	return nil
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
func (c *capture) stop() string {
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
	return strings.Join(lines, "\n")
}

// lineWatch collects output (passing it on to next, if set) and lets a
// caller wait for a substring to appear.
type lineWatch struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	next io.Writer
}

func (w *lineWatch) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf.Write(p)
	w.mu.Unlock()
	if w.next != nil {
		w.next.Write(p)
	}
	return len(p), nil
}

func (w *lineWatch) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func (w *lineWatch) waitFor(s string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(w.String(), s) {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return false
}
