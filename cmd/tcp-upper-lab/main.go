// Command tcp-upper-lab builds and drives the lab: the seed's two hosts in
// network namespaces (up, down, exec) and the whole session in one command
// (demo).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/tcp-upper/tcp-upper/cmd/internal/cli"
	"github.com/tcp-upper/tcp-upper/lab"
)

const prog = "tcp-upper-lab"

// command is one subcommand.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() map[string]command {
	return map[string]command{
		"up":            {"build the lab (namespaces ant and apple) and start the server in apple", cmdUp},
		"down":          {"stop the lab's server and remove its namespaces", cmdDown},
		"exec":          {"run a command in a host: exec ant|apple CMD [ARGS...]", cmdExec},
		"demo":          {"run the seed's whole session end to end, then tear everything down", cmdDemo},
		"ss":            {"the server stack's sockets, as ss -tan shows the kernel's: ss [-tanlio] [--json]", cmdSS},
		"stats":         {"the server stack's counters: segments, retransmits, resets, drops... [--json]", cmdStats},
		"run":           {"fault-injection experiments with verdicts: run NAME [--out DIR] [--seed N] | --all | --list", cmdRun},
		"fault":         {"change a running server's faults: fault add RULE | list | del ID | clear", cmdFault},
		"events":        {"attach to a running server and stream its connection events live (--events' lines), and the kernel clients' in ant", cmdEvents},
		"trace":         {"the same as events (its first name; the server's --trace is the packet trace, not this)", cmdEvents},
		"bench":         {"measure our server against the kernel's: bulk, rr, connrate, idle memory, overheads [--json]", cmdBench},
		"ladder":        {"the ladder diagram of a capture and the stack's events: ladder DIR | --pcap FILE [--events FILE] [--explain]", cmdLadder},
		"plot":          {"SVG graphs of a capture and the stack's events: plot DIR | FILE.pcap [--events FILE] [--out DIR]", cmdPlot},
		"web":           {"a live page for a running server: connections, events, ladders, graphs [--listen 127.0.0.1:8080] [--name LAB]", cmdWeb},
		"tun-reflector": {"(for bench's tun-floor) answer ICMP echo requests from behind a TUN, with no stack", cmdTunReflector},
		"compare":       {"probe the kernel's TCP and ours with scripted raw segments: a table of same/differs [--only NAME,...] [--json] [-v]", cmdCompare},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	// A write to a pipe whose reader went away fails with EPIPE instead of
	// killing us (Go's default for stdout): run's Output then stops the
	// command, which cleans up (the demo's lab) and exits 0.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr, cmds)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	c, ok := cmds[args[0]]
	if !ok {
		return cli.Exit(stderr, prog, cli.Usagef("unknown command %q: want one of %s", args[0], strings.Join(names(cmds), ", ")))
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := cli.NewOutput(stdout, cancel)
	err := c.run(ctx, args[1:], out, stderr)
	if out.ReaderGone(err) {
		// tcp-upper-lab stats | head -2: the reader has what it wanted.
		return 0
	}
	return cli.Exit(stderr, prog+" "+args[0], err)
}

func names(cmds map[string]command) []string {
	var ns []string
	for n := range cmds {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	return ns
}

func usage(w io.Writer, cmds map[string]command) {
	fmt.Fprintf(w, "usage: %s COMMAND [flags]\n\ncommands:\n", prog)
	for _, n := range names(cmds) {
		fmt.Fprintf(w, "  %-13s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintf(w, "\nRun %s COMMAND -h for a command's flags.\n", prog)
}

func cmdUp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet(prog+" up", stderr, prog+" up [--name N] [--no-server] [--server PATH] [-- SERVER-FLAGS...]")
	name := fs.String("name", lab.DefaultName, "lab name: namespaces are NAME-ant and NAME-apple")
	noServer := fs.Bool("no-server", false, "build the topology only; start the server yourself (tcp-upper-lab exec apple tcp-upper-server)")
	server := fs.String("server", "", "server program (default: tcp-upper-server next to this program, or on PATH)")
	var extra []string
	for i, a := range args {
		if a == "--" {
			args, extra = args[:i], args[i+1:]
			break
		}
	}
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	l, err := lab.New(*name, nil)
	if err != nil {
		return cli.Usagef("%v", err)
	}
	bin := *server
	if !*noServer && bin == "" {
		if bin, err = lab.FindServer(); err != nil {
			return err
		}
	}
	if err := l.Up(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "lab %q is up: ant %s (netns %s), apple %s (netns %s)\n", l.Name, lab.AntAddr, l.NetNS(lab.Ant), lab.AppleAddr, l.NetNS(lab.Apple))
	// The commands to type next, runnable as printed.
	ex := prog + " exec"
	if l.Name != lab.DefaultName {
		ex += " --name " + l.Name
	}
	if *noServer {
		fmt.Fprintf(stdout, "start the server:  %s apple tcp-upper-server\n", ex)
		return nil
	}
	pid, err := l.StartServer(bin, extra...)
	if err != nil {
		l.Down()
		return err
	}
	fmt.Fprintf(stdout, "server running in apple (pid %d) on tun0, listening at %s:%d; its output: %s\n", pid, lab.ServerAddr.Addr(), lab.Port, l.ServerLog())
	fmt.Fprintf(stdout, "try:  %s ant tcp-upper-client -i %s\n", ex, lab.ServerAddr.Addr())
	return nil
}

func cmdDown(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet(prog+" down", stderr, prog+" down [--name N]")
	name := fs.String("name", lab.DefaultName, "lab name")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	l, err := lab.New(*name, nil)
	if err != nil {
		return cli.Usagef("%v", err)
	}
	if err := lab.NeedPrivileges("taking the lab down"); err != nil {
		return err
	}
	if !l.Exists() && l.ServerPID() == 0 {
		fmt.Fprintf(stdout, "lab %q is not up; nothing to do\n", l.Name)
		return nil
	}
	if err := l.Down(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "lab %q is down\n", l.Name)
	return nil
}

func cmdExec(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	name := lab.DefaultName
	// Flags end at the host: everything after it is the command's.
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		switch {
		case args[0] == "--name" && len(args) > 1:
			name, args = args[1], args[2:]
		case strings.HasPrefix(args[0], "--name="):
			name, args = strings.TrimPrefix(args[0], "--name="), args[1:]
		case args[0] == "-h" || args[0] == "--help":
			fmt.Fprintf(stderr, "usage: %s exec [--name N] ant|apple CMD [ARGS...]\n", prog)
			return nil
		default:
			return cli.Usagef("unknown flag %q: usage: %s exec [--name N] ant|apple CMD [ARGS...]", args[0], prog)
		}
	}
	if len(args) < 2 {
		return cli.Usagef("usage: %s exec [--name N] ant|apple CMD [ARGS...]", prog)
	}
	l, err := lab.New(name, nil)
	if err != nil {
		return cli.Usagef("%v", err)
	}
	if err := lab.CheckHost(args[0]); err != nil {
		return cli.Usagef("%v", err)
	}
	if err := lab.NeedPrivileges("exec (entering the lab's namespaces)"); err != nil {
		return err
	}
	return l.Exec(args[0], args[1:])
}
