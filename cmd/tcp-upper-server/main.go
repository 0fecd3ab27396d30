// Command tcp-upper-server is the lab's server: it uppercases what clients
// send. Its TCP is gVisor's netstack on a TUN device (the default) or, for
// comparison, the kernel's.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/cmd/internal/cli"
	"github.com/tcp-upper/tcp-upper/cmd/internal/watch"
	"github.com/tcp-upper/tcp-upper/internal/gcfloor"
	"github.com/tcp-upper/tcp-upper/internal/kevents"
	"github.com/tcp-upper/tcp-upper/lab"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/netstack/control"
	"github.com/tcp-upper/tcp-upper/node"
	"github.com/tcp-upper/tcp-upper/tun"
)

const prog = "tcp-upper-server"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// config is the server's command line.
type config struct {
	port     cli.Port
	stack    string
	tun      string
	addr     cli.Prefix
	tunAddr  netip.Prefix // invalid: leave the device alone
	mtu      int
	mtuSet   bool
	offload  bool
	spin     time.Duration
	logLevel string
	idle     time.Duration
	maxConns int
	backlog  int
	procs    int
	handOff  bool
	gcFloor  int // MiB
	userTO   time.Duration
	obs      watch.Flags
	cpuProf  string
	memProf  string
	user     *account // --user: whom to become once the device and files are open
}

// DefaultTunSpin is --tun-spin's default: long enough to catch the next
// request of an exchange on the lab's path (a round trip of 20-60 µs).
const DefaultTunSpin = 50 * time.Microsecond

