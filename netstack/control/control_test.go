package control_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/internal/leakcheck"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/netstack/control"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
	"github.com/tcp-upper/tcp-upper/tun"
)

// rig is a server stack with its control socket, and a client stack, joined
// in memory.
type rig struct {
	path     string
	srv, cli *netstack.Stack
	ctrl     *control.Server
}

func newRig(t testing.TB) *rig {
	t.Helper()
	r := &rig{path: filepath.Join(t.TempDir(), "ctl.sock")}
	a, b := tun.Pipe("srv0", "cli0", 1500)
	var err error
	r.srv, err = netstack.New(a, netstack.Options{Addr: netip.MustParsePrefix("10.0.2.2/24"), Inspect: true, TimeWait: 2 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.srv.Close)
	r.cli, err = netstack.New(b, netstack.Options{Addr: netip.MustParsePrefix("10.0.1.2/24")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.cli.Close)
	ln, err := r.srv.Listen(9999)
	if err != nil {
		t.Fatal(err)
	}
	s := app.NewServer(ln, app.ServerOptions{}, nil)
	go s.Serve()
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	r.ctrl, err = control.Listen(r.path, nil)
	if err != nil {
		t.Fatal(err)
	}
	control.ServeStack(r.ctrl, r.srv, control.Hello{Program: "test", TUN: "srv0", Addr: "10.0.2.2/24"})
	r.ctrl.Serve()
	t.Cleanup(func() { r.ctrl.Close() })
	return r
}

func (r *rig) dial(t testing.TB) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := r.cli.Dial(ctx, netip.MustParseAddrPort("10.0.2.2:9999"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestSocketFileIsOwnerOnly(t *testing.T) {
	r := newRig(t)
	fi, err := os.Stat(r.path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want a socket with 0600", fi.Mode())
	}
}

func TestSSStatsHelloEvents(t *testing.T) {
	leakcheck.Check(t)
	r := newRig(t)
	c, err := control.Dial(r.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	h, err := c.Call("hello", nil)
	if err != nil {
		t.Fatal(err)
	}
	if h.Hello.PID != os.Getpid() || h.Hello.TUN != "srv0" || h.Hello.Program != "test" {
		t.Fatalf("hello %+v", h.Hello)
	}
	for _, want := range []string{"events", "hello", "ss", "stats"} {
		if !strings.Contains(strings.Join(h.Hello.Commands, " "), want) {
			t.Errorf("hello lists %v, missing %s", h.Hello.Commands, want)
		}
	}

	// Events stream on a second connection while a session runs.
	ec, err := control.Dial(r.path)
	if err != nil {
		t.Fatal(err)
	}
	defer ec.Close()
	evs := make(chan inspect.Event, 100)
	ctx, cancel := context.WithCancel(context.Background())
	streamDone := make(chan error, 1)
	go func() {
		streamDone <- ec.Stream(ctx, "events", nil, func(r *control.Response) error {
			if r.Event != nil {
				evs <- *r.Event
			}
			return nil
		})
	}()
	// The stream's subscription starts on the server's side: wait for it.
	for deadline := time.Now().Add(5 * time.Second); r.srv.Tracker().Subscribers() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the events stream did not subscribe within 5s")
		}
		runtime.Gosched()
	}

	conn := r.dial(t)
	if _, err := conn.Write([]byte("abc\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := conn.Read(buf); err != nil || string(buf) != "ABC\n" {
		t.Fatalf("reply %q %v", buf, err)
	}

	// The client's ACK of our reply may still be on its way: ask until the
	// table shows it (or give up after 2s).
	var listen, estab bool
	var info *inspect.SocketInfo
	var resp *control.Response
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		resp, err = c.Call("ss", nil)
		if err != nil {
			t.Fatal(err)
		}
		listen, estab = false, false
		for _, s := range resp.Sockets {
			switch {
			case s.State == inspect.Listen && s.Local.Port() == 9999 && s.SendQ == 4096:
				listen = true
			case s.State == inspect.Established && s.Local == netip.MustParseAddrPort("10.0.2.2:9999") && s.Remote.Addr() == netip.MustParseAddr("10.0.1.2"):
				estab, info = true, s.Info
			}
		}
		if listen && estab && info != nil && info.BytesAcked == 4 {
			break
		}
	}
	if !listen || !estab {
		t.Fatalf("ss %+v: want LISTEN with backlog 4096 and ESTAB", resp.Sockets)
	}
	if info == nil || info.BytesReceived != 4 || info.BytesAcked != 4 || info.MSS == 0 {
		t.Errorf("ESTAB info %+v, want 4 bytes each way and an MSS", info)
	}

	st, err := c.Call("stats", nil)
	if err != nil {
		t.Fatal(err)
	}
	counters := map[string]uint64{}
	for _, c := range st.Counters {
		counters[c.Name] = c.Value
	}
	if counters["tcp.passive_opens"] != 1 || counters["tcp.segments_in"] < 3 {
		t.Fatalf("counters %v", counters)
	}

	conn.Close()
	deadline := time.After(5 * time.Second)
	var seen []string
	for !strings.Contains(strings.Join(seen, ","), "LAST-ACK>CLOSED") {
		select {
		case ev := <-evs:
			if ev.Kind == inspect.KindState {
				seen = append(seen, ev.From.String()+">"+ev.To.String())
			}
		case <-deadline:
			t.Fatalf("events %v: no LAST-ACK>CLOSED", seen)
		}
	}
	want := "LISTEN>SYN-RCVD,SYN-RCVD>ESTABLISHED,ESTABLISHED>CLOSE-WAIT,CLOSE-WAIT>LAST-ACK,LAST-ACK>CLOSED"
	if got := strings.Join(seen, ","); got != want {
		t.Fatalf("events %s, want %s", got, want)
	}
	cancel()
	if err := <-streamDone; err != nil {
		t.Fatalf("stream: %v", err)
	}
}

// raw sends lines as they are and reads one response line per request.
func raw(t *testing.T, path string) (send func(string), recv func() control.Response, close func()) {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	send = func(s string) {
		if _, err := c.Write([]byte(s)); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	recv = func() control.Response {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := r.ReadBytes('\n')
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		var resp control.Response
		if err := json.Unmarshal(line, &resp); err != nil {
			t.Fatalf("response %q: %v", line, err)
		}
		return resp
	}
	return send, recv, func() { c.Close() }
}

func TestGarbageGetsErrorsAndConnectionSurvives(t *testing.T) {
	r := newRig(t)
	send, recv, done := raw(t, r.path)
	defer done()
	for _, tc := range []struct{ in, want string }{
		{"hello garbage\n", "bad request: want one JSON object per line"},
		{"{\"cmd\":\n", "invalid JSON"},
		{"[1,2,3]\n", "bad request"},
		{"{}\n", "bad request"},
		{"{\"cmd\":\"rm -rf\"}\n", `unknown command "rm -rf": want one of events, fault, hello, ss, stats`},
		{"\x00\xff\xfe\n", "bad request"},
	} {
		send(tc.in)
		if resp := recv(); !strings.Contains(resp.Error, tc.want) {
			t.Errorf("%q: error %q, want %q", tc.in, resp.Error, tc.want)
		}
	}
	send("{\"cmd\":\"ss\"}\n")
	if resp := recv(); resp.Error != "" || len(resp.Sockets) == 0 {
		t.Fatalf("ss after garbage: %+v", resp)
	}
}

func TestLongLineIsRefused(t *testing.T) {
	r := newRig(t)
	send, recv, done := raw(t, r.path)
	defer done()
	go send(strings.Repeat("x", control.MaxLine+10) + "\n")
	if resp := recv(); !strings.Contains(resp.Error, "line longer than") {
		t.Fatalf("error %q", resp.Error)
	}
	// The server still serves others.
	c, err := control.Dial(r.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Call("stats", nil); err != nil {
		t.Fatal(err)
	}
}

func TestTooManyClients(t *testing.T) {
	r := newRig(t)
	var conns []*control.Client
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < control.MaxClients; i++ {
		c, err := control.Dial(r.path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Call("hello", nil); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	c, err := control.Dial(r.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Call("hello", nil); err == nil || !strings.Contains(err.Error(), "too many control connections") {
		t.Fatalf("17th client: %v", err)
	}
}

func TestListenReplacesStaleSocketRefusesLiveOne(t *testing.T) {
	r := newRig(t)
	if _, err := control.Listen(r.path, nil); err == nil || !strings.Contains(err.Error(), "in use by another running server") {
		t.Fatalf("second server on a live socket: %v", err)
	}
	stale := filepath.Join(t.TempDir(), "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close() // the file stays, nobody listens: a crashed server's leftover
	s, err := control.Listen(stale, nil)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	s.Close()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("socket file left after Close: %v", err)
	}
	notSock := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notSock, nil, 0o600)
	if _, err := control.Listen(notSock, nil); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file: %v", err)
	}
}

func TestDialErrorsNameTheFix(t *testing.T) {
	dir := t.TempDir()
	if _, err := control.Dial(filepath.Join(dir, "nope.sock")); err == nil || !strings.Contains(err.Error(), "is the server running?") {
		t.Fatalf("missing: %v", err)
	}
	if _, err := control.Resolve(""); err != nil && !strings.Contains(err.Error(), "--control") {
		t.Fatalf("resolve: %v", err)
	}
}

func TestFaultCommand(t *testing.T) {
	r := newRig(t)
	c, err := control.Dial(r.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	call := func(a control.FaultArgs) (control.FaultReply, error) {
		var reply control.FaultReply
		resp, err := c.Call("fault", a)
		if err != nil {
			return reply, err
		}
		return reply, json.Unmarshal(resp.Data, &reply)
	}
	rep, err := call(control.FaultArgs{Op: "add", Rule: "in data drop nth=2"})
	if err != nil || rep.ID != 1 || len(rep.Rules) != 1 {
		t.Fatalf("add: %+v %v", rep, err)
	}
	if _, err := call(control.FaultArgs{Op: "add", Rule: "in data dorp"}); err == nil || !strings.Contains(err.Error(), `token 3 "dorp"`) {
		t.Fatalf("bad rule: %v", err)
	}
	conn := r.dial(t)
	defer conn.Close()
	for _, line := range []string{"a\n", "b\n", "c\n"} {
		conn.Write([]byte(line))
		buf := make([]byte, 2)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(conn, buf); err != nil {
			t.Fatalf("reply to %q: %v", line, err)
		}
	}
	rep, err = call(control.FaultArgs{Op: "list"})
	if err != nil || rep.Rules[0].Applied != 1 || rep.Rules[0].Matched < 2 {
		t.Fatalf("list: %+v %v", rep, err)
	}
	if _, err := call(control.FaultArgs{Op: "del", ID: 7}); err == nil {
		t.Fatal("del of a missing rule succeeded")
	}
	if rep, err = call(control.FaultArgs{Op: "del", ID: 1}); err != nil || len(rep.Rules) != 0 {
		t.Fatalf("del: %+v %v", rep, err)
	}
	call(control.FaultArgs{Op: "add", Rule: "out any drop"})
	if rep, err = call(control.FaultArgs{Op: "clear"}); err != nil || len(rep.Rules) != 0 {
		t.Fatalf("clear: %+v %v", rep, err)
	}
}

// TestHugeLineBoundedMemory: a 10 MiB request line gets one error line and
// a hang-up; the server reads at most MaxLine of it (its allocations while
// the 10 MiB arrive stay far below 10 MiB) and keeps serving.
func TestHugeLineBoundedMemory(t *testing.T) {
	r := newRig(t)
	huge := bytes.Repeat([]byte("x"), 10<<20)
	huge[len(huge)-1] = '\n'
	c, err := net.Dial("unix", r.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	go c.Write(huge) // fails with EPIPE once the server hangs up
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		t.Fatalf("no answer to a 10 MiB line: %v", err)
	}
	took := time.Since(start)
	runtime.ReadMemStats(&after)
	var resp control.Response
	if json.Unmarshal(line, &resp) != nil || !strings.Contains(resp.Error, "line longer than 65536 bytes") {
		t.Fatalf("answer %q", line)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("FIGURE 10 MiB line refused in %v; %d KiB allocated meanwhile (whole process)", took.Round(time.Millisecond), alloc>>10)
	if alloc > 2<<20 {
		t.Errorf("%d KiB allocated while a 10 MiB line arrived: the server buffers it", alloc>>10)
	}
	cl, err := control.Dial(r.path)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Call("stats", nil); err != nil {
		t.Fatalf("stats after the huge line: %v", err)
	}
}

// TestErrorAnsweredAfterHalfClose: a bad request piped in and followed by
// EOF (echo ... | socat) still gets its error line. The EOF races with the
// handler, so a few rounds.
func TestErrorAnsweredAfterHalfClose(t *testing.T) {
	r := newRig(t)
	for i := 0; i < 20; i++ {
		c, err := net.Dial("unix", r.path)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte(`{"cmd":"hello"}` + "\n" + `{"cmd":"fault"}` + "\n"))
		c.(*net.UnixConn).CloseWrite()
		out, err := io.ReadAll(c)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
		if len(lines) != 2 || !strings.Contains(lines[0], `"hello":{`) || !strings.Contains(lines[1], `"error":"fault wants args`) {
			t.Fatalf("round %d: answers %q, want hello, then the fault error", i, lines)
		}
	}
}

// events with {"segments":true} streams a segment event per segment, in
// order with the states, over the socket; a plain events stream at the
// same time gets none; bad args get one error line naming the fix.
func TestEventsWithSegments(t *testing.T) {
	r := newRig(t)
	send, recv, done := raw(t, r.path)
	defer done()
	send(`{"cmd":"events","args":{"segments":"yes"}}` + "\n")
	if resp := recv(); !strings.Contains(resp.Error, `{"segments":true}`) {
		t.Fatalf("bad args: %+v", resp)
	}
	send(`{"cmd":"events","args":{"segments":true}}` + "\n")
	if resp := recv(); resp.Error != "" || resp.Event != nil {
		t.Fatalf("first line %+v, want the empty one", resp)
	}
	psend, precv, pdone := raw(t, r.path)
	defer pdone()
	psend(`{"cmd":"events"}` + "\n")
	precv()
	for r.srv.Tracker().Subscribers() < 2 {
		runtime.Gosched()
	}
	conn := r.dial(t)
	conn.Write([]byte("abc\n"))
	io.ReadFull(conn, make([]byte, 4))
	conn.Close()
	var got []string
	for !strings.HasSuffix(strings.Join(got, " "), "CLOSED") {
		resp := recv()
		if resp.Event == nil {
			continue
		}
		switch ev := resp.Event; ev.Kind {
		case inspect.KindSegment:
			got = append(got, ev.Seg.String())
		case inspect.KindState:
			got = append(got, ev.To.String())
		}
	}
	s := strings.Join(got, ", ")
	for _, want := range []string{"< S 0 win ", "SYN-RCVD, > S. 0 ack 1 win ", "< P. 1:5(4) ack 1 win ", "> P. 1:5(4) ack 5 win ", "< F. 5 ack 5 win ", "LAST-ACK, > F. 5 ack 6 win ", "< . ack 6 win "} {
		if !strings.Contains(s, want) {
			t.Errorf("stream lacks %q:\n%s", want, s)
		}
	}
	for {
		resp := precv()
		if ev := resp.Event; ev != nil && ev.Kind == inspect.KindSegment {
			t.Fatalf("the plain stream got a segment: %s", ev.Text())
		}
		if ev := resp.Event; ev != nil && ev.Kind == inspect.KindState && ev.To == inspect.Closed {
			break
		}
	}
}
