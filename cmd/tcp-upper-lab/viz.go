package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tcp-upper/tcp-upper/cmd/internal/cli"
	"github.com/tcp-upper/tcp-upper/netstack/control"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
	"github.com/tcp-upper/tcp-upper/netstack/pcap"
	"github.com/tcp-upper/tcp-upper/viz"
	"github.com/tcp-upper/tcp-upper/viz/web"
)

// parseInterleaved parses flags that may come before or after the
// positional arguments (ladder DIR --explain), returning the positionals.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		if f := fs.Lookup(name); f != nil && i+1 < len(args) {
			if b, ok := f.Value.(interface{ IsBoolFlag() bool }); !ok || !b.IsBoolFlag() {
				i++
				flags = append(flags, args[i])
			}
		}
	}
	return pos, cli.Parse(fs, flags)
}

// loadSession reads DIR (an experiment's output) or --pcap FILE [--events FILE].
func loadSession(pos []string, pcapPath, eventsPath string) (*viz.Session, error) {
	switch {
	case len(pos) > 1:
		return nil, cli.Usagef("one directory or capture, not %d (%s)", len(pos), strings.Join(pos, " "))
	case len(pos) == 1 && pcapPath != "":
		return nil, cli.Usagef("give a directory or --pcap FILE, not both")
	case len(pos) == 0 && pcapPath == "":
		return nil, cli.Usagef("give an experiment's output directory (tcp-upper-lab run NAME --out DIR) or --pcap FILE")
	}
	var s *viz.Session
	var err error
	capPath := pcapPath
	if capPath == "" {
		if st, serr := os.Stat(pos[0]); serr == nil && !st.IsDir() {
			capPath = pos[0]
		}
	}
	if capPath != "" {
		// Each file's error with its own fix.
		var evs []inspect.Event
		if eventsPath != "" {
			if evs, err = viz.ReadEvents(eventsPath); err != nil {
				return nil, fmt.Errorf("--events: %v: give the server's --events --events-format json output or an experiment's events.jsonl", err)
			}
		}
		var pkts []pcap.Packet
		if pkts, err = pcap.ReadFile(capPath); err == nil {
			s = viz.Build(pkts, evs)
		}
	} else {
		if eventsPath != "" {
			return nil, cli.Usagef("--events goes with --pcap FILE; a directory brings its own events.jsonl")
		}
		s, err = viz.Load(pos[0])
	}
	if err != nil {
		return nil, fmt.Errorf("%v: give a pcap or pcapng capture (and --events-format json events)", err)
	}
	if len(s.Conns) == 0 {
		return nil, errors.New("no TCP segments in the capture: nothing to draw")
	}
	return s, nil
}

func cmdLadder(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	usage := prog + " ladder DIR | --pcap FILE [--events FILE] | --name LAB | --control PATH   [--width N] [--abs] [--explain]"
	fs := cli.NewFlagSet(prog+" ladder", stderr, usage)
	pcapPath := fs.String("pcap", "", "a capture (pcap or pcapng; tcpdump -w, the server's --pcap)")
	events := fs.String("events", "", "the stacks' events as JSON lines (--events --events-format json, or an experiment's events.jsonl: ours and the kernel client's), with --pcap")
	width := fs.Int("width", 80, "columns")
	abs := fs.Bool("abs", false, "wall-clock times in the margin (default: seconds from the start)")
	explain := fs.Bool("explain", false, "under each state change, timer and notable segment: the rule that caused it")
	var t target
	fs.StringVar(&t.path, "control", "", "live: a running server's control socket")
	fs.StringVar(&t.name, "name", "", "live: the server of this lab")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if *width < viz.MinWidth {
		return cli.Usagef("--width %d: the ladder needs at least %d columns", *width, viz.MinWidth)
	}
	if t.path != "" || t.name != "" {
		if len(pos) > 0 || *pcapPath != "" || *events != "" {
			return cli.Usagef("live (--name, --control) or from files (DIR, --pcap), not both")
		}
		return liveLadder(ctx, &t, viz.LadderOptions{Width: *width, Explain: *explain}, stdout, stderr)
	}
	s, err := loadSession(pos, *pcapPath, *events)
	if err != nil {
		return err
	}
	return viz.Ladder(stdout, s, viz.LadderOptions{Width: *width, Absolute: *abs, Explain: *explain})
}