// netstackOnly are the server's own flags that mean nothing to the
// kernel's TCP (the observation flags are observe's); the rest (port,
// --idle-close, --max-conns, --user-timeout, --user, --log-level,
// --cpuprofile, --memprofile, --procs, --gc-floor) serve both stacks.
var netstackOnly = cli.NetstackOnly{
	"tun":      "the kernel's TCP needs no TUN",
	"tun-addr": "the kernel's TCP needs no TUN",
	"mtu":      "the kernel's TCP needs no TUN",
	"offload":  "the kernel's TCP needs no TUN",
	"addr":     "the kernel's TCP listens on 0.0.0.0 of its namespace",
	"backlog":  "the kernel's backlog is net.core.somaxconn",
	"hand-off": "the kernel's connections are always served from a goroutine",
	"tun-spin": "the kernel's TCP needs no TUN",
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{port: 9999}
	c.addr.Set("10.0.2.2/24")
	fs := cli.NewFlagSet(prog, stderr, prog+" [-p PORT] [--stack netstack|kernel] [--tun NAME] [--addr CIDR] [--tun-addr CIDR|none] [--mtu N] [--tun-spin D]\n       [--trace|--trace-x] [--pcap FILE] [--events [--events-format text|json]] [--time-wait D] [--idle-close D] [--control PATH|none]\n       [--max-conns N] [--backlog N] [--user-timeout D]\n       [--fault RULE]... [--seed N] [--user NAME]")
	fs.Var(&c.port, "p", "TCP port to listen on (short for --port)")
	fs.Var(&c.port, "port", "TCP port to listen on")
	fs.StringVar(&c.stack, "stack", "netstack", "whose TCP serves: netstack (gVisor on a TUN) or kernel (plain net.Listen)")
	fs.StringVar(&c.tun, "tun", "tun0", "TUN device: created if absent (and deleted on exit), attached if it exists as a persistent device")
	fs.Var(&c.addr, "addr", "the server's address inside the user-space stack")
	tunAddr := fs.String("tun-addr", "", "address for the kernel side of the TUN (default: the first host of --addr's network, e.g. 10.0.2.1/24); none leaves a pre-configured device alone")
	fs.IntVar(&c.mtu, "mtu", 1500, "MTU of the TUN and of the stack's NIC")
	fs.BoolVar(&c.offload, "offload", true, "open the TUN with checksum and segmentation offloads (IFF_VNET_HDR): TCP segments of up to 64 KiB cross it in one piece, as on a kernel NIC; --offload=false for the plain one-packet-per-read TUN")
	fs.DurationVar(&c.spin, "tun-spin", DefaultTunSpin, "after the TUN runs empty, keep polling it for up to this long before sleeping in Go's netpoller, so the next packet of an exchange finds the reader awake: faster request/response and connections, for a CPU kept busy between packets that come less than this apart (0: sleep at once, for a machine with no CPU to spare; at most 1ms; see docs/PERFORMANCE.md)")
	fs.StringVar(&c.logLevel, "log-level", "warn", "log level on stderr: debug, info, warn or error")
	fs.DurationVar(&c.idle, "idle-close", 0, "close a connection that has received nothing for this long, so the server closes first and TIME-WAIT lands in our stack (0: never)")
	fs.IntVar(&c.maxConns, "max-conns", 0, "serve at most N connections at once; more are closed as soon as they are accepted, counted and logged (0: no limit)")
	fs.IntVar(&c.backlog, "backlog", 4096, "listen backlog of our stack: with this many handshakes pending, SYNs are answered with SYN cookies")
	fs.IntVar(&c.procs, "procs", 0, "Go threads running the server's Go code at once (GOMAXPROCS), on either stack; 0: Go's default (the GOMAXPROCS variable, or one per CPU). With 1, a segment our stack reads from the TUN reaches the application's goroutine on the same thread instead of waking another: faster connections and request/response on a busy machine, less parallel bulk on an idle one (see docs/PERFORMANCE.md)")
	fs.BoolVar(&c.handOff, "hand-off", false, "serve every request from a goroutine woken for it, as the server did before; by default a short request is answered on the goroutine that received it from the TUN (see docs/PERFORMANCE.md), for comparison")
	fs.IntVar(&c.gcFloor, "gc-floor", 32, "MiB: keep the Go garbage collector's heap goal at least this large while the live heap is small, so a busy server collects every 32 MiB of allocation rather than every 4 MiB (each collection delays the request/responses around it; see docs/PERFORMANCE.md); 0: Go's default")
	fs.DurationVar(&c.userTO, "user-timeout", 0, "abort a connection whose sent data or FIN stays unacknowledged this long (TCP_USER_TIMEOUT), so a vanished peer is freed (0: the stack's retransmission limit)")
	c.obs.Register(fs)
	userName := fs.String("user", "", "after opening the TUN, the control socket and the pcap file, run as this user (setgroups, setgid, setuid); needs root")
	fs.StringVar(&c.cpuProf, "cpuprofile", "", "write a Go CPU profile of the whole run to this file (go tool pprof), for performance work")
	fs.StringVar(&c.memProf, "memprofile", "", "at exit, write a Go allocation profile of the whole run to this file (go tool pprof -sample_index=alloc_space), for performance work")
	if err := cli.Parse(fs, args); err != nil {
		return nil, err
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "mtu" {
			c.mtuSet = true
		}
	})
	if c.idle < 0 {
		return nil, cli.Usagef("bad --idle-close %v: want a positive duration, or 0 for never", c.idle)
	}
	if c.maxConns < 0 {
		return nil, cli.Usagef("bad --max-conns %d: want a positive number, or 0 for no limit", c.maxConns)
	}
	if c.backlog < 1 || c.backlog > 65535 {
		return nil, cli.Usagef("bad --backlog %d: want 1 to 65535", c.backlog)
	}
	if c.spin < 0 || c.spin > time.Millisecond {
		return nil, cli.Usagef("bad --tun-spin %v: want 0 to 1ms", c.spin)
	}
	if c.procs < 0 || c.procs > 1024 {
		return nil, cli.Usagef("bad --procs %d: want 1 to 1024, or 0 for Go's default", c.procs)
	}
	if c.gcFloor < 0 || c.gcFloor > 4096 {
		return nil, cli.Usagef("bad --gc-floor %d: want 1 to 4096 MiB, or 0 for Go's default", c.gcFloor)
	}
	if c.userTO < 0 {
		return nil, cli.Usagef("bad --user-timeout %v: want a positive duration, or 0 for none", c.userTO)
	}
	switch c.stack {
	case "netstack":
	case "kernel":
		if err := cli.CheckStack(fs, c.stack, cli.Merge(netstackOnly, c.obs.NetstackOnly(watch.KernelEvents...))); err != nil {
			return nil, err
		}
		if err := c.obs.ValidateFormat(); err != nil {
			return nil, err
		}
	default:
		return nil, cli.Usagef("bad --stack %q: want netstack or kernel", c.stack)
	}
	if c.mtu < 68 || c.mtu > 65535 {
		return nil, cli.Usagef("bad --mtu %d: want 68 to 65535", c.mtu)
	}
	if err := tun.ValidName(c.tun); err != nil {
		return nil, cli.Usagef("bad --tun: %v", err)
	}
	switch *tunAddr {
	case "none":
	case "":
		c.tunAddr = cli.FirstHost(c.addr.Prefix)
		if c.tunAddr.Addr() == c.addr.Addr() {
			return nil, cli.Usagef("--addr %s is the first host of its network, which the kernel side takes by default: give --tun-addr", c.addr)
		}
	default:
		p, err := cli.ParseHostPrefix(*tunAddr)
		if err != nil {
			return nil, cli.Usagef("bad --tun-addr: %v", err)
		}
		if p.Addr() == c.addr.Addr() {
			return nil, cli.Usagef("--tun-addr %s equals --addr: the kernel side and the stack need different addresses", p)
		}
		if !p.Masked().Contains(c.addr.Addr()) {
			return nil, cli.Usagef("--addr %s is outside --tun-addr's network %s: the kernel would not route to the stack", c.addr.Addr(), p.Masked())
		}
		c.tunAddr = p
	}
	if c.stack == "netstack" {
		if err := c.obs.Validate(c.tun); err != nil {
			return nil, err
		}
	}
	if *userName != "" && c.stack == "kernel" && c.obs.Events {
		return nil, cli.Usagef("--events with --stack kernel cannot go with --user: the kernel's trace instance needs root to be removed at exit; drop one of them")
	}
	if *userName != "" {
		a, err := lookupAccount(*userName)
		if err != nil {
			return nil, cli.Usagef("%v", err)
		}
		c.user = a
	}
	return c, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c, err := parseFlags(args, stderr)
	if err != nil {
		return cli.Exit(stderr, prog, err)
	}
	log, err := cli.Logger(stderr, c.logLevel)
	if err != nil {
		return cli.Exit(stderr, prog, err)
	}
	if c.cpuProf != "" {
		f, err := os.Create(c.cpuProf)
		if err != nil {
			return cli.Exit(stderr, prog, fmt.Errorf("--cpuprofile: %w", err))
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return cli.Exit(stderr, prog, fmt.Errorf("--cpuprofile: %w", err))
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	if c.memProf != "" {
		f, err := os.Create(c.memProf)
		if err != nil {
			return cli.Exit(stderr, prog, fmt.Errorf("--memprofile: %w", err))
		}
		defer func() {
			if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
				fmt.Fprintf(stderr, "%s: --memprofile: %v\n", prog, err)
			}
			f.Close()
		}()
	}
	c.applyProcs()
	defer gcfloor.Start(uint64(c.gcFloor) << 20)()
	if c.stack == "kernel" {
		return cli.Exit(stderr, prog, serveKernel(ctx, c, stdout, stderr, log))
	}
	return cli.Exit(stderr, prog, serveNetstack(ctx, c, stdout, stderr, log))
}

