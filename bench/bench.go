// Package bench measures our server against the kernel's on the lab's
// path: the kernel's TCP as the client in ant, tcp-upper-server in apple on
// --stack kernel and on our stack (netstack over the TUN), in alternating
// order, round after round, and reports each figure with its ratio
// netstack/kernel and the target. Two figures compare our stack
// with itself instead: tracing on/off and an idle fault layer on/off.
//
// Every measurement starts a fresh server, is bounded in bytes, count and
// time, and stops the server with SIGTERM, waiting for it to exit.
package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcp-upper/tcp-upper/internal/child"
	"github.com/tcp-upper/tcp-upper/lab"
)

// Config chooses what to measure and how much.
type Config struct {
	// Only lists the figures to run (Names); empty runs all.
	Only []string
	// Rounds is how many times each figure is measured on each side.
	Rounds int
	// Duration caps each timed measurement (bulk, rr, connrate).
	Duration time.Duration
	// BulkBytes caps each bulk measurement (each way).
	BulkBytes int64
	// Parallel is bulk-parallel's connection count.
	Parallel int
	// RRCount caps rr's exchanges; ConnCount caps connrate's connections.
	RRCount, ConnCount int
	// IdleConns is idle-memory's connection count.
	IdleConns int
	// NetstackFlags are extra flags for every netstack server.
	NetstackFlags []string
	// ServerBin is the tcp-upper-server program.
	ServerBin string
	// Reflector is the program (and its first arguments) that runs
	// Reflect for tun-floor: tcp-upper-lab tun-reflector.
	Reflector []string
	// Pin puts the client (this process) on CPU 0 and every server on
	// CPU 1.
	Pin bool
	// Progress receives a progress line per measurement (nil: none);
	// with ProgressTTY each line overwrites the previous one.
	Progress    io.Writer
	ProgressTTY bool
	// Log receives debug details (nil: discarded).
	Log *slog.Logger
}

// DefaultConfig is what tcp-upper-lab bench runs without flags: a few
// minutes on a 2-core machine.
func DefaultConfig() Config {
	return Config{
		Rounds:    3,
		Duration:  3 * time.Second,
		BulkBytes: 256 << 20,
		Parallel:  8,
		RRCount:   20000,
		ConnCount: 5000,
		IdleConns: 10000,
	}
}

// Figure names, in the order they run and print.
const (
	Bulk          = "bulk"
	BulkOneway    = "bulk-oneway"
	BulkParallel  = "bulk-parallel"
	RR            = "rr"
	TunFloor      = "tun-floor"
	ConnRate      = "connrate"
	IdleMemory    = "idle-memory"
	TraceOverhead = "trace-overhead"
	FaultOverhead = "fault-overhead"
)

// Names lists every figure.
func Names() []string {
	return []string{Bulk, BulkOneway, BulkParallel, RR, TunFloor, ConnRate, IdleMemory, TraceOverhead, FaultOverhead}
}

// Flags of the overhead figures' "on" side.
var (
	traceFlags = []string{"--trace", "--events"}
	// idleFault never matches: no RST ever goes to port 1.
	idleFault = []string{"--fault", "in rst drop port=1"}
)

// Stat is a figure on one side over the rounds.
type Stat struct {
	Values []float64 `json:"values"`
	Min    float64   `json:"min"`
	Median float64   `json:"median"`
	Max    float64   `json:"max"`
}

func newStat(v []float64) Stat {
	s := Stat{Values: v}
	if len(v) == 0 {
		return s
	}
	c := slices.Clone(v)
	sort.Float64s(c)
	s.Min, s.Max = c[0], c[len(c)-1]
	if len(c)%2 == 1 {
		s.Median = c[len(c)/2]
	} else {
		s.Median = (c[len(c)/2-1] + c[len(c)/2]) / 2
	}
	return s
}

// Side is one side of a comparison: kernel or netstack, off or on.
type Side struct {
	Label string `json:"label"`
	Stat
}

// Target is the goal for a figure.
type Target struct {
	// Of is what is compared: "ratio" (the median ratio) or "test" (the
	// test side's median).
	Of    string  `json:"of"`
	Op    string  `json:"op"` // ">=" or "<="
	Value float64 `json:"value"`
	Met   bool    `json:"met"`
}

func (t *Target) check(f *Figure) {
	v := f.Ratio.Median
	if t.Of == "test" {
		v = f.Test.Median
	}
	if t.Op == ">=" {
		t.Met = v >= t.Value
	} else {
		t.Met = v <= t.Value
	}
}

