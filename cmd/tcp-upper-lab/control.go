package main

// The commands that talk to a running stack over its control socket
// (netstack/control): ss, stats, events (alias trace) and fault.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/tcp-upper/tcp-upper/cmd/internal/cli"
	"github.com/tcp-upper/tcp-upper/internal/kevents"
	"github.com/tcp-upper/tcp-upper/lab"
	"github.com/tcp-upper/tcp-upper/netstack/control"
	"github.com/tcp-upper/tcp-upper/netstack/fault"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
	"github.com/tcp-upper/tcp-upper/viz"
)

// target is where the inspection commands find the server: --control PATH,
// --name LAB (the server in the lab's apple, whether up or exec started
// it), or the only running server.
type target struct {
	path string
	name string
}

func (t *target) resolve() (string, error) {
	if t.path != "" && t.name != "" {
		return "", cli.Usagef("give --control or --name, not both")
	}
	if t.name != "" {
		l, err := lab.New(t.name, nil)
		if err != nil {
			return "", cli.Usagef("bad --name: %v", err)
		}
		if !l.Exists() {
			return "", fmt.Errorf("lab %q is not up: tcp-upper-lab up --name %s", l.Name, l.Name)
		}
		return control.ResolveIn(l.NetNSPath(lab.Apple), fmt.Sprintf("lab %q's apple", l.Name),
			fmt.Sprintf("tcp-upper-lab exec --name %s apple tcp-upper-server", l.Name))
	}
	return control.Resolve(t.path)
}

func dialTarget(t *target) (*control.Client, error) {
	path, err := t.resolve()
	if err != nil {
		return nil, err
	}
	return control.Dial(path)
}

// ssFlags are ss's flags we take: -t and -n are accepted (we only have TCP
// and never resolve names); -a all sockets, -l listening only, -i details,
// -o timers (always shown for TIME-WAIT), combinable as in ss -tani.
type ssFlags struct {
	all, listening, info, json bool
	target                     target
}

func parseSS(args []string) (*ssFlags, error) {
	f := &ssFlags{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-h" || a == "--help":
			return nil, cli.Usagef("usage: %s ss [-tanlio] [--json] [--control PATH | --name LAB]", prog)
		case a == "--json":
			f.json = true
		case a == "--control" || a == "--name":
			if i+1 >= len(args) {
				return nil, cli.Usagef("%s needs a value", a)
			}
			i++
			if a == "--control" {
				f.target.path = args[i]
			} else {
				f.target.name = args[i]
			}
		case strings.HasPrefix(a, "--control="):
			f.target.path = strings.TrimPrefix(a, "--control=")
		case strings.HasPrefix(a, "--name="):
			f.target.name = strings.TrimPrefix(a, "--name=")
		case strings.HasPrefix(a, "-") && !strings.HasPrefix(a, "--") && len(a) > 1:
			for _, c := range a[1:] {
				switch c {
				case 't', 'n', 'o':
				case 'a':
					f.all = true
				case 'l':
					f.listening = true
				case 'i':
					f.info = true
				default:
					return nil, cli.Usagef("unknown ss flag -%c: we take -t -a -n -l -i -o, --json, --control PATH, --name LAB", c)
				}
			}
		default:
			return nil, cli.Usagef("unexpected argument %q: we take -t -a -n -l -i -o, --json, --control PATH, --name LAB (no filters)", a)
		}
	}
	return f, nil
}

