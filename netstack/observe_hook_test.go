//go:build !gvisor_unpatched

package netstack_test

// Tests of gVisor's observe hook, which our patch
// third_party/patches/gvisor/0009-tcp-observe-hook.patch adds. Pristine
// gVisor has no such hook: built against it without the gvisor_unpatched
// tag (scripts/unpatched.sh go test -tags= ./netstack) this file does not
// compile; with the tag (the script's default) it is left out.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/internal/leakcheck"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/netstack/fault"
)

// obsLog records what a stack's observe hook is given. Inside the hook it
// also reads the endpoint's own variables (live) and notes every number in
// which the observation differs from them.
type obsLog struct {
	mu   sync.Mutex
	obs  []tcp.TCPObservation
	bad  []string
	wake chan struct{}
}

func newObsLog() *obsLog { return &obsLog{wake: make(chan struct{}, 1)} }

func (l *obsLog) hook(o *tcp.TCPObservation) {
	diff := compareLive(o, live(o.Endpoint))
	c := *o
	l.mu.Lock()
	l.obs = append(l.obs, c)
	if diff != "" {
		l.bad = append(l.bad, fmt.Sprintf("%s: %s", describe(&c), diff))
	}
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// wait returns the observations so far once cond holds for them; the test
// fails if it does not within timeout.
func (l *obsLog) wait(t *testing.T, timeout time.Duration, what string, cond func([]tcp.TCPObservation) bool) []tcp.TCPObservation {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		obs := slices.Clone(l.obs)
		l.mu.Unlock()
		if cond(obs) {
			return obs
		}
		select {
		case <-l.wake:
		case <-deadline.C:
			t.Fatalf("%s: not observed within %v; observed:\n%s", what, timeout, describeAll(obs))
		}
	}
}

// mismatches are the observations whose numbers were not the endpoint's.
func (l *obsLog) mismatches() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.bad)
}

// liveNumbers are an endpoint's own variables, read with reflection while
// the hook runs (the endpoint's lock is held, so nothing changes them).
// The field names are gVisor's (tcp.Endpoint's snd, rcv and h).
type liveNumbers struct {
	state                  tcp.EndpointState
	connected              bool
	sndUna, sndNxt, sndWnd uint32
	cwnd, ssthresh         int
	rto, srtt, rttvar      time.Duration
	rcvNxt, rcvAcc, rcvWnd uint32
	iss                    uint32
	haveISS                bool
}

func live(ep *tcp.Endpoint) liveNumbers {
	n := liveNumbers{state: tcp.EndpointState(ep.State())}
	v := reflect.ValueOf(ep).Elem()
	if snd, rcv := v.FieldByName("snd"), v.FieldByName("rcv"); !snd.IsNil() && !rcv.IsNil() {
		s, r := snd.Elem(), rcv.Elem()
		n.connected = true
		n.sndUna = uint32(s.FieldByName("SndUna").Uint())
		n.sndNxt = uint32(s.FieldByName("SndNxt").Uint())
		n.sndWnd = uint32(s.FieldByName("SndWnd").Uint())
		n.cwnd = int(s.FieldByName("SndCwnd").Int())
		n.ssthresh = int(s.FieldByName("Ssthresh").Int())
		n.rto = time.Duration(s.FieldByName("RTO").Int())
		n.srtt = time.Duration(s.FieldByName("rtt").FieldByName("SRTT").Int())
		n.rttvar = time.Duration(s.FieldByName("rtt").FieldByName("RTTVar").Int())
		n.rcvNxt = uint32(r.FieldByName("RcvNxt").Uint())
		n.rcvAcc = uint32(r.FieldByName("RcvAcc").Uint())
		// What the window field says, in bytes.
		scale := r.FieldByName("RcvWndScale").Uint()
		n.rcvWnd = uint32(r.FieldByName("rcvWnd").Uint() >> scale << scale)
	}
	if h := v.FieldByName("h"); !h.IsNil() {
		n.iss, n.haveISS = uint32(h.Elem().FieldByName("iss").Uint()), true
	}
	return n
}

