package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/bench"
	"github.com/tcp-upper/tcp-upper/cmd/internal/cli"
	"github.com/tcp-upper/tcp-upper/lab"
)

// benchHelp says what each figure measures.
const benchHelp = `Builds a lab of its own (removed at the end, also on Ctrl-C): the kernel's TCP
as the client in ant, tcp-upper-server in apple on --stack kernel and on our
stack, a fresh server for every measurement, kernel and netstack in
alternating order. Figures (MB/s are 10^6 bytes/s of payload, each byte going
both ways):
  bulk            one connection, 1 MiB writes of pseudo-random bytes while
                  the uppercased echo is read back and checked byte for byte
                  against a precomputed block (memory speed); with
                  bulk-cpu (the whole machine's CPU seconds, from
                  /proc/stat, per GB) and bulk-client-cpu (this program's
                  CPU time, % of one CPU: the client is not the bottleneck
                  while it stays well below 100)
  bulk-oneway     the same without the check
  bulk-parallel   8 bulk connections at once, aggregate
  rr              16-byte request/response on one connection: p50, p99
  tun-floor       ICMP echo from ant: answered by the kernel in apple, and by
                  a minimal reflector behind tun0 (one read, one write, no
                  stack): what the TUN crossing itself costs, p50, p99
  connrate        connect, one 16-byte exchange, close (client first), per s;
                  each measurement has client ports of its own (its
                  TIME-WAITs meet no other's); each connection's time p50, p99
  idle-memory     server RSS growth per connection at 10,000 idle
                  connections (each echoed once), KiB; for the kernel stack
                  this is the program only (socket memory is the kernel's)
  trace-overhead  netstack bulk with --trace --events (stderr to /dev/null)
                  divided by plain netstack bulk
  fault-overhead  netstack bulk with a fault rule that never matches
                  ("in rst drop port=1") divided by plain netstack bulk
--pin runs the client (this program) on CPU 0 and every server on CPU 1.`

// cmdBench measures our server against the kernel's in a lab of its own,
// which it always removes.
func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := bench.DefaultConfig()
	fs := cli.NewFlagSet(prog+" bench", stderr, prog+" bench [--json] [--only NAME[,NAME]] [--name LAB] [--duration D] [--rounds N] [--pin] [--netstack-flags \"...\"]\n\n"+benchHelp)
	asJSON := fs.Bool("json", false, "print the report as JSON instead of a table")
	fs.BoolVar(&cfg.Pin, "pin", false, "client on CPU 0, every server on CPU 1")
	only := fs.String("only", "", "run only these figures, comma-separated")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "cap of each timed measurement (bulk, rr, connrate)")
	fs.IntVar(&cfg.Rounds, "rounds", cfg.Rounds, "measurements of each figure on each side")
	nsFlags := fs.String("netstack-flags", "", "extra flags for every netstack server, e.g. \"--mtu 9000\" (quotes group words)")
	mib := fs.Int64("bulk-mib", cfg.BulkBytes>>20, "cap of each bulk measurement in MiB each way")
	fs.IntVar(&cfg.RRCount, "rr-count", cfg.RRCount, "cap of rr's exchanges per measurement")
	fs.IntVar(&cfg.ConnCount, "conns", cfg.ConnCount, "cap of connrate's connections per measurement")
	fs.IntVar(&cfg.IdleConns, "idle-conns", cfg.IdleConns, "idle-memory's connection count")
	server := fs.String("server", "", "server program (default: tcp-upper-server next to this program, or on PATH)")
	logLevel := fs.String("log-level", "warn", "log level on stderr: debug, info, warn or error")
	name := fs.String("name", "", "name of the bench's lab (default: tcpub and 6 random hex digits)")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	var err error
	if *name == "" {
		b := make([]byte, 3)
		rand.Read(b)
		*name = "tcpub" + hex.EncodeToString(b)
	}
	l, err := lab.New(*name, nil)
	if err != nil {
		return cli.Usagef("bad --name: %v", err)
	}
	if cfg.Only, err = cli.Only(*only, bench.Names(), "figure"); err != nil {
		return cli.Usagef("bad --only: %v", err)
	}
	if cfg.NetstackFlags, err = bench.SplitArgs(*nsFlags); err != nil {
		return cli.Usagef("bad --netstack-flags: %v", err)
	}
	switch {
	case cfg.Duration <= 0 || cfg.Duration > 10*time.Minute:
		return cli.Usagef("bad --duration %v: want 1ms to 10m", cfg.Duration)
	case cfg.Rounds < 1 || cfg.Rounds > 100:
		return cli.Usagef("bad --rounds %d: want 1 to 100", cfg.Rounds)
	case *mib < 1 || *mib > 64<<10:
		return cli.Usagef("bad --bulk-mib %d: want 1 to 65536", *mib)
	case cfg.RRCount < 1 || cfg.ConnCount < 1 || cfg.IdleConns < 1 || cfg.IdleConns > 60000:
		return cli.Usagef("--rr-count and --conns want at least 1, --idle-conns 1 to 60000")
	}
	cfg.BulkBytes = *mib << 20
	if cfg.Log, err = cli.Logger(stderr, *logLevel); err != nil {
		return err
	}
	cfg.Progress = stderr
	if f, ok := stderr.(*os.File); ok {
		cfg.ProgressTTY = app.IsTerminal(f)
	}
	if err := lab.CheckPrivileges(); err != nil {
		return err
	}
	if cfg.ServerBin = *server; cfg.ServerBin == "" {
		if cfg.ServerBin, err = lab.FindServer(); err != nil {
			return err
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this program for tun-floor's reflector: %w", err)
	}
	cfg.Reflector = []string{exe, "tun-reflector"}
	rep, err := benchInLab(ctx, l.Name, cfg)
	if err != nil {
		if ctx.Err() != nil {
			return errors.New("interrupted; the bench's lab is removed")
		}
		return err
	}
	if *asJSON {
		return rep.WriteJSON(stdout)
	}
	return rep.WriteTable(stdout)
}