// Figure is one line of the report.
type Figure struct {
	Name string `json:"name"`
	Unit string `json:"unit"`
	// Base is the kernel (or the overhead's off), Test our stack (or on).
	Base Side `json:"base"`
	Test Side `json:"test"`
	// Ratio is Test/Base, per round.
	Ratio  Stat    `json:"ratio"`
	Target *Target `json:"target,omitempty"`
	// Overhead marks a comparison of our stack with itself.
	Overhead bool `json:"overhead"`
}

// Report is a whole run.
type Report struct {
	Date          time.Time `json:"date"`
	Host          string    `json:"host"`
	Kernel        string    `json:"kernel"`
	CPUs          int       `json:"cpus"`
	Rounds        int       `json:"rounds"`
	Duration      string    `json:"duration"`
	BulkBytes     int64     `json:"bulk_bytes"`
	IdleConns     int       `json:"idle_conns"`
	NetstackFlags []string  `json:"netstack_flags"`
	// Pinned says where client and servers ran with --pin ("" without).
	Pinned  string    `json:"pinned"`
	Elapsed string    `json:"elapsed"`
	Figures []*Figure `json:"figures"`
}

// row is one figure's definition: it produces one or more Figures.
type row struct {
	name, unit string
	target     *Target
}

// spec is how one named figure is measured.
type spec struct {
	name     string
	rows     []row
	overhead []string // the on side's extra flags; nil: kernel vs netstack
	// measure runs one measurement against srv (nil for a side without a
	// server) through t and returns one value per row.
	measure func(ctx context.Context, cfg *Config, t target, srv *child.Process, m meas) (result, error)
}

// meas is which measurement of a figure this is: i of n (2 per round),
// which also seeds its payload.
type meas struct{ i, n int }

// result is a measurement's values, one per row, and a note for the
// progress line.
type result struct {
	vals []float64
	note string
}

func specs() []spec {
	bulkRows := func(name string, tgt, cpuTgt *Target) []row {
		return []row{{name, "MB/s", tgt}, {name + "-cpu", "CPU-s/GB", cpuTgt}, {name + "-client-cpu", "% of a CPU", nil}}
	}
	bulkResult := func(r bulkResult, err error) (result, error) { return result{vals: r.values()}, err }
	// The overheads compare our stack with itself: its bulk rate only.
	overheadMeasure := func(ctx context.Context, cfg *Config, t target, _ *child.Process, m meas) (result, error) {
		r, err := bulk(ctx, t, cfg.BulkBytes, cfg.Duration, uint64(m.i))
		return result{vals: []float64{r.mbps}}, err
	}
	return []spec{
		{name: Bulk, rows: bulkRows(Bulk, &Target{Of: "ratio", Op: ">=", Value: 1.0}, &Target{Of: "ratio", Op: "<=", Value: 1.2}),
			measure: func(ctx context.Context, cfg *Config, t target, _ *child.Process, m meas) (result, error) {
				return bulkResult(bulk(ctx, t, cfg.BulkBytes, cfg.Duration, uint64(m.i)))
			}},
		{name: BulkOneway, rows: bulkRows(BulkOneway, nil, nil),
			measure: func(ctx context.Context, cfg *Config, t target, _ *child.Process, m meas) (result, error) {
				return bulkResult(bulkOneway(ctx, t, cfg.BulkBytes, cfg.Duration, uint64(m.i)))
			}},
		{name: BulkParallel, rows: bulkRows(BulkParallel, &Target{Of: "ratio", Op: ">=", Value: 0.9}, nil),
			measure: func(ctx context.Context, cfg *Config, t target, _ *child.Process, m meas) (result, error) {
				return bulkResult(bulkParallel(ctx, t, cfg.Parallel, cfg.BulkBytes, cfg.Duration, uint64(m.i)))
			}},
		{name: RR, rows: []row{{"rr-p50", "µs", &Target{Of: "ratio", Op: "<=", Value: 1.2}}, {"rr-p99", "µs", &Target{Of: "ratio", Op: "<=", Value: 1.0}}},
			measure: func(ctx context.Context, cfg *Config, t target, _ *child.Process, _ meas) (result, error) {
				p50, p99, err := rr(ctx, t, cfg.RRCount, cfg.Duration)
				return result{vals: []float64{p50, p99}}, err
			}},
		{name: TunFloor, rows: []row{{"tun-floor-p50", "µs", nil}, {"tun-floor-p99", "µs", nil}},
			measure: func(ctx context.Context, cfg *Config, t target, _ *child.Process, _ meas) (result, error) {
				host, _, err := net.SplitHostPort(t.addr)
				if err != nil {
					return result{}, err
				}
				a, err := netip.ParseAddr(host)
				if err != nil {
					return result{}, err
				}
				p50, p99, err := ping(ctx, t, a, cfg.RRCount, cfg.Duration)
				return result{vals: []float64{p50, p99}}, err
			}},
		{name: ConnRate, rows: []row{{ConnRate, "conn/s", &Target{Of: "ratio", Op: ">=", Value: 1.0}}, {"connrate-p50", "µs", nil}, {"connrate-p99", "µs", nil}},
			measure: func(ctx context.Context, cfg *Config, t target, _ *child.Process, m meas) (result, error) {
				var ports *portSlice
				if t.ownNS {
					s := connSlice(m.i, m.n)
					ports = &s
				}
				r, err := connrate(ctx, t, cfg.ConnCount, cfg.Duration, ports)
				return result{vals: []float64{r.rate, r.p50, r.p99}, note: r.note}, err
			}},
		{name: IdleMemory, rows: []row{{IdleMemory, "KiB/conn", &Target{Of: "test", Op: "<=", Value: 12}}},
			measure: func(ctx context.Context, cfg *Config, t target, srv *child.Process, _ meas) (result, error) {
				need := uint64(cfg.IdleConns) + 256
				if lim, err := openFilesLimit(srv.Pid()); err != nil {
					return result{}, err
				} else if lim < need {
					return result{}, fmt.Errorf("idle-memory: the server may open %d files, %d connections need %d: raise the hard limit (ulimit -Hn) or lower the count", lim, cfg.IdleConns, need)
				}
				v, err := idleMemory(ctx, t, cfg.IdleConns, 500*time.Millisecond, func() (int64, error) { return vmRSS(srv.Pid()) })
				return result{vals: []float64{v}}, err
			}},
		{name: TraceOverhead, rows: []row{{TraceOverhead, "MB/s", &Target{Of: "ratio", Op: ">=", Value: 0.9}}}, overhead: traceFlags, measure: overheadMeasure},
		{name: FaultOverhead, rows: []row{{FaultOverhead, "MB/s", nil}}, overhead: idleFault, measure: overheadMeasure},
	}
}

