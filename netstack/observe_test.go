package netstack_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/internal/leakcheck"
	"github.com/tcp-upper/tcp-upper/internal/testenv"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
	"github.com/tcp-upper/tcp-upper/netstack/pcap"
	"github.com/tcp-upper/tcp-upper/netstack/trace"
)

// observed is a server stack with tracing, a pcap and the tracker, and a
// client stack with the tracker, joined in memory.
type observed struct {
	srv, cli       *netstack.Stack
	traceOut       *syncBuffer
	pcapPath       string
	srvEvs, cliEvs *inspect.Subscription
	server         *app.Server
}

func newObserved(t *testing.T, l link, hex bool, serverOpts app.ServerOptions) *observed {
	t.Helper()
	o := &observed{traceOut: &syncBuffer{}, pcapPath: filepath.Join(t.TempDir(), "capture.pcap")}
	pw, err := pcap.Create(o.pcapPath, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pw.Close() })
	o.srv, o.cli = pair(t, l, netstack.Options{
		Inspect: true, TimeWait: time.Second,
		Trace: trace.Options{Out: o.traceOut, Pcap: pw, HexDump: hex},
	}, netstack.Options{Inspect: true, TimeWait: time.Second})
	o.srvEvs = o.srv.Tracker().Subscribe(1000)
	o.cliEvs = o.cli.Tracker().Subscribe(1000)
	ln, err := o.srv.Listen(9999)
	if err != nil {
		t.Fatal(err)
	}
	o.server = app.NewServer(ln, serverOpts, nil)
	go o.server.Serve()
	t.Cleanup(func() { o.server.Shutdown(context.Background()) })
	return o
}

func (o *observed) dial(t *testing.T) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := o.cli.Dial(ctx, netip.MustParseAddrPort("10.0.2.2:9999"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// seedSession runs the seed's three lines, then the client closes.
func (o *observed) seedSession(t *testing.T) {
	t.Helper()
	c := o.dial(t)
	if err := app.Session(c, app.NewPipeLines(strings.NewReader("abc\nhello world!\nfasionchan.com\n")), io.Discard); err != nil {
		t.Fatal(err)
	}
}

// states collects the state events of sub for peer until want has been
// seen or the timeout passes.
func states(t *testing.T, sub *inspect.Subscription, want int, timeout time.Duration) []inspect.Event {
	t.Helper()
	var evs []inspect.Event
	deadline := time.After(timeout)
	for len(evs) < want {
		select {
		case ev := <-sub.C():
			if ev.Kind == inspect.KindState {
				evs = append(evs, ev)
			}
		case <-deadline:
			return evs
		}
	}
	return evs
}

// statesToClosed is states until the connection's event into CLOSED: the
// active closer has five or six, with or without FIN-WAIT-2 (see
// activeClose).
func statesToClosed(t *testing.T, sub *inspect.Subscription, timeout time.Duration) []inspect.Event {
	t.Helper()
	var evs []inspect.Event
	deadline := time.After(timeout)
	for len(evs) == 0 || evs[len(evs)-1].To != inspect.Closed {
		select {
		case ev := <-sub.C():
			if ev.Kind == inspect.KindState {
				evs = append(evs, ev)
			}
		case <-deadline:
			return evs
		}
	}
	return evs
}

// activeClose reports whether got (transitions) is the active close that
// starts with head: FIN-WAIT-1 straight to TIME-WAIT when the peer's FIN
// carries its ACK of ours (our stack's peer delays that ACK, as Linux,
// patch 0014), or through FIN-WAIT-2 when its application took longer than
// the delayed ACK timer to close.
func activeClose(got, head string) bool {
	return got == head+" -> FIN-WAIT-1 -> TIME-WAIT -> CLOSED" || got == head+" -> FIN-WAIT-1 -> FIN-WAIT-2 -> TIME-WAIT -> CLOSED"
}

func transitions(evs []inspect.Event) string {
	var s []string
	for i, ev := range evs {
		if i == 0 {
			s = append(s, ev.From.String())
		}
		s = append(s, ev.To.String())
	}
	return strings.Join(s, " -> ")
}

// TestTraceMatchesTcpdump: for a whole session (the seed's lines, then 200
// KB of binary data both ways, then the close), every --trace line equals,
// field by field and to the microsecond, what tcpdump prints from our pcap;
// the same with -X.
func TestTraceMatchesTcpdump(t *testing.T) {
	testenv.RequireTool(t, "tcpdump")
	forLinks(t, testTraceMatchesTcpdump)
}

func testTraceMatchesTcpdump(t *testing.T, l link) {
	for _, hex := range []bool{false, true} {
		o := newObserved(t, l, hex, app.ServerOptions{})
		o.seedSession(t)
		c := o.dial(t)
		data := make([]byte, 200<<10)
		rand.Read(data)
		go c.Write(data)
		if _, err := io.ReadFull(c, make([]byte, len(data))); err != nil {
			t.Fatal(err)
		}
		c.Close()
		states(t, o.srvEvs, 10, 5*time.Second) // both connections closed
		o.srv.Trace().Flush()

		args := []string{"-n", "-r", o.pcapPath}
		if hex {
			args = []string{"-n", "-X", "-r", o.pcapPath}
		}
		out, err := exec.Command("tcpdump", args...).Output()
		if err != nil {
			t.Fatalf("tcpdump %v: %v", args, err)
		}
		want := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
		got := strings.Split(strings.TrimRight(o.traceOut.String(), "\n"), "\n")
		if min := map[string]int{"plain": 100, "offload": 40}[l.name]; len(want) < min {
			t.Fatalf("only %d lines from tcpdump, want %d or more", len(want), min)
		}
		if l.name == offloadLink.name && !regexp.MustCompile(`length ([2-9]\d{3}|\d{5})\b`).MatchString(string(out)) {
			t.Fatalf("with offloads no segment longer than the MSS was captured:\n%s", out)
		}
		for i := 0; i < max(len(got), len(want)); i++ {
			var g, w string
			if i < len(got) {
				g = got[i]
			}
			if i < len(want) {
				w = want[i]
			}
			if g != w {
				t.Fatalf("hex=%v line %d differs:\n ours:    %q\n tcpdump: %q", hex, i+1, g, w)
			}
		}
		t.Logf("hex=%v: %d lines identical", hex, len(got))
	}
}

// TestPcapTshark: tshark reads our capture and sees the handshake, data
// and the close.
func TestPcapTshark(t *testing.T) {
	testenv.RequireTool(t, "tshark")
	forLinks(t, testPcapTshark)
}

func testPcapTshark(t *testing.T, l link) {
	o := newObserved(t, l, false, app.ServerOptions{})
	o.seedSession(t)
	states(t, o.srvEvs, 5, 5*time.Second)
	o.srv.Trace().Flush()
	out, err := exec.Command("tshark", "-n", "-r", o.pcapPath, "-T", "fields", "-e", "tcp.flags.str", "-e", "tcp.len").CombinedOutput()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, out)
	}
	s := string(out)
	for _, want := range []string{"··········S·\t0", "·······A··S·\t0", "·······A····\t0", "·······AP···\t4", "·······AP···\t13", "·······AP···\t15", "·······A···F\t0"} {
		if !strings.Contains(s, want) {
			t.Errorf("tshark fields lack %q:\n%s", want, s)
		}
	}
}