func cmdPlot(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	usage := prog + " plot DIR | FILE.pcap | --pcap FILE [--events FILE] [--out DIR]"
	fs := cli.NewFlagSet(prog+" plot", stderr, usage)
	pcapPath := fs.String("pcap", "", "a capture (pcap or pcapng; tcpdump -w, the server's --pcap)")
	events := fs.String("events", "", "the stacks' events as JSON lines (--events --events-format json, or an experiment's events.jsonl: ours and the kernel client's)")
	out := fs.String("out", "", "where the SVG files go (default: DIR itself, or the capture's directory)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	s, err := loadSession(pos, *pcapPath, *events)
	if err != nil {
		return err
	}
	dir := *out
	if dir == "" {
		src := *pcapPath
		if src == "" {
			src = pos[0]
		}
		if st, err := os.Stat(src); err == nil && st.IsDir() {
			dir = src
		} else {
			dir = filepath.Dir(src)
		}
	}
	paths, err := viz.WriteFigures(dir, viz.Figures(s))
	if err != nil {
		return fmt.Errorf("write the graphs: %w: pick another --out", err)
	}
	for _, p := range paths {
		fmt.Fprintln(stdout, p)
	}
	return nil
}

func cmdWeb(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	usage := prog + " web [--listen 127.0.0.1:8080] [--allow-control] [--control PATH | --name LAB]"
	fs := cli.NewFlagSet(prog+" web", stderr, usage)
	listen := fs.String("listen", "127.0.0.1:8080", "address to serve on (loopback unless you name another)")
	allow := fs.Bool("allow-control", false, "let the page change fault rules (with the token printed at start)")
	logLevel := fs.String("log-level", "info", "log level on stderr (refused requests are warnings)")
	var t target
	fs.StringVar(&t.path, "control", "", "the server's control socket (default: the only running server)")
	fs.StringVar(&t.name, "name", "", "the lab whose server to watch")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if _, err := t.resolve(); err != nil {
		return err
	}
	log, err := cli.Logger(stderr, *logLevel)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %v: pick another --listen", *listen, err)
	}
	opts := web.Options{Resolve: t.resolve, AllowControl: *allow, Hosts: web.LocalHosts(ln.Addr().String()), Log: log}
	if *allow {
		opts.Token = web.NewToken()
	}
	v := web.New(opts)
	go v.Run(ctx)
	srv := &http.Server{Handler: v.Handler(), ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(stdout, "serving http://%s/ (Ctrl-C to stop)\n", ln.Addr())
	if *allow {
		fmt.Fprintf(stdout, "changes need the token %s (the page asks for it; X-Token header)\n", opts.Token)
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// liveIdle is how long the live ladder waits for the stream's next record
// before it draws the segments it holds back, and how long it holds one
// back at least (at most twice that) while the stream is busy.
const liveIdle = 50 * time.Millisecond

// liveLadder draws a running server's ladder from its event stream until
// Ctrl-C or the server exits.
func liveLadder(ctx context.Context, t *target, opts viz.LadderOptions, stdout, stderr io.Writer) error {
	live, err := viz.NewLive(stdout, opts)
	if err != nil {
		return cli.Usagef("%v", err)
	}
	c, err := dialTarget(t)
	if err != nil {
		return err
	}
	defer c.Close()
	h, err := c.Call("hello", nil)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "attached to %s (pid %d); every segment, and the stack's states, timers and injected drops, as they happen; Ctrl-C to stop\n", h.Hello.Program, h.Hello.PID)
	live.Header("this stack " + h.Hello.Addr)
	// The stream is read on its own goroutine; the ladder draws what it
	// hands over and, once nothing more has come for liveIdle, the
	// segments it holds back (a segment we sent waits for the fault
	// layer's verdict, which comes after it).
	rs := make(chan *control.Response, 256)
	done := make(chan error, 1)
	go func() {
		done <- c.Stream(ctx, "events", control.EventsArgs{Segments: true}, func(r *control.Response) error {
			select {
			case rs <- r:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	idle := time.NewTimer(liveIdle)
	defer idle.Stop()
	// A busy stream never goes quiet: a segment held back is drawn once
	// it has waited liveIdle, and what queued behind it with it.
	tick := time.NewTicker(liveIdle)
	defer tick.Stop()
	var dropped uint64
	take := func(r *control.Response) {
		if r.Dropped > dropped {
			fmt.Fprintf(stderr, "(%d events lost so far: this terminal reads too slowly)\n", r.Dropped)
			dropped = r.Dropped
		}
		if r.Event != nil {
			live.Add(*r.Event)
		}
	}
loop:
	for {
		select {
		case r := <-rs:
			take(r)
			idle.Reset(liveIdle)
		case <-idle.C:
			live.Flush()
		case <-tick.C:
			live.FlushOlder(liveIdle)
		case err = <-done:
			break loop
		}
	}
	// What the stream delivered before it ended.
	for n := len(rs); n > 0; n-- {
		take(<-rs)
	}
	live.Flush()
	if ctx.Err() != nil {
		return nil // Ctrl-C
	}
	if err != nil && strings.Contains(err.Error(), "closed the connection") {
		fmt.Fprintln(stderr, "the server exited")
		return nil
	}
	return err
}