func serveKernel(ctx context.Context, c *config, stdout, stderr io.Writer, log *slog.Logger) error {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		if c.userTO <= 0 {
			return nil
		}
		var serr error
		err := rc.Control(func(fd uintptr) {
			// Accepted sockets inherit the listener's TCP_USER_TIMEOUT.
			serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(c.userTO.Milliseconds()))
		})
		if err == nil {
			err = serr
		}
		if err != nil {
			return fmt.Errorf("set TCP_USER_TIMEOUT: %w", err)
		}
		return nil
	}}
	ln, err := lc.Listen(context.Background(), "tcp4", fmt.Sprintf("0.0.0.0:%d", c.port))
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("listen on 0.0.0.0:%d: port in use: stop the other server or pick another -p", c.port)
		}
		if errors.Is(err, syscall.EACCES) {
			return fmt.Errorf("listen on 0.0.0.0:%d: permission denied: ports below 1024 need root; pick another -p", c.port)
		}
		return err
	}
	if c.obs.Events {
		// The kernel's own account of its connections on our port,
		// from its tracepoints (started before dropping root).
		ks, err := kevents.Start(kevents.Options{Host: lab.HostHere(), Port: uint16(c.port)}, "")
		if err != nil {
			fmt.Fprintf(stderr, "%s: --events: the kernel's events are not shown: %v; serving without them\n", prog, err)
		} else {
			w := cli.NewSyncWriter(stderr)
			printed := make(chan struct{})
			go func() {
				defer close(printed)
				watch.PrintEvents(ks.C(), c.obs.EventsFormat, w, nil)
			}()
			defer func() {
				ks.Sync() // what the closing connections did
				if err := ks.Close(); err != nil {
					w.Line(fmt.Sprintf("events: %v", err))
				}
				<-printed
				if lost := ks.Lost(); lost > 0 {
					w.Line(fmt.Sprintf("events: %d of the kernel's records or events lost (its trace buffer overflowed or stderr was too slow)", lost))
				}
			}()
		}
	}
	if err := c.user.drop(); err != nil {
		ln.Close()
		return err
	}
	srv := app.NewServer(ln, app.ServerOptions{Out: stdout, IdleClose: c.idle, MaxConns: c.maxConns}, log)
	return serve(ctx, srv, log)
}