// compareLive says where o differs from the endpoint's own variables n
// ("" if nowhere).
func compareLive(o *tcp.TCPObservation, n liveNumbers) string {
	var d []string
	cmp := func(name string, got, want any) {
		if got != want {
			d = append(d, fmt.Sprintf("%s=%v, endpoint has %v", name, got, want))
		}
	}
	cmp("to", o.To, n.state)
	if o.Kind != tcp.TCPObserveState {
		cmp("from", o.From, n.state)
	}
	cmp("connected", o.Connected, n.connected)
	cmp("have_iss", o.HaveISS, n.haveISS)
	if n.haveISS {
		cmp("iss", uint32(o.ISS), n.iss)
	}
	if o.Connected && n.connected {
		s, r := &o.Sender, &o.Receiver
		cmp("snd.una", uint32(s.SndUna), n.sndUna)
		cmp("snd.nxt", uint32(s.SndNxt), n.sndNxt)
		cmp("snd.wnd", uint32(s.SndWnd), n.sndWnd)
		cmp("cwnd", s.SndCwnd, n.cwnd)
		cmp("ssthresh", s.Ssthresh, n.ssthresh)
		cmp("rto", s.RTO, n.rto)
		cmp("srtt", s.RTTState.SRTT, n.srtt)
		cmp("rttvar", s.RTTState.RTTVar, n.rttvar)
		cmp("rcv.nxt", uint32(r.RcvNxt), n.rcvNxt)
		cmp("rcv.acc", uint32(r.RcvAcc), n.rcvAcc)
		cmp("rcv.wnd", uint32(o.RcvWnd), n.rcvWnd)
	}
	return strings.Join(d, ", ")
}

func describe(o *tcp.TCPObservation) string {
	id := o.ID
	s := fmt.Sprintf("%s:%d>%s:%d %s", id.LocalAddress, id.LocalPort, id.RemoteAddress, id.RemotePort, o.Kind)
	if o.Kind == tcp.TCPObserveState {
		s += fmt.Sprintf(" %s -> %s", o.From, o.To)
	} else {
		s += " in " + o.To.String()
	}
	if o.Connected {
		sn := &o.Sender
		s += fmt.Sprintf(" snd.una=%d snd.nxt=%d rcv.nxt=%d cwnd=%d rto=%v", sn.SndUna, sn.SndNxt, o.Receiver.RcvNxt, sn.SndCwnd, sn.RTO)
	}
	return s
}

func describeAll(obs []tcp.TCPObservation) string {
	var b strings.Builder
	for i := range obs {
		b.WriteString("  " + describe(&obs[i]) + "\n")
	}
	return b.String()
}

// ofConn keeps the observations of the connection to or from port 9999
// (not the listener's).
func ofConn(obs []tcp.TCPObservation) []tcp.TCPObservation {
	var out []tcp.TCPObservation
	for _, o := range obs {
		if id := o.ID; id.RemotePort != 0 && (id.LocalPort == 9999 || id.RemotePort == 9999) {
			out = append(out, o)
		}
	}
	return out
}

func ofKind(obs []tcp.TCPObservation, k tcp.TCPObserveKind) []tcp.TCPObservation {
	var out []tcp.TCPObservation
	for _, o := range obs {
		if o.Kind == k {
			out = append(out, o)
		}
	}
	return out
}

// chain spells a connection's state changes: "SYN-SENT -> ESTABLISHED -> ...".
func chain(obs []tcp.TCPObservation) string {
	var s []string
	for _, o := range ofKind(obs, tcp.TCPObserveState) {
		if len(s) == 0 {
			s = append(s, o.From.String())
		}
		s = append(s, o.To.String())
	}
	return strings.Join(s, " -> ")
}