// Env is where the measurements run: how to start a server and where its
// clients connect. LabEnv builds it for a lab.
type Env struct {
	// Start starts a server process (in the server's namespace).
	Start func(cmd *exec.Cmd) error
	// Do runs fn in the client's namespace.
	Do func(fn func() error) error
	// KernelAddr and NetstackAddr are where the two servers listen.
	KernelAddr, NetstackAddr string
	// KernelArgs and NetstackArgs are the servers' base flags.
	KernelArgs, NetstackArgs []string
	// ReflectorArgs are tun-floor's reflector's flags: it answers at
	// NetstackAddr's address, the kernel at KernelAddr's.
	ReflectorArgs []string
	// OwnClientNS says the client's namespace is the bench's own, so
	// connrate may set its ephemeral port range.
	OwnClientNS bool
}

// LabEnv is the Env of lab l, which must be up: servers in apple, the
// client in ant. dir holds the netstack servers' control sockets.
func LabEnv(l *lab.Lab, dir string) Env {
	port := fmt.Sprint(lab.Port)
	return Env{
		Start:         func(cmd *exec.Cmd) error { return l.Start(lab.Apple, cmd) },
		Do:            func(fn func() error) error { return l.Do(lab.Ant, fn) },
		KernelAddr:    net.JoinHostPort(lab.AppleAddr.Addr().String(), port),
		NetstackAddr:  net.JoinHostPort(lab.ServerAddr.Addr().String(), port),
		KernelArgs:    []string{"--stack", "kernel", "--port", port},
		NetstackArgs:  []string{"--tun", "tun0", "--addr", lab.ServerAddr.String(), "--port", port, "--control", filepath.Join(dir, "ctl.sock")},
		ReflectorArgs: []string{"--tun", "tun0", "--tun-addr", lab.TunAddr.String(), "--addr", lab.ServerAddr.Addr().String()},
		OwnClientNS:   true,
	}
}

// PrepareClient sets what the client's namespace needs for many
// connections (in that namespace only): the ephemeral ports 1024-33023;
// connrate gives each of its measurements a slice of its own above them.
func PrepareClient(do func(fn func() error) error) error {
	return do(func() error { return setPortRange(firstPort, connPorts-1) })
}