func serveNetstack(ctx context.Context, c *config, stdout, stderr io.Writer, log *slog.Logger) (err error) {
	mtu := c.mtu
	if !c.tunAddr.IsValid() && !c.mtuSet {
		mtu = 0 // adopt the pre-configured device's MTU
	}
	dev, err := tun.Open(tun.Config{Name: c.tun, MTU: mtu, Addr: c.tunAddr, Offload: c.offload}, log)
	if err != nil {
		return err
	}
	opts := netstack.Options{
		Host:        lab.HostHere(),
		Addr:        c.addr.Prefix,
		Backlog:     c.backlog,
		UserTimeout: c.userTO,

		TunSpin: c.spin,
	}
	obs, err := watch.New(&c.obs, &opts, stderr, log)
	if err != nil {
		dev.Close()
		return err
	}
	// The node closes the stack (flushing the trace and the tracker), the
	// device, then the watcher, which reports what could not be recorded.
	n, err := node.Start(dev, node.Options{
		Stack: opts, Serve: true, Port: uint16(c.port),
		Server: app.ServerOptions{Out: obs.Ordered(stdout), IdleClose: c.idle, MaxConns: c.maxConns, HandOff: c.handOff},
		Watch:  obs.Watcher(control.Hello{Program: prog, TUN: dev.Name(), Addr: c.addr.String()}),
		Log:    log,
	})
	if err != nil {
		return err
	}
	defer n.Close()
	if err := c.user.drop(); err != nil {
		return err
	}
	log.Info("serving", "tun", dev.Name(), "created", dev.Created(), "addr", c.addr, "mtu", dev.MTU(), "control", obs.ControlPath())
	n.Serve()
	select {
	case err := <-n.Served():
		return err
	case err := <-n.LinkErr():
		shutdown(n, log)
		return err
	case <-ctx.Done():
	}
	shutdown(n, log)
	return nil
}

// applyProcs sets GOMAXPROCS to --procs unless it is 0 (Go's default).
func (c *config) applyProcs() {
	if c.procs > 0 {
		runtime.GOMAXPROCS(c.procs)
	}
}

// serve runs srv (the kernel's stack) until ctx ends (SIGINT/SIGTERM: a
// clean shutdown, exit 0) or accepting fails.
func serve(ctx context.Context, srv *app.Server, log *slog.Logger) error {
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown", "err", err)
	}
	return nil
}

// shutdown takes the node down (node.Shutdown: every connection closed
// with a FIN, the FINs acknowledged unless the link is down, then the
// stack and the device). A signal asked for a clean exit, so what could
// not close in time is logged, not failed on.
func shutdown(n *node.Node, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.Shutdown(ctx); err != nil {
		log.Warn("shutdown", "err", err)
	}
}