// TestEventsPeerClosesFirst is the seed's close order, seen from both
// stacks: the client (active close) ends in TIME-WAIT for the configured
// 2MSL, the server goes CLOSE-WAIT, LAST-ACK, CLOSED.
func TestEventsPeerClosesFirst(t *testing.T) { forLinks(t, testEventsPeerClosesFirst) }

func testEventsPeerClosesFirst(t *testing.T, l link) {
	leakcheck.Check(t)
	o := newObserved(t, l, false, app.ServerOptions{})
	o.seedSession(t)
	srv := states(t, o.srvEvs, 5, 5*time.Second)
	if got, want := transitions(srv), "LISTEN -> SYN-RCVD -> ESTABLISHED -> CLOSE-WAIT -> LAST-ACK -> CLOSED"; got != want {
		t.Fatalf("server: %s\nwant %s", got, want)
	}
	cli := statesToClosed(t, o.cliEvs, 5*time.Second)
	if got, head := transitions(cli), "CLOSED -> SYN-SENT -> ESTABLISHED"; !activeClose(got, head) {
		t.Fatalf("client: %s\nwant %s -> FIN-WAIT-1 -> [FIN-WAIT-2 ->] TIME-WAIT -> CLOSED", got, head)
	}
	checkEvents(t, srv, cli)
	tw := cli[len(cli)-1]
	if tw.Held < 900*time.Millisecond || tw.Held > 1500*time.Millisecond {
		t.Errorf("TIME-WAIT lasted %v, want about the configured 1s", tw.Held)
	}
	if !strings.Contains(tw.Text(), "after 1.0s in TIME-WAIT") {
		t.Errorf("TIME-WAIT end: %s", tw.Text())
	}
}

// TestEventsWeCloseFirst: the server closes an idle connection, so our
// stack makes the active close and holds TIME-WAIT.
func TestEventsWeCloseFirst(t *testing.T) { forLinks(t, testEventsWeCloseFirst) }