// RaiseOpenFiles raises this process's RLIMIT_NOFILE to at least n (the
// hard limit too, which needs root), so idle-memory's connections fit.
// Programs it starts inherit the limit.
func RaiseOpenFiles(n uint64) error {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err != nil {
		return fmt.Errorf("get open files limit: %w", err)
	}
	if r.Cur >= n {
		return nil
	}
	r.Cur = max(n, r.Cur)
	r.Max = max(r.Max, r.Cur)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &r); err != nil {
		return fmt.Errorf("raise open files limit to %d: %w (run as root, or ulimit -n %d first)", n, err, n)
	}
	return nil
}

// Run measures the figures cfg selects in env and returns the report.
// The figure order alternates each round (kernel first in odd rounds,
// netstack first in even ones) so drift during the run hits both sides.
func Run(ctx context.Context, env Env, cfg Config) (*Report, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Rounds < 1 || cfg.Duration <= 0 || cfg.BulkBytes <= 0 || cfg.Parallel < 1 || cfg.RRCount < 1 || cfg.ConnCount < 1 || cfg.IdleConns < 1 {
		return nil, fmt.Errorf("bad bench config: rounds, duration, sizes and counts must be positive")
	}
	var run []spec
	for _, s := range specs() {
		if len(cfg.Only) == 0 || slices.Contains(cfg.Only, s.name) {
			run = append(run, s)
		}
	}
	if slices.ContainsFunc(run, func(s spec) bool { return s.name == IdleMemory }) {
		if err := RaiseOpenFiles(uint64(cfg.IdleConns) + 1024); err != nil {
			return nil, err
		}
	}
	if slices.ContainsFunc(run, func(s spec) bool { return s.name == TunFloor }) && len(cfg.Reflector) == 0 {
		return nil, fmt.Errorf("tun-floor needs the reflector program (Config.Reflector)")
	}
	var pin *pinning
	if cfg.Pin {
		var err error
		if pin, err = pinClient(0, 1); err != nil {
			return nil, err
		}
		defer pin.undo()
	}
	host, _ := os.Hostname()
	rep := &Report{Date: time.Now().UTC(), Host: host, Kernel: kernelRelease(), CPUs: runtime.NumCPU(), Rounds: cfg.Rounds,
		Duration: cfg.Duration.String(), BulkBytes: cfg.BulkBytes, IdleConns: cfg.IdleConns, NetstackFlags: cfg.NetstackFlags}
	if rep.NetstackFlags == nil {
		rep.NetstackFlags = []string{}
	}
	if pin != nil {
		rep.Pinned = fmt.Sprintf("client on CPU %d, servers on CPU %d", pin.clientCPU, pin.serverCPU)
	}
	// values[row][side] over the rounds
	type key struct {
		row  string
		side int
	}
	values := map[key][]float64{}
	p := progress{w: cfg.Progress, tty: cfg.ProgressTTY}
	defer p.done()
	for r := 0; r < cfg.Rounds; r++ {
		for _, s := range run {
			sides := []int{0, 1}
			if r%2 == 1 {
				sides = []int{1, 0}
			}
			for _, side := range sides {
				sd := sideSetup(env, &cfg, s, side)
				label := sd.label
				p.start("bench: round %d/%d %s %s ...", r+1, cfg.Rounds, s.name, label)
				res, err := measureOnce(ctx, env, &cfg, pin, s, sd, meas{r*2 + side, cfg.Rounds * 2})
				vals := res.vals
				if err != nil {
					return nil, fmt.Errorf("round %d, %s on %s: %w", r+1, s.name, label, err)
				}
				var parts []string
				for i, row := range s.rows {
					values[key{row.name, side}] = append(values[key{row.name, side}], vals[i])
					parts = append(parts, fmt.Sprintf("%s %s %s", row.name, format(vals[i]), row.unit))
				}
				if res.note != "" {
					parts = append(parts, "("+res.note+")")
				}
				p.printf("bench: round %d/%d %s %s: %s", r+1, cfg.Rounds, s.name, label, strings.Join(parts, ", "))
			}
		}
	}
	for _, s := range run {
		for _, row := range s.rows {
			base, test := values[key{row.name, 0}], values[key{row.name, 1}]
			ratios := make([]float64, len(base))
			for i := range base {
				ratios[i] = ratio(test[i], base[i])
			}
			bl, tl := "kernel", "netstack"
			if s.name == TunFloor {
				tl = "tun-reflector"
			}
			if s.overhead != nil {
				bl, tl = "off", "on"
			}
			f := &Figure{Name: row.name, Unit: row.unit, Base: Side{bl, newStat(base)}, Test: Side{tl, newStat(test)}, Ratio: newStat(ratios), Overhead: s.overhead != nil}
			if row.target != nil {
				t := *row.target
				t.check(f)
				f.Target = &t
			}
			rep.Figures = append(rep.Figures, f)
		}
	}
	rep.Elapsed = time.Since(rep.Date).Round(time.Second).String()
	return rep, nil
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return math.NaN()
	}
	return a / b
}