// reached is a wait condition: the connection's state changes include one to st.
func reached(st tcp.EndpointState) func([]tcp.TCPObservation) bool {
	return func(obs []tcp.TCPObservation) bool {
		for _, o := range ofKind(ofConn(obs), tcp.TCPObserveState) {
			if o.To == st {
				return true
			}
		}
		return false
	}
}

func stateEvent(obs []tcp.TCPObservation, from, to tcp.EndpointState) *tcp.TCPObservation {
	for i := range obs {
		if o := &obs[i]; o.Kind == tcp.TCPObserveState && o.From == from && o.To == to {
			return o
		}
	}
	return nil
}

// observedPair is two stacks joined in memory, each with an obsLog as its
// observe hook.
func observedPair(t *testing.T, l link, srvOpts, cliOpts netstack.Options) (srv, cli *netstack.Stack, srvLog, cliLog *obsLog) {
	t.Helper()
	srvLog, cliLog = newObsLog(), newObsLog()
	srvOpts.TCPObserve, cliOpts.TCPObserve = srvLog.hook, cliLog.hook
	srv, cli = pair(t, l, srvOpts, cliOpts)
	t.Cleanup(func() {
		for name, lg := range map[string]*obsLog{"server": srvLog, "client": cliLog} {
			for _, m := range lg.mismatches() {
				t.Errorf("%s: observed numbers are not the endpoint's: %s", name, m)
			}
		}
	})
	return srv, cli, srvLog, cliLog
}

// TestObserveHandshake: the server's SYN-RCVD -> ESTABLISHED event carries
// the sender's initial numbers (cwnd 10, snd.una == snd.nxt == iss+1, our
// ISS being the one of the SYN-RCVD event), the SYN-RCVD event none yet; the
// client's SYN-SENT -> ESTABLISHED the same, and each side's rcv.nxt is the
// other's ISS+1.
func TestObserveHandshake(t *testing.T) { forLinks(t, testObserveHandshake) }