func testEventsWeCloseFirst(t *testing.T, l link) {
	leakcheck.Check(t)
	o := newObserved(t, l, false, app.ServerOptions{IdleClose: 200 * time.Millisecond})
	c := o.dial(t)
	c.Write([]byte("abc\n"))
	io.ReadFull(c, make([]byte, 4))
	// The server closes after 200ms idle; the client answers with its FIN.
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("client read: %v, want EOF from the server's FIN", err)
	}
	c.Close()
	srv := statesToClosed(t, o.srvEvs, 5*time.Second)
	if got, head := transitions(srv), "LISTEN -> SYN-RCVD -> ESTABLISHED"; !activeClose(got, head) {
		t.Fatalf("server: %s\nwant %s -> FIN-WAIT-1 -> [FIN-WAIT-2 ->] TIME-WAIT -> CLOSED", got, head)
	}
	cli := states(t, o.cliEvs, 5, 5*time.Second)
	if got, want := transitions(cli), "CLOSED -> SYN-SENT -> ESTABLISHED -> CLOSE-WAIT -> LAST-ACK -> CLOSED"; got != want {
		t.Fatalf("client: %s\nwant %s", got, want)
	}
	checkEvents(t, srv, cli)
	if tw := srv[len(srv)-1]; tw.Held < 900*time.Millisecond || tw.Held > 1500*time.Millisecond {
		t.Errorf("TIME-WAIT lasted %v, want about 1s", tw.Held)
	}
}

// checkEvents checks what both sides' events must agree on.
func checkEvents(t *testing.T, srv, cli []inspect.Event) {
	t.Helper()
	for _, evs := range [][]inspect.Event{srv, cli} {
		for i, ev := range evs {
			if ev.Cause == "" {
				t.Errorf("no cause: %s", ev.Text())
			}
			if i > 0 && ev.From != evs[i-1].To {
				t.Errorf("event %d starts in %s, previous ended in %s", i, ev.From, evs[i-1].To)
			}
			if ev.Time.Before(evs[max(i-1, 0)].Time) {
				t.Errorf("events out of order: %s", ev.Text())
			}
		}
	}
	// The ISNs each side reports match the other's.
	sEst, cEst := find(srv, inspect.Established), find(cli, inspect.Established)
	if sEst == nil || cEst == nil {
		t.Fatal("no ESTABLISHED event")
	}
	if sEst.ISS != cEst.IRS || sEst.IRS != cEst.ISS || sEst.ISS == 0 {
		t.Errorf("ISNs: server iss %d irs %d, client iss %d irs %d", sEst.ISS, sEst.IRS, cEst.ISS, cEst.IRS)
	}
	if sEst.N.SndNxt != 1 || sEst.N.RcvNxt != 1 {
		t.Errorf("server at ESTABLISHED: %s", sEst.Text())
	}
}

func find(evs []inspect.Event, to inspect.State) *inspect.Event {
	for i := range evs {
		if evs[i].To == to {
			return &evs[i]
		}
	}
	return nil
}

// TestSockets: the socket table shows the listener, an established
// connection with its queues (the server has not read what arrived), and a
// TIME-WAIT entry whose time left goes down and which then disappears.
func TestSockets(t *testing.T) {
	leakcheck.Check(t)
	srv, cli := pair(t, plainLink, netstack.Options{Inspect: true, TimeWait: 2 * time.Second, Backlog: 16}, netstack.Options{})
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
	}()
	c, err := cli.Dial(context.Background(), netip.MustParseAddrPort("10.0.2.2:9999"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc := <-accepted
	c.Write(bytes.Repeat([]byte("x"), 1000)) // unread by the server
	sc.Write(bytes.Repeat([]byte("y"), 300)) // unread by the client
	var est *inspect.Socket
	waitUntil(t, func() bool {
		for _, so := range srv.Tracker().Sockets() {
			if so.State == inspect.Established && so.RecvQ == 1000 && so.Info.BytesReceived == 1000 {
				est = &so
				return true
			}
		}
		return false
	})
	socks := srv.Tracker().Sockets()
	if socks[0].State != inspect.Listen || socks[0].Local.Port() != 9999 || socks[0].SendQ != 16 {
		t.Errorf("first row %+v, want the listener on 9999 with backlog 16", socks[0])
	}
	if est.Remote != c.LocalAddr().(*net.TCPAddr).AddrPort() || !est.Info.Known || est.Info.BytesReceived != 1000 || est.Info.BytesSent != 300 || est.Info.RcvNxt != 1001 {
		t.Errorf("established row %+v", est)
	}

	// Both read what they were sent (closing with unread data would reset).
	io.ReadFull(sc, make([]byte, 1000))
	io.ReadFull(c, make([]byte, 300))
	sc.Close() // we close first: TIME-WAIT lands here once the client closes too
	c.Read(make([]byte, 1))
	c.Close()
	var lefts []time.Duration
	waitUntil(t, func() bool {
		for _, so := range srv.Tracker().Sockets() {
			if so.State == inspect.TimeWait {
				lefts = append(lefts, so.TimeWaitLeft)
				time.Sleep(300 * time.Millisecond)
				return len(lefts) >= 3
			}
		}
		return false
	})
	if !(lefts[0] > lefts[1] && lefts[1] > lefts[2]) || lefts[0] > 2*time.Second || lefts[2] <= 0 {
		t.Errorf("TIME-WAIT time left does not count down: %v", lefts)
	}
	waitUntil(t, func() bool {
		for _, so := range srv.Tracker().Sockets() {
			if so.State == inspect.TimeWait {
				return false
			}
		}
		return true
	})
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