// side is how one side of a figure runs: its label, its server program
// (none for tun-floor's kernel side: the kernel answers ICMP itself) with
// its flags and the line that says it is ready, where its clients go, and
// whether its stderr is thrown away (a trace).
type side struct {
	label      string
	bin        string
	args       []string
	ready      string
	addr       string
	quiet      bool
	serverless bool
}

func sideSetup(env Env, cfg *Config, s spec, n int) side {
	netstack := append(slices.Clone(env.NetstackArgs), cfg.NetstackFlags...)
	switch {
	case s.name == TunFloor && n == 0:
		return side{label: "kernel", addr: env.KernelAddr, serverless: true}
	case s.name == TunFloor:
		args := append(slices.Clone(cfg.Reflector[1:]), env.ReflectorArgs...)
		return side{label: "tun-reflector", bin: cfg.Reflector[0], args: args, ready: ReflectorReady, addr: env.NetstackAddr}
	case s.overhead == nil && n == 0:
		return side{label: "kernel", bin: cfg.ServerBin, args: env.KernelArgs, ready: lab.ServerReady, addr: env.KernelAddr}
	case s.overhead == nil:
		return side{label: "netstack", bin: cfg.ServerBin, args: netstack, ready: lab.ServerReady, addr: env.NetstackAddr}
	case n == 0:
		return side{label: "off", bin: cfg.ServerBin, args: netstack, ready: lab.ServerReady, addr: env.NetstackAddr}
	}
	return side{label: "on", bin: cfg.ServerBin, args: append(netstack, s.overhead...), ready: lab.ServerReady, addr: env.NetstackAddr, quiet: slices.Equal(s.overhead, traceFlags)}
}

// measureOnce starts the side's server (on the server CPU with pin),
// runs one measurement and stops the server.
func measureOnce(ctx context.Context, env Env, cfg *Config, pin *pinning, s spec, sd side, m meas) (result, error) {
	t := target{addr: sd.addr, do: env.Do, ownNS: env.OwnClientNS}
	if sd.serverless {
		res, err := s.measure(ctx, cfg, t, nil, m)
		if err == nil {
			err = checkValues(s, res.vals)
		}
		return res, err
	}
	start := env.Start
	if pin != nil {
		start = pin.start(start)
	}
	srv, err := child.Start(ctx, start, sd.bin, sd.args, sd.ready, sd.quiet)
	if err != nil {
		return result{}, err
	}
	if pin != nil {
		if err := pin.check(srv.Pid()); err != nil {
			srv.Stop()
			return result{}, err
		}
	}
	res, err := s.measure(ctx, cfg, t, srv, m)
	if err == nil {
		err = srv.Exited()
	}
	if serr := srv.Stop(); err == nil && serr != nil {
		err = serr
	}
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	if err == nil {
		err = checkValues(s, res.vals)
	}
	return res, err
}

// checkValues rejects a value no measurement can give.
func checkValues(s spec, vals []float64) error {
	if len(vals) != len(s.rows) {
		return fmt.Errorf("%s: %d values for %d rows", s.name, len(vals), len(s.rows))
	}
	for i, v := range vals {
		// RSS may even shrink (a collection during the measurement); the
		// other figures are rates and times.
		if math.IsNaN(v) || (v <= 0 && s.name != IdleMemory) {
			return fmt.Errorf("%s: implausible value %v", s.rows[i].name, v)
		}
	}
	return nil
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return "Linux " + unix.ByteSliceToString(u.Release[:])
}

// progress prints a line per step, overwriting the last on a terminal.
type progress struct {
	w     io.Writer
	tty   bool
	dirty bool
}

func (p *progress) printf(format string, args ...any) {
	if p.w == nil {
		return
	}
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K"+format, args...)
		p.dirty = true
		return
	}
	fmt.Fprintf(p.w, format+"\n", args...)
}

// start prints a line that only a terminal shows (the next line
// replaces it).
func (p *progress) start(format string, args ...any) {
	if p.tty {
		p.printf(format, args...)
	}
}

func (p *progress) done() {
	if p.w != nil && p.dirty {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
