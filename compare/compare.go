// Package compare runs scripted raw-peer probes against the kernel's TCP
// and ours in the same lab and tells where they behave differently.
//
// The peer lives in ant on a plain TUN (no offloads: the kernel hands it
// wire-sized segments) whose far side is lab.ClientStackNet's .2 address:
// ant forwards that address and apple routes it back through ant, so ant's
// own kernel never terminates the conversation and sends no RST of its own.
// Each probe opens a fresh connection (its own source port) to
// tcp-upper-server --stack kernel (apple's 10.0.1.1) and then to our stack
// (10.0.2.2), both started by this package, plays a short script and
// describes what came back in a few deterministic words.
package compare

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"

	"github.com/tcp-upper/tcp-upper/internal/child"
	"github.com/tcp-upper/tcp-upper/lab"
	"github.com/tcp-upper/tcp-upper/tun"
)

// Stacks.
const (
	Kernel   = "kernel"
	Netstack = "netstack"
)

// DifferencesDoc is where the allowed differences are listed.
const DifferencesDoc = "docs/DIFFERENCES.md"

// Probe is one scripted conversation.
type Probe struct {
	Name string
	// What the script does, for --help and the README.
	Doc string
	// RFC is the clause that says what should happen.
	RFC string
	// Expect is the outcome the RFC requires, when it requires one.
	Expect string
	// Allowed is the row of DIFFERENCES.md that allows a difference
	// (0: none does).
	Allowed int
	// ServerFlags are extra flags for both servers.
	ServerFlags []string
	run         func(e *env, c *conn) (string, error)
}

// Result is one row of the table.
type Result struct {
	Name     string `json:"name"`
	Kernel   string `json:"kernel"`
	Netstack string `json:"netstack"`
	Same     bool   `json:"same"`
	RFC      string `json:"rfc"`
	Expect   string `json:"expect,omitempty"`
	// Verdict, for a difference: "bug", "allowed (docs/DIFFERENCES.md #N)"
	// or "kernel differs from the RFC"; "probe failed" when a script could
	// not run (its outcome starts with "error: ").
	Verdict string `json:"verdict,omitempty"`
}

// Report is the whole run.
type Report struct {
	Probes []Result `json:"probes"`
}

// Config says what to run.
type Config struct {
	ServerBin string
	Only      []string
	Log       *slog.Logger
	// Verbose, when set, gets every segment sent and received.
	Verbose io.Writer
}

// Names lists the probes in the order they run.
func Names() []string {
	var n []string
	for _, p := range Probes() {
		n = append(n, p.Name)
	}
	return n
}

// env is what probes share: the peer and the servers' addresses.
type env struct {
	peer   *peer
	target map[string]netip.AddrPort
	mu     sync.Mutex
	memo   map[string]any
}

// once runs fn once per key (and stack) and keeps its result, for probes
// that read two rows off one conversation.
func (e *env) once(key string, fn func() (any, error)) (any, error) {
	e.mu.Lock()
	v, ok := e.memo[key]
	e.mu.Unlock()
	if ok {
		if err, isErr := v.(error); isErr {
			return nil, err
		}
		return v, nil
	}
	v, err := fn()
	e.mu.Lock()
	if err != nil {
		e.memo[key] = err
	} else {
		e.memo[key] = v
	}
	e.mu.Unlock()
	return v, err
}