// benchInLab runs the bench in a lab called name and removes
// the lab (and the servers' state) whatever happens.
func benchInLab(ctx context.Context, name string, cfg bench.Config) (rep *bench.Report, err error) {
	l, err := lab.New(name, cfg.Log)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "tcp-upper-bench-")
	if err != nil {
		return nil, fmt.Errorf("temporary directory: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := l.Up(); err != nil {
		return nil, fmt.Errorf("build the bench's lab: %w", err)
	}
	defer func() {
		if derr := l.Down(); derr != nil {
			cfg.Log.Warn("removing the bench's lab", "lab", l.Name, "err", derr)
			if err == nil {
				err = fmt.Errorf("remove the bench's lab %s: %w", l.Name, derr)
			}
		}
	}()
	cfg.Log.Info("bench lab up", slog.String("lab", l.Name))
	env := bench.LabEnv(l, dir)
	if err := bench.PrepareClient(env.Do); err != nil {
		return nil, err
	}
	return bench.Run(ctx, env, cfg)
}

// cmdTunReflector is bench's tun-floor reflector (bench.Reflect): it
// answers ICMP echo requests to --addr from behind the TUN it opens.
func cmdTunReflector(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet(prog+" tun-reflector", stderr, prog+" tun-reflector [--tun NAME] [--tun-addr CIDR] [--addr IP]\n\nbench's tun-floor: answers ICMP echo requests to --addr from behind a plain TUN, with no stack.")
	name := fs.String("tun", "tun0", "TUN device to create")
	tunAddr := fs.String("tun-addr", lab.TunAddr.String(), "address of the TUN's kernel side")
	addr := fs.String("addr", lab.ServerAddr.Addr().String(), "address whose echo requests are answered")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	ta, err := netip.ParsePrefix(*tunAddr)
	if err != nil {
		return cli.Usagef("bad --tun-addr %q: want an IPv4 address/prefix such as 10.0.2.1/24", *tunAddr)
	}
	a, err := netip.ParseAddr(*addr)
	if err != nil {
		return cli.Usagef("bad --addr %q: want an IPv4 address such as 10.0.2.2", *addr)
	}
	return bench.Reflect(ctx, *name, ta, a, func() { fmt.Fprintf(stdout, "%s for %s on %s\n", bench.ReflectorReady, a, *name) })
}