// cmdSS prints the stack's socket table in ss -tan's columns.
func cmdSS(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, err := parseSS(args)
	if err != nil {
		return err
	}
	c, err := dialTarget(&f.target)
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := c.Call("ss", nil)
	if err != nil {
		return err
	}
	var rows []control.Socket
	for _, s := range r.Sockets {
		// As ss: by default connected sockets only (not LISTEN, SYN-RECV
		// or TIME-WAIT); -l listening only; -a everything.
		switch {
		case f.all:
		case f.listening:
			if s.State != inspect.Listen {
				continue
			}
		default:
			if s.State == inspect.Listen || s.State == inspect.TimeWait || s.State == inspect.SynRcvd {
				continue
			}
		}
		rows = append(rows, s)
	}
	if f.json {
		if rows == nil {
			rows = []control.Socket{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	io.WriteString(stdout, FormatSS(rows, f.info))
	return nil
}

// FormatSS renders sockets as ss -tan does (with -i, ss -tani).
func FormatSS(rows []control.Socket, info bool) string {
	type cells struct{ state, rq, sq, laddr, lport, raddr, rport, extra string }
	cs := []cells{{"State", "Recv-Q", "Send-Q", "Local Address", "Port", "Peer Address", "Port", ""}}
	for _, s := range rows {
		c := cells{state: s.State.SSName(), rq: strconv.Itoa(s.RecvQ), sq: strconv.Itoa(s.SendQ)}
		c.laddr, c.lport = s.Local.Addr().String(), strconv.Itoa(int(s.Local.Port()))
		if s.State == inspect.Listen {
			c.raddr, c.rport = "0.0.0.0", "*"
		} else {
			c.raddr, c.rport = s.Remote.Addr().String(), strconv.Itoa(int(s.Remote.Port()))
		}
		if s.State == inspect.TimeWait && s.TimeWaitLeft > 0 {
			c.extra = fmt.Sprintf("timer:(timewait,%dsec)", secondsLeft(s.TimeWaitLeft))
		}
		cs = append(cs, c)
	}
	w := [8]int{}
	for _, c := range cs {
		for i, v := range []string{c.state, c.rq, c.sq, c.laddr, c.lport, c.raddr, c.rport} {
			w[i] = max(w[i], len(v))
		}
	}
	var b strings.Builder
	for i, c := range cs {
		// ss right-aligns addresses against the colon and left-aligns ports.
		fmt.Fprintf(&b, "%-*s %-*s %-*s %*s:%-*s %*s:%-*s", w[0], c.state, w[1], c.rq, w[2], c.sq,
			w[3], c.laddr, w[4], c.lport, w[5], c.raddr, w[6], c.rport)
		if c.extra != "" {
			b.WriteString(" " + c.extra)
		}
		// No trailing blanks after the last column.
		line := strings.TrimRight(b.String(), " ")
		b.Reset()
		b.WriteString(line + "\n")
		if info && i > 0 && rows[i-1].Info != nil {
			b.WriteString("\t " + infoLine(rows[i-1].Info) + "\n")
		}
	}
	return b.String()
}

func secondsLeft(d time.Duration) int {
	return int((d + time.Second - 1) / time.Second)
}

// infoLine is ss -i's detail line, with the sequence variables ss does not
// show (relative to the ISNs, as tcpdump prints them).
func infoLine(in *inspect.SocketInfo) string {
	var b strings.Builder
	if in.WScalePeer >= 0 {
		fmt.Fprintf(&b, "wscale:%d,%d ", in.WScalePeer, in.WScaleOurs)
	}
	fmt.Fprintf(&b, "rto:%s rtt:%s/%s mss:%d cwnd:%d", msec(in.RTO), msec(in.RTT), msec(in.RTTVar), in.MSS, in.Cwnd)
	if in.Ssthresh > 0 && in.Ssthresh < 1<<30 {
		fmt.Fprintf(&b, " ssthresh:%d", in.Ssthresh)
	}
	fmt.Fprintf(&b, " bytes_sent:%d bytes_acked:%d bytes_received:%d segs_out:%d segs_in:%d retrans:%d",
		in.BytesSent, in.BytesAcked, in.BytesReceived, in.SegsOut, in.SegsIn, in.Retransmits)
	fmt.Fprintf(&b, " snd_wnd:%d rcv_wnd:%d snd.una:%d snd.nxt:%d rcv.nxt:%d", in.SndWnd, in.RcvWnd, in.SndUna, in.SndNxt, in.RcvNxt)
	return b.String()
}

// msec prints a duration in milliseconds as ss does (rto:204 rtt:0.061).
func msec(d time.Duration) string {
	v := strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 3, 64)
	v = strings.TrimRight(strings.TrimRight(v, "0"), ".")
	if v == "" {
		return "0"
	}
	return v
}

// cmdStats prints the stack's counters.
func cmdStats(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet(prog+" stats", stderr, prog+" stats [--json] [--control PATH | --name LAB]")
	var t target
	asJSON := fs.Bool("json", false, "print the counters as one JSON object")
	fs.StringVar(&t.path, "control", "", "the server's control socket (default: the only running server)")
	fs.StringVar(&t.name, "name", "", "the lab whose server to ask")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	c, err := dialTarget(&t)
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := c.Call("stats", nil)
	if err != nil {
		return err
	}
	if *asJSON {
		m := map[string]uint64{}
		for _, c := range r.Counters {
			m[c.Name] = c.Value
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(m)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "COUNTER\tVALUE\tMEANING")
	for _, c := range r.Counters {
		fmt.Fprintf(tw, "%s\t%d\t%s\n", c.Name, c.Value, c.Help)
	}
	return tw.Flush()
}

// cmdEvents attaches to a running server and prints its connection events
// (what the server's --events prints) until Ctrl-C or the server exits.
// It is also the command trace, its first name, kept for scripts: the
// server's --trace is the tcpdump-style packet trace, not this.
func cmdEvents(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet(prog+" events", stderr, prog+" events [--format text|json] [--explain] [--control PATH | --name LAB]   (also: "+prog+" trace)")
	var t target
	format := fs.String("format", "text", "text, or json (one event per line)")
	explain := fs.Bool("explain", false, "under each event, the rule behind it (text format)")
	fs.StringVar(&t.path, "control", "", "the server's control socket (default: the only running server)")
	fs.StringVar(&t.name, "name", "", "the lab whose server to watch")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	fm, err := inspect.ParseFormat(*format)
	if err != nil {
		return cli.Usagef("bad --format: %v", err)
	}
	c, err := dialTarget(&t)
	if err != nil {
		return err
	}
	defer c.Close()
	h, err := c.Call("hello", nil)
	if err != nil {
		return err
	}
	var outMu sync.Mutex // the server's events and the kernel's share stdout
	emit := func(ev *inspect.Event) error {
		outMu.Lock()
		defer outMu.Unlock()
		if fm == inspect.JSON {
			b, err := ev.MarshalJSON()
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(stdout, "%s\n", b)
			return err
		}
		if _, err := fmt.Fprintln(stdout, ev.Text()); err != nil {
			return err
		}
		if *explain {
			if rule, ok := viz.ExplainEvent(ev); ok {
				_, err := fmt.Fprintf(stdout, "    why: %s\n", rule)
				return err
			}
		}
		return nil
	}
	if ks, err := kernelClients(c, h.Hello); err != nil {
		fmt.Fprintf(stderr, "(the kernel clients' side is not shown: %v)\n", err)
	} else {
		printed := make(chan struct{})
		go func() {
			defer close(printed)
			for ev := range ks.C() {
				emit(&ev)
			}
		}()
		defer func() {
			ks.Close()
			<-printed
			if lost := ks.Lost(); lost > 0 {
				fmt.Fprintf(stderr, "(%d of the kernel's records or events lost: its trace buffer overflowed or this terminal read too slowly)\n", lost)
			}
		}()
	}
	attached := false
	var dropped uint64
	err = c.Stream(ctx, "events", nil, func(r *control.Response) error {
		if !attached && fm == inspect.Text {
			// The server's first line: its stream runs.
			fmt.Fprintf(stderr, "attached to %s (pid %d, %s, %s, TIME-WAIT %v); Ctrl-C to stop\n",
				h.Hello.Program, h.Hello.PID, h.Hello.TUN, h.Hello.Addr, h.Hello.TimeWait)
		}
		attached = true
		if r.Dropped > dropped {
			fmt.Fprintf(stderr, "(%d events lost so far: this terminal reads too slowly)\n", r.Dropped)
			dropped = r.Dropped
		}
		if r.Event == nil {
			return nil
		}
		return emit(r.Event)
	})
	if err != nil && strings.Contains(err.Error(), "closed the connection") {
		fmt.Fprintln(stderr, "the server exited")
		return nil
	}
	return err
}

// kernelClients follows the kernel clients in the lab's ant that connect
// to the server (from the kernel's tracepoints), when the server runs in a
// lab's apple.
func kernelClients(c *control.Client, h *control.Hello) (*kevents.Stream, error) {
	if h == nil {
		return nil, errors.New("the server did not say who it is")
	}
	l, host := lab.OfPID(h.PID)
	if l == nil || host != lab.Apple {
		return nil, errors.New("the server is not in a lab's apple")
	}
	addr, err := netip.ParsePrefix(h.Addr)
	if err != nil {
		return nil, fmt.Errorf("the server's address %q: %v", h.Addr, err)
	}
	r, err := c.Call("ss", nil)
	if err != nil {
		return nil, err
	}
	var port uint16
	for _, so := range r.Sockets {
		if so.State == inspect.Listen {
			port = so.Local.Port()
		}
	}
	if port == 0 {
		return nil, errors.New("the server has no listener")
	}
	return kevents.Start(kevents.Options{Host: lab.Ant, Server: netip.AddrPortFrom(addr.Addr(), port), AnyProcess: true}, l.NetNSPath(lab.Ant))
}

// cmdFault changes a running server's fault rules.
func cmdFault(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	usage := prog + " fault add RULE... | list | del ID | clear   [--control PATH | --name LAB]"
	var t target
	var rest []string
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "--control" || a == "--name":
			if i+1 >= len(args) {
				return cli.Usagef("%s needs a value", a)
			}
			if a == "--control" {
				t.path = args[i+1]
			} else {
				t.name = args[i+1]
			}
			i++
		case a == "-h" || a == "--help":
			fmt.Fprintf(stderr, "usage: %s\n\nRULE is DIR MATCH ACTION [ARG] [OPTIONS], e.g. in data drop nth=3 (see docs/EXPERIMENTS.md)\n", usage)
			return nil
		default:
			rest = append(rest, a)
		}
	}
	if len(rest) == 0 {
		return cli.Usagef("usage: %s", usage)
	}
	var fa control.FaultArgs
	switch fa.Op = rest[0]; fa.Op {
	case "add":
		if len(rest) < 2 {
			return cli.Usagef("fault add needs a rule, e.g. fault add in data drop nth=3")
		}
		fa.Rule = strings.Join(rest[1:], " ")
		if _, err := fault.Parse(fa.Rule); err != nil {
			return cli.Usagef("%v", err)
		}
	case "del":
		if len(rest) != 2 {
			return cli.Usagef("fault del needs one rule id (fault list shows them)")
		}
		id, err := strconv.Atoi(rest[1])
		if err != nil || id < 1 {
			return cli.Usagef("bad rule id %q: want a number from fault list", rest[1])
		}
		fa.ID = id
	case "list", "clear":
		if len(rest) != 1 {
			return cli.Usagef("fault %s takes no arguments", fa.Op)
		}
	default:
		return cli.Usagef("unknown fault command %q: want add, list, del or clear", fa.Op)
	}
	c, err := dialTarget(&t)
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := c.Call("fault", fa)
	if err != nil {
		return err
	}
	var reply control.FaultReply
	if err := json.Unmarshal(r.Data, &reply); err != nil {
		return fmt.Errorf("bad fault reply: %v", err)
	}
	switch fa.Op {
	case "add":
		fmt.Fprintf(stdout, "added rule #%d\n", reply.ID)
	case "del":
		fmt.Fprintf(stdout, "deleted rule #%d\n", fa.ID)
	case "clear":
		fmt.Fprintln(stdout, "cleared all rules")
	default:
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "ID\tRULE\tMATCHED\tAPPLIED\n")
		for _, rs := range reply.Rules {
			fmt.Fprintf(tw, "%d\t%s\t%d\t%d\n", rs.ID, rs.Rule, rs.Matched, rs.Applied)
		}
		tw.Flush()
		fmt.Fprintf(stdout, "seed %d\n", reply.Seed)
	}
	return nil
}