// Run builds a lab of its own (a fresh name; removed whatever happens),
// runs the probes cfg selects against both stacks and returns the table.
func Run(ctx context.Context, cfg Config) (rep *Report, err error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	var probes []Probe
	for _, p := range Probes() {
		if len(cfg.Only) == 0 || slices.Contains(cfg.Only, p.Name) {
			probes = append(probes, p)
		}
	}
	l, err := lab.New(uniqueName(), cfg.Log)
	if err != nil {
		return nil, err
	}
	if err := l.Up(); err != nil {
		return nil, fmt.Errorf("build the compare lab: %w", err)
	}
	defer func() {
		if derr := l.Down(); derr != nil && err == nil {
			err = fmt.Errorf("remove the compare lab %s: %w", l.Name, derr)
		}
	}()
	peerAddr := lab.ClientStackNet.Addr().Next().Next() // 10.0.3.2
	tunAddr := netip.PrefixFrom(lab.ClientStackNet.Addr().Next(), lab.ClientStackNet.Bits())
	dev, err := tun.Open(tun.Config{Name: "tun1", MTU: 1500, Addr: tunAddr, NetNS: l.NetNSPath(lab.Ant), Offload: false}, cfg.Log)
	if err != nil {
		return nil, fmt.Errorf("the raw peer's TUN in ant: %w", err)
	}
	defer dev.Close()
	e := &env{peer: newPeer(dev, peerAddr, 20000, cfg.Verbose), memo: map[string]any{},
		target: map[string]netip.AddrPort{
			Kernel:   netip.AddrPortFrom(lab.AppleAddr.Addr(), lab.Port),
			Netstack: netip.AddrPortFrom(lab.ServerAddr.Addr(), lab.Port),
		}}

	rep = &Report{}
	// Probes that need the same server flags share a pair of servers.
	for len(probes) > 0 {
		flags := probes[0].ServerFlags
		var group, rest []Probe
		for _, p := range probes {
			if slices.Equal(p.ServerFlags, flags) {
				group = append(group, p)
			} else {
				rest = append(rest, p)
			}
		}
		probes = rest
		res, err := runGroup(ctx, l, e, cfg, flags, group)
		rep.Probes = append(rep.Probes, res...)
		if err != nil {
			return nil, err
		}
	}
	// Keep Probes()' order whatever the grouping did.
	order := Names()
	slices.SortStableFunc(rep.Probes, func(a, b Result) int {
		return slices.Index(order, a.Name) - slices.Index(order, b.Name)
	})
	return rep, nil
}

func runGroup(ctx context.Context, l *lab.Lab, e *env, cfg Config, flags []string, group []Probe) ([]Result, error) {
	port := fmt.Sprint(lab.Port)
	inApple := func(cmd *exec.Cmd) error { return l.Start(lab.Apple, cmd) }
	ks, err := child.Start(ctx, inApple, cfg.ServerBin, append([]string{"--stack", "kernel", "--port", port}, flags...), lab.ServerReady, false)
	if err != nil {
		return nil, err
	}
	defer ks.Stop()
	ns, err := child.Start(ctx, inApple, cfg.ServerBin, append([]string{"--tun", "tun0", "--addr", lab.ServerAddr.String(), "--port", port, "--control", "none"}, flags...), lab.ServerReady, false)
	if err != nil {
		return nil, err
	}
	defer ns.Stop()
	var out []Result
	for _, p := range group {
		if ctx.Err() != nil {
			return out, ctx.Err()
		}
		r := Result{Name: p.Name, RFC: p.RFC, Expect: p.Expect}
		for _, stack := range []string{Kernel, Netstack} {
			if cfg.Verbose != nil {
				fmt.Fprintf(cfg.Verbose, "%s on %s:\n", p.Name, stack)
			}
			c := e.peer.flow(stack, e.target[stack])
			got, err := p.run(e, c)
			c.close()
			if err != nil {
				got = errPrefix + err.Error()
			}
			if stack == Kernel {
				r.Kernel = got
			} else {
				r.Netstack = got
			}
		}
		for _, s := range []*child.Process{ks, ns} {
			if err := s.Exited(); err != nil {
				return out, err
			}
		}
		r.Same = r.Kernel == r.Netstack
		r.Verdict = verdict(p, r)
		out = append(out, r)
	}
	return out, nil
}

// errPrefix starts the outcome of a probe that could not run its script.
const errPrefix = "error: "

// verdict judges a difference: allowed if DIFFERENCES.md lists it; ours
// right if ours is what the RFC requires; a bug otherwise.
func verdict(p Probe, r Result) string {
	switch {
	case strings.HasPrefix(r.Kernel, errPrefix) || strings.HasPrefix(r.Netstack, errPrefix):
		return "probe failed"
	case r.Same:
		return ""
	case p.Allowed != 0:
		return fmt.Sprintf("allowed (%s #%d)", DifferencesDoc, p.Allowed)
	case p.Expect != "" && r.Netstack == p.Expect:
		return "kernel differs from the RFC"
	default:
		return "bug"
	}
}

// uniqueName names a lab no other run uses (tcpuc + 6 random hex digits).
func uniqueName() string {
	b := make([]byte, 3)
	rand.Read(b)
	return "tcpuc" + hex.EncodeToString(b)
}
