// Command tcp-upper-client is the lab's interactive client: each line typed
// at the "> " prompt goes to the server and its uppercased reply is printed;
// Ctrl-D closes the connection (the active close). Its TCP is the kernel's,
// or with --stack netstack a user-space stack of its own on a TUN.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/cmd/internal/cli"
	"github.com/tcp-upper/tcp-upper/cmd/internal/watch"
	"github.com/tcp-upper/tcp-upper/lab"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/netstack/control"
	"github.com/tcp-upper/tcp-upper/node"
	"github.com/tcp-upper/tcp-upper/tun"
)

const prog = "tcp-upper-client"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

type config struct {
	server   netip.Addr
	port     cli.Port
	stack    string
	tun      string
	addr     cli.Prefix
	tunAddr  netip.Prefix
	mtu      int
	offload  bool
	timeout  time.Duration
	logLevel string
	obs      watch.Flags
	linger   bool
}

// netstackOnly are the client's own flags that mean nothing to the
// kernel's TCP (the observation flags are observe's).
var netstackOnly = cli.NetstackOnly{
	"tun":      "the kernel's TCP needs no TUN",
	"tun-addr": "the kernel's TCP needs no TUN",
	"mtu":      "the kernel's TCP needs no TUN",
	"offload":  "the kernel's TCP needs no TUN",
	"addr":     "the kernel's TCP uses its namespace's own address",
	"linger":   "the kernel keeps its own TIME-WAIT after the client exits; watch it with ss",
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{port: 9999}
	c.addr.Set("10.0.3.2/24")
	fs := cli.NewFlagSet(prog, stderr, prog+" -i SERVER_IP [-p PORT] [--stack kernel|netstack [--tun NAME] [--addr CIDR] [--tun-addr CIDR|none]\n       [--trace|--trace-x] [--pcap FILE] [--events [--events-format text|json]] [--time-wait D] [--control PATH|none] [--fault RULE]... [--seed N]]")
	ip := fs.String("i", "", "server IP address (required)")
	fs.Var(&c.port, "p", "server port (short for --port)")
	fs.Var(&c.port, "port", "server port")
	fs.StringVar(&c.stack, "stack", "kernel", "whose TCP the client uses: kernel, or netstack (its own gVisor stack on a TUN)")
	fs.StringVar(&c.tun, "tun", "tun1", "with --stack netstack: the client's TUN device")
	fs.Var(&c.addr, "addr", "with --stack netstack: the client's address inside its stack")
	tunAddr := fs.String("tun-addr", "", "with --stack netstack: address of the kernel side of the TUN (default: first host of --addr's network); none leaves the device alone")
	fs.IntVar(&c.mtu, "mtu", 1500, "with --stack netstack: MTU of the TUN")
	fs.BoolVar(&c.offload, "offload", true, "with --stack netstack: open the TUN with checksum and segmentation offloads (IFF_VNET_HDR); --offload=false for the plain one")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "how long to wait for the connection to be established")
	fs.StringVar(&c.logLevel, "log-level", "warn", "log level on stderr: debug, info, warn or error")
	c.obs.Register(fs)
	fs.BoolVar(&c.linger, "linger", false, "with --stack netstack: after closing, keep the stack up until TIME-WAIT ends (watch it with --events or tcp-upper-lab ss; Ctrl-C to stop)")
	if err := cli.Parse(fs, args); err != nil {
		return nil, err
	}
	switch c.stack {
	case "kernel", "netstack":
	default:
		return nil, cli.Usagef("bad --stack %q: want kernel or netstack", c.stack)
	}
	if err := cli.CheckStack(fs, c.stack, cli.Merge(netstackOnly, c.obs.NetstackOnly())); err != nil {
		return nil, err
	}
	if *ip == "" {
		return nil, cli.Usagef("-i SERVER_IP is required, e.g. %s -i 10.0.2.2", prog)
	}
	a, err := netip.ParseAddr(*ip)
	if err != nil || !a.Is4() {
		return nil, cli.Usagef("bad -i %q: want the server's IPv4 address, such as 10.0.2.2", *ip)
	}
	c.server = a
	if c.timeout <= 0 {
		return nil, cli.Usagef("bad --timeout %v: want a positive duration", c.timeout)
	}
	if c.stack == "netstack" {
		if err := tun.ValidName(c.tun); err != nil {
			return nil, cli.Usagef("bad --tun: %v", err)
		}
		if c.mtu < 68 || c.mtu > 65535 {
			return nil, cli.Usagef("bad --mtu %d: want 68 to 65535", c.mtu)
		}
		switch *tunAddr {
		case "none":
		case "":
			c.tunAddr = cli.FirstHost(c.addr.Prefix)
		default:
			p, err := cli.ParseHostPrefix(*tunAddr)
			if err != nil {
				return nil, cli.Usagef("bad --tun-addr: %v", err)
			}
			c.tunAddr = p
		}
		if c.tunAddr.IsValid() && c.tunAddr.Addr() == c.addr.Addr() {
			return nil, cli.Usagef("--tun-addr %s equals --addr: the kernel side and the stack need different addresses", c.tunAddr)
		}
		if err := c.obs.Validate(c.tun); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func run(ctx context.Context, args []string, stdin *os.File, stdout, stderr io.Writer) int {
	c, err := parseFlags(args, stderr)
	if err != nil {
		return cli.Exit(stderr, prog, err)
	}
	log, err := cli.Logger(stderr, c.logLevel)
	if err != nil {
		return cli.Exit(stderr, prog, err)
	}
	return cli.Exit(stderr, prog, session(ctx, c, stdin, stdout, stderr, log))
}

func session(ctx context.Context, c *config, stdin *os.File, stdout, stderr io.Writer, log *slog.Logger) error {
	target := netip.AddrPortFrom(c.server, uint16(c.port))
	dctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	var conn net.Conn
	var st *netstack.Stack
	if c.stack == "netstack" {
		dev, err := tun.Open(tun.Config{Name: c.tun, MTU: c.mtu, Addr: c.tunAddr, Offload: c.offload}, log)
		if err != nil {
			return err
		}
		opts := netstack.Options{Addr: c.addr.Prefix, Host: lab.HostHere()}
		obs, err := watch.New(&c.obs, &opts, stderr, log)
		if err != nil {
			dev.Close()
			return err
		}
		n, err := node.Start(dev, node.Options{Stack: opts, Log: log,
			Watch: obs.Watcher(control.Hello{Program: prog, TUN: dev.Name(), Addr: c.addr.String()})})
		if err != nil {
			return err
		}
		defer n.Close()
		st = n.Stack
		conn, err = st.Dial(dctx, target)
		if err != nil {
			return dialError(target, c.timeout, ctx, err, false)
		}
	} else {
		var err error
		conn, err = (&net.Dialer{}).DialContext(dctx, "tcp4", target.String())
		if err != nil {
			return dialError(target, c.timeout, ctx, err, true)
		}
	}

	var lines app.LineReader
	out := stdout
	if app.IsTerminal(stdin) {
		tl, err := app.NewTermLines(stdin, stdout)
		if err != nil {
			conn.Close()
			return err
		}
		defer tl.Close()
		lines, out = tl, tl.Writer()
	} else {
		lines = app.NewPipeLines(stdin)
	}

	done := make(chan error, 1)
	go func() { done <- app.Session(conn, lines, out) }()
	select {
	case err := <-done:
		if err != nil {
			return err
		}
	case <-ctx.Done():
		conn.Close()
		return errors.New("interrupted: connection closed")
	}
	if st != nil {
		// Our stack made the active close: let the FIN exchange finish (the
		// connection then sits in TIME-WAIT in our stack) before it goes.
		wctx, wcancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer wcancel()
		if err := st.Drain(wctx); err != nil {
			log.Warn("close not finished", "err", err)
		}
		if c.linger {
			log.Info("lingering until TIME-WAIT ends", "time-wait", c.obs.TimeWait)
			if err := st.WaitTimeWait(ctx); err != nil {
				log.Info("stopped lingering", "err", err)
			}
		}
	}
	return nil
}

// dialError turns a failed connect into one line that says what to check;
// kernel says whether the kernel's TCP (in this namespace) made it.
func dialError(target netip.AddrPort, timeout time.Duration, parent context.Context, err error, kernel bool) error {
	msg := err.Error()
	switch {
	case parent.Err() != nil:
		return fmt.Errorf("connect to %s: interrupted", target)
	case errors.Is(err, syscall.ECONNREFUSED) || strings.Contains(msg, "connection refused"):
		return fmt.Errorf("connect to %s: connection refused: nothing listens on port %d there (is tcp-upper-server running?)", target, target.Port())
	case errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) || strings.Contains(msg, "no route to host") || strings.Contains(msg, "network is unreachable"):
		return fmt.Errorf("connect to %s: no route to host: %s", target, unreachableHint(target.Addr(), kernel))
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || strings.Contains(msg, "timed out") || strings.Contains(msg, "timeout"):
		return fmt.Errorf("connect to %s: no answer within %v (SYNs unanswered): is the server up and reachable? (--timeout to wait longer)", target, timeout)
	}
	return fmt.Errorf("connect to %s: %w", target, err)
}

// unreachableHint says where the way to addr ends, from this namespace's
// routes: with none, the client runs in the wrong place; through a router,
// that router knows no way on; on a directly attached network, no host
// answers for addr there. Either way the address may be wrong.
func unreachableHint(addr netip.Addr, kernel bool) string {
	if !kernel {
		return "check the address; the stack sends everything through its TUN to this host's kernel, which has no way to it"
	}
	routes, err := netlink.RouteGet(net.IP(addr.AsSlice()))
	switch {
	case err != nil || len(routes) == 0:
		return fmt.Sprintf("this host has no route to %s: check the address, or run the client where the server is reachable (in the lab: tcp-upper-lab exec ant %s -i 10.0.2.2)", addr, prog)
	case routes[0].Gw != nil:
		return fmt.Sprintf("the router %s on the way has no route to %s: check the address (the lab's server is 10.0.2.2)", routes[0].Gw, addr)
	}
	return fmt.Sprintf("no host answers for %s on the directly attached network: check the address (the lab's server is 10.0.2.2)", addr)
}