func testObserveHandshake(t *testing.T, l link) {
	leakcheck.Check(t)
	srv, cli, srvLog, cliLog := observedPair(t, l, netstack.Options{}, netstack.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	echo(ctx, t, srv, cli, app.ServerOptions{})
	sobs := ofConn(srvLog.wait(t, 5*time.Second, "server ESTABLISHED", reached(tcp.StateEstablished)))
	cobs := ofConn(cliLog.wait(t, 5*time.Second, "client ESTABLISHED", reached(tcp.StateEstablished)))
	t.Logf("server: %s", chain(sobs))
	t.Logf("client: %s", chain(cobs))

	synRcvd := stateEvent(sobs, tcp.StateConnecting, tcp.StateSynRecv)
	if synRcvd == nil {
		t.Fatalf("server: no CONNECTING -> SYN-RCVD event:\n%s", describeAll(sobs))
	}
	if synRcvd.Connected || synRcvd.Sender.SndCwnd != 0 || !synRcvd.HaveISS || !synRcvd.HaveIRS {
		t.Errorf("server SYN-RCVD: connected=%v cwnd=%d have_iss=%v have_irs=%v, want no sender yet and both ISNs",
			synRcvd.Connected, synRcvd.Sender.SndCwnd, synRcvd.HaveISS, synRcvd.HaveIRS)
	}
	synSent := stateEvent(cobs, tcp.StateConnecting, tcp.StateSynSent)
	if synSent == nil {
		t.Fatalf("client: no CONNECTING -> SYN-SENT event:\n%s", describeAll(cobs))
	}
	if synSent.Connected || !synSent.HaveISS || synSent.HaveIRS {
		t.Errorf("client SYN-SENT: connected=%v have_iss=%v have_irs=%v, want our ISS only", synSent.Connected, synSent.HaveISS, synSent.HaveIRS)
	}
	if synRcvd.IRS != synSent.ISS {
		t.Errorf("server's IRS %d is not the client's ISS %d", synRcvd.IRS, synSent.ISS)
	}

	for _, c := range []struct {
		side     string
		ev       *tcp.TCPObservation
		iss, irs uint32
	}{
		{"server", stateEvent(sobs, tcp.StateSynRecv, tcp.StateEstablished), uint32(synRcvd.ISS), uint32(synSent.ISS)},
		{"client", stateEvent(cobs, tcp.StateSynSent, tcp.StateEstablished), uint32(synSent.ISS), uint32(synRcvd.ISS)},
	} {
		if c.ev == nil {
			t.Errorf("%s: no transition to ESTABLISHED from the handshake state", c.side)
			continue
		}
		s := &c.ev.Sender
		if !c.ev.Connected {
			t.Errorf("%s ESTABLISHED: not connected", c.side)
		}
		if s.SndCwnd != 10 {
			t.Errorf("%s ESTABLISHED: cwnd %d, want 10", c.side, s.SndCwnd)
		}
		if uint32(s.SndUna) != c.iss+1 || uint32(s.SndNxt) != c.iss+1 {
			t.Errorf("%s ESTABLISHED: snd.una %d snd.nxt %d, want both ISS+1 = %d", c.side, s.SndUna, s.SndNxt, c.iss+1)
		}
		if got := uint32(c.ev.Receiver.RcvNxt); got != c.irs+1 {
			t.Errorf("%s ESTABLISHED: rcv.nxt %d, want the peer's ISS+1 = %d", c.side, got, c.irs+1)
		}
		if c.ev.RcvWnd == 0 || s.SndWnd == 0 || s.RTO <= 0 {
			t.Errorf("%s ESTABLISHED: rcv.wnd %d snd.wnd %d rto %v, want all set", c.side, c.ev.RcvWnd, s.SndWnd, s.RTO)
		}
	}
}

// TestObserveCleanClose: the client closes first; every state of the
// close appears, in order, on both sides, each event starting
// where the previous one ended.
func TestObserveCleanClose(t *testing.T) { forLinks(t, testObserveCleanClose) }

func testObserveCleanClose(t *testing.T, l link) {
	leakcheck.Check(t)
	opts := netstack.Options{TimeWait: 300 * time.Millisecond}
	srv, cli, srvLog, cliLog := observedPair(t, l, opts, opts)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn := echo(ctx, t, srv, cli, app.ServerOptions{})
	if err := app.Session(conn, app.NewPipeLines(strings.NewReader("abc\n")), io.Discard); err != nil {
		t.Fatal(err)
	}
	// app.Session closes the connection: the client's active close.
	cobs := ofConn(cliLog.wait(t, 5*time.Second, "client TIME-WAIT -> CLOSED", reached(tcp.StateClose)))
	sobs := ofConn(srvLog.wait(t, 5*time.Second, "server LAST-ACK -> CLOSED", reached(tcp.StateClose)))
	for _, c := range []struct {
		side string
		obs  []tcp.TCPObservation
		want string
	}{
		// The server's FIN carries its ACK of ours (patch 0014), unless
		// its application took longer than the delayed ACK timer.
		{"client", cobs, "ESTABLISHED -> FIN-WAIT1 -> TIME-WAIT -> CLOSED|ESTABLISHED -> FIN-WAIT1 -> FIN-WAIT2 -> TIME-WAIT -> CLOSED"},
		{"server", sobs, "ESTABLISHED -> CLOSE-WAIT -> LAST-ACK -> CLOSED"},
	} {
		got := chain(c.obs)
		t.Logf("%s: %s", c.side, got)
		if i := strings.Index(got, "ESTABLISHED"); i < 0 || !slices.Contains(strings.Split(c.want, "|"), got[i:]) {
			t.Errorf("%s: states %q, want them to end %q", c.side, got, c.want)
		}
		states := ofKind(c.obs, tcp.TCPObserveState)
		for i := 1; i < len(states); i++ {
			if states[i].From != states[i-1].To {
				t.Errorf("%s: event %d goes %s -> %s, but the previous one ended in %s", c.side, i, states[i].From, states[i].To, states[i-1].To)
			}
		}
	}
	// The client's TIME-WAIT is entered on the server's FIN: its rcv.nxt
	// then counts that FIN, and its own FIN was acknowledged. Through
	// FIN-WAIT-2 the sender took that ACK before; straight from FIN-WAIT-1
	// (the server's FIN carries the ACK) gVisor changes state before its
	// sender takes the ACK, so snd.una is still at our FIN.
	fw1 := stateEvent(cobs, tcp.StateEstablished, tcp.StateFinWait1)
	if tw := stateEvent(cobs, tcp.StateFinWait2, tcp.StateTimeWait); tw != nil {
		if tw.Sender.SndUna != tw.Sender.SndNxt || fw1 == nil || tw.Sender.SndNxt != fw1.Sender.SndNxt+1 {
			t.Errorf("client TIME-WAIT: snd.una %d snd.nxt %d, want both one past the FIN-WAIT-1 event's snd.nxt (our FIN, acknowledged)", tw.Sender.SndUna, tw.Sender.SndNxt)
		}
	}
	if tw := stateEvent(cobs, tcp.StateFinWait1, tcp.StateTimeWait); tw != nil {
		if fw1 == nil || tw.Sender.SndUna != fw1.Sender.SndNxt || tw.Sender.SndNxt != fw1.Sender.SndNxt+1 {
			t.Errorf("client FIN-WAIT-1 -> TIME-WAIT: snd.una %d snd.nxt %d, want snd.una at the FIN-WAIT-1 event's snd.nxt (our FIN) and snd.nxt one past it", tw.Sender.SndUna, tw.Sender.SndNxt)
		}
	}
}

// TestObserveRTO: the client's fault layer drops its first data segment;
// with classic recovery (no tail loss probe) the retransmission timer
// repairs it, and the hook reports the expiry with the data outstanding,
// as many times as the stack counts timeouts.
func TestObserveRTO(t *testing.T) {
	leakcheck.Check(t)
	r, err := fault.Parse("out data drop count=1")
	if err != nil {
		t.Fatal(err)
	}
	srv, cli, _, cliLog := observedPair(t, plainLink, netstack.Options{},
		netstack.Options{ClassicRecovery: true, Fault: fault.Options{Rules: []*fault.Rule{r}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn := echo(ctx, t, srv, cli, app.ServerOptions{})
	const msg = "lost once\n"
	if _, err := conn.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, buf); err != nil {
		t.Fatalf("reply: %v", err)
	}
	obs := ofConn(cliLog.wait(t, time.Second, "client RTO", func(obs []tcp.TCPObservation) bool {
		return len(ofKind(ofConn(obs), tcp.TCPObserveRTO)) > 0
	}))
	rtos := ofKind(obs, tcp.TCPObserveRTO)
	if n := counters(cli)["tcp.timeouts"]; uint64(len(rtos)) != n {
		t.Errorf("%d RTO events, the stack counted %d timeouts", len(rtos), n)
	}
	est := stateEvent(obs, tcp.StateSynSent, tcp.StateEstablished)
	if est == nil {
		t.Fatal("no ESTABLISHED event")
	}
	o := rtos[0]
	s := &o.Sender
	t.Logf("%s", describe(&o))
	if !o.Connected || o.To != tcp.StateEstablished {
		t.Errorf("RTO: connected=%v state %s, want an ESTABLISHED connection", o.Connected, o.To)
	}
	if s.SndUna != est.Sender.SndUna || s.SndNxt != s.SndUna.Add(seqnum.Size(len(msg))) {
		t.Errorf("RTO: snd.una %d snd.nxt %d, want the lost %d bytes outstanding from %d", s.SndUna, s.SndNxt, len(msg), est.Sender.SndUna)
	}
	if s.RTO < 200*time.Millisecond {
		t.Errorf("RTO: the timeout that expired was %v, below gVisor's minimum 200ms", s.RTO)
	}
}

// TestObserveZeroWindow: a server that does not read lets its receive
// buffer fill: the hook reports its window closing, the client's
// zero-window probes, and the window reopening once the server reads.
// Every observation's numbers are checked against the endpoint's own
// variables, read inside the hook.
func TestObserveZeroWindow(t *testing.T) {
	leakcheck.Check(t)
	srv, cli, srvLog, cliLog := observedPair(t, plainLink, netstack.Options{}, netstack.Options{})
	ln, err := srv.Listen(9999)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := cli.Dial(ctx, netip.MustParseAddrPort("10.0.2.2:9999"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sc := <-accepted
	if sc == nil {
		t.Fatal("accept failed")
	}
	defer sc.Close()

	const total = 8 << 20 // more than the server's receive buffer can hold
	wrote := make(chan error, 1)
	go func() {
		conn.SetWriteDeadline(time.Now().Add(15 * time.Second))
		_, err := conn.Write(make([]byte, total))
		wrote <- err
	}()
	srvLog.wait(t, 10*time.Second, "server window closed", func(obs []tcp.TCPObservation) bool {
		return len(ofKind(ofConn(obs), tcp.TCPObserveRcvWindowClosed)) > 0
	})
	cliLog.wait(t, 10*time.Second, "client zero-window probe", func(obs []tcp.TCPObservation) bool {
		return len(ofKind(ofConn(obs), tcp.TCPObserveZeroWindowProbe)) > 0
	})
	sc.SetReadDeadline(time.Now().Add(15 * time.Second))
	if n, err := io.CopyN(io.Discard, sc, total); err != nil {
		t.Fatalf("server read %d of %d bytes: %v", n, total, err)
	}
	if err := <-wrote; err != nil {
		t.Fatalf("client write: %v", err)
	}
	sobs := ofConn(srvLog.wait(t, 5*time.Second, "server window reopened", func(obs []tcp.TCPObservation) bool {
		return len(ofKind(ofConn(obs), tcp.TCPObserveRcvWindowOpened)) > 0
	}))
	closed := ofKind(sobs, tcp.TCPObserveRcvWindowClosed)[0]
	if !closed.Connected || closed.RcvWnd != 0 {
		t.Errorf("window closed: connected=%v rcv.wnd %d, want 0", closed.Connected, closed.RcvWnd)
	}
	opened := ofKind(sobs, tcp.TCPObserveRcvWindowOpened)[0]
	if opened.RcvWnd == 0 || !closed.Receiver.RcvNxt.LessThanEq(opened.Receiver.RcvNxt) {
		t.Errorf("window opened: rcv.wnd %d rcv.nxt %d (closed at %d), want a window and no going back", opened.RcvWnd, opened.Receiver.RcvNxt, closed.Receiver.RcvNxt)
	}
	cobs := ofConn(cliLog.wait(t, time.Second, "client observations", func([]tcp.TCPObservation) bool { return true }))
	probe := ofKind(cobs, tcp.TCPObserveZeroWindowProbe)[0]
	if !probe.Connected || probe.Sender.SndWnd != 0 {
		t.Errorf("zero-window probe: connected=%v snd.wnd %d, want the peer's zero window", probe.Connected, probe.Sender.SndWnd)
	}
	t.Logf("server: %d observations, client: %d; window closed at rcv.nxt %d, reopened to %d bytes", len(sobs), len(cobs), closed.Receiver.RcvNxt, opened.RcvWnd)
}

// TestObserveRecovery: the client's fault layer drops one data segment in
// the middle of a bulk transfer; with classic recovery the duplicate ACKs
// (with SACK) put the sender into recovery and take it out again, and the
// hook reports both with the congestion window as gVisor sets it: ssthresh
// + 3 segments on entry, ssthresh on exit.
func TestObserveRecovery(t *testing.T) {
	leakcheck.Check(t)
	r, err := fault.Parse("out data drop nth=20")
	if err != nil {
		t.Fatal(err)
	}
	srv, cli, _, cliLog := observedPair(t, plainLink, netstack.Options{},
		netstack.Options{ClassicRecovery: true, Fault: fault.Options{Rules: []*fault.Rule{r}}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn := echo(ctx, t, srv, cli, app.ServerOptions{})
	if _, err := app.Bulk(ctx, conn, app.BulkOptions{Total: 1 << 20, Seed: 1, StallAfter: 10 * time.Second}); err != nil {
		t.Fatal(err)
	}
	obs := ofConn(cliLog.wait(t, 5*time.Second, "client recovery enter and leave", func(obs []tcp.TCPObservation) bool {
		return len(ofKind(ofConn(obs), tcp.TCPObserveRecoveryLeave)) > 0
	}))
	enter, leave := ofKind(obs, tcp.TCPObserveRecoveryEnter), ofKind(obs, tcp.TCPObserveRecoveryLeave)
	if len(enter) == 0 {
		t.Fatalf("left recovery without entering it:\n%s", describeAll(obs))
	}
	e, l := &enter[0].Sender, &leave[0].Sender
	t.Logf("%s\n%s", describe(&enter[0]), describe(&leave[0]))
	if !e.FastRecovery.Active || e.SndCwnd != e.Ssthresh+3 || e.FastRecovery.First != e.SndUna {
		t.Errorf("recovery entered: active=%v cwnd %d ssthresh %d first %d snd.una %d: want active, cwnd = ssthresh+3, recovering from snd.una",
			e.FastRecovery.Active, e.SndCwnd, e.Ssthresh, e.FastRecovery.First, e.SndUna)
	}
	if l.FastRecovery.Active || l.SndCwnd != l.Ssthresh {
		t.Errorf("recovery left: active=%v cwnd %d ssthresh %d: want inactive, cwnd = ssthresh", l.FastRecovery.Active, l.SndCwnd, l.Ssthresh)
	}
	if n := len(ofKind(obs, tcp.TCPObserveRTO)); n != 0 {
		t.Errorf("%d RTO events: the loss was meant for fast recovery", n)
	}
}

// TestObserveTailLossProbe: with gVisor's default recovery (RACK and tail
// loss probes), a lone data segment that is lost is sent again by the probe
// timer, before the retransmission timer would fire; the hook reports the
// probe.
func TestObserveTailLossProbe(t *testing.T) {
	leakcheck.Check(t)
	r, err := fault.Parse("out data drop count=1")
	if err != nil {
		t.Fatal(err)
	}
	srv, cli, _, cliLog := observedPair(t, plainLink, netstack.Options{},
		netstack.Options{Fault: fault.Options{Rules: []*fault.Rule{r}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn := echo(ctx, t, srv, cli, app.ServerOptions{})
	const msg = "lost once\n"
	if _, err := conn.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(conn, make([]byte, len(msg))); err != nil {
		t.Fatalf("reply: %v", err)
	}
	obs := ofConn(cliLog.wait(t, time.Second, "client tail loss probe", func(obs []tcp.TCPObservation) bool {
		return len(ofKind(ofConn(obs), tcp.TCPObserveTailLossProbe)) > 0
	}))
	tlp := ofKind(obs, tcp.TCPObserveTailLossProbe)[0]
	t.Logf("%s", describe(&tlp))
	if !tlp.Connected || tlp.Sender.SndUna == tlp.Sender.SndNxt {
		t.Errorf("tail loss probe: connected=%v snd.una %d snd.nxt %d, want the lost data outstanding", tlp.Connected, tlp.Sender.SndUna, tlp.Sender.SndNxt)
	}
	if n := len(ofKind(obs, tcp.TCPObserveRTO)); n != 0 {
		t.Errorf("%d RTO events: the probe should have repaired the loss first", n)
	}
}
