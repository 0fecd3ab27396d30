package tests

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/lab"
	"github.com/tcp-upper/tcp-upper/netstack/control"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
)

// seedSession runs the seed's exchange from ant with the kernel's TCP and
// closes first, as the seed's client does.
func seedSession(t *testing.T, l *lab.Lab) {
	t.Helper()
	c := dialAnt(t, l, serverAddr)
	var out strings.Builder
	if err := app.Session(c, app.NewPipeLines(strings.NewReader("abc\nhello world!\nfasionchan.com\n")), &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != "ABC\nHELLO WORLD!\nFASIONCHAN.COM\n" {
		t.Fatalf("replies %q", out.String())
	}
}

// traceLines keeps the tcpdump-style lines of a server's stderr.
func traceLines(stderr string) []string {
	var lines []string
	for _, l := range strings.Split(stderr, "\n") {
		if regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d{6} IP`).MatchString(l) {
			lines = append(lines, l)
		}
	}
	return lines
}

// TestTraceAndPcapAfterSIGTERM: the server traces and captures the seed's
// session; after SIGTERM the pcap is complete and valid for tcpdump and
// tshark, and tcpdump's reading of it equals our --trace line for line.
func TestTraceAndPcapAfterSIGTERM(t *testing.T) {
	requireTool(t, "tcpdump")
	requireTool(t, "tshark")
	l := newLab(t)
	pcapPath := filepath.Join(t.TempDir(), "server.pcap")
	srv := startServer(t, l, "--trace", "--pcap", pcapPath, "--control", "none")
	seedSession(t, l)
	// The server closed its side; SIGTERM's drain waits for the last ACK.
	if !srv.stdout.waitFor("disconnected", 5*time.Second) {
		t.Fatalf("no disconnect: %q", srv.stdout.String())
	}
	if code := srv.stop(t, syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Fatalf("exit %d: %s", code, srv.stderr.String())
	}

	ours := traceLines(srv.stderr.String())
	out, err := exec.Command("tcpdump", "-nr", pcapPath).Output()
	if err != nil {
		t.Fatalf("tcpdump -r: %v", err)
	}
	theirs := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(ours) < 10 || len(ours) != len(theirs) {
		t.Fatalf("--trace printed %d lines, tcpdump -r %d:\n%s\n---\n%s", len(ours), len(theirs), strings.Join(ours, "\n"), out)
	}
	for i := range ours {
		if ours[i] != theirs[i] {
			t.Errorf("line %d:\n ours    %s\n tcpdump %s", i+1, ours[i], theirs[i])
		}
	}
	joined := strings.Join(theirs, "\n")
	for _, want := range []string{"Flags [S],", "Flags [S.],", "Flags [P.], seq 1:5, ack 1,", "Flags [F.]", "length 13"} {
		if !strings.Contains(joined, want) {
			t.Errorf("tcpdump shows no %q", want)
		}
	}

	ts, err := exec.Command("tshark", "-r", pcapPath, "-T", "fields", "-e", "tcp.flags.str", "-e", "tcp.len", "-e", "tcp.stream").Output()
	if err != nil {
		t.Fatalf("tshark -r: %v", err)
	}
	var syn, fin, data int
	for _, row := range strings.Split(strings.TrimSpace(string(ts)), "\n") {
		f := strings.Split(row, "\t")
		if len(f) < 2 {
			continue
		}
		if strings.Contains(f[0], "S") {
			syn++
		}
		if strings.Contains(f[0], "F") {
			fin++
		}
		if f[1] != "0" {
			data++
		}
	}
	if syn != 2 || fin != 2 || data != 6 {
		t.Fatalf("tshark: %d SYN, %d FIN, %d data segments; want 2, 2, 6:\n%s", syn, fin, data, ts)
	}
}

// jsonEvents parses --events-format json lines from a server's stderr.
func jsonEvents(t *testing.T, stderr string) []inspect.Event {
	t.Helper()
	var evs []inspect.Event
	for _, l := range strings.Split(stderr, "\n") {
		if !strings.HasPrefix(l, "{") {
			continue
		}
		var ev inspect.Event
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("event %q: %v", l, err)
		}
		evs = append(evs, ev)
	}
	return evs
}

func transitions(evs []inspect.Event) string {
	var s []string
	for _, ev := range evs {
		if ev.Kind == inspect.KindState {
			s = append(s, ev.From.String()+">"+ev.To.String())
		}
	}
	return strings.Join(s, " ")
}

// ssRows runs tcp-upper-lab ss with args and returns its output.
func labSS(t *testing.T, ctl string, args ...string) string {
	t.Helper()
	code, out, errOut := runCmd(t, 10*time.Second, nil, bin("tcp-upper-lab"), append([]string{"ss", "--control", ctl}, args...)...)
	if code != 0 {
		t.Fatalf("tcp-upper-lab ss: exit %d: %s", code, errOut)
	}
	return out
}

var timewaitRE = regexp.MustCompile(`(?m)^TIME-WAIT +0 +0 +10\.0\.2\.2:9999 +10\.0\.1\.2:\d+ timer:\(timewait,(\d+)sec\)$`)

// TestIdleCloseTimeWait: with --idle-close the server closes first; its
// events go ESTABLISHED → FIN-WAIT-1 → FIN-WAIT-2 → TIME-WAIT, the TIME-WAIT
// is held for --time-wait and then CLOSED; ss shows the TIME-WAIT with a
// decreasing time left, and nothing after it ends.
func TestIdleCloseTimeWait(t *testing.T) {
	l := newLab(t)
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	srv := startServer(t, l, "--events", "--events-format", "json", "--idle-close", "500ms", "--time-wait", "4s", "--control", ctl)
	// A kernel client, idle after its first line.
	c := dialAnt(t, l, serverAddr)
	c.Write([]byte("abc\n"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ABC\n" {
		t.Fatalf("reply %q %v", buf, err)
	}
	// The server closes after 500ms idle; we close once our ACK of its
	// FIN has taken it to FIN-WAIT-2, so the states do not depend on the
	// kernel's delayed ACK.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("after idle: %d bytes, %v; want EOF", n, err)
	}
	if !srv.stderr.waitFor(`"to":"FIN-WAIT-2"`, 5*time.Second) {
		t.Fatalf("no FIN-WAIT-2: %s", srv.stderr.String())
	}
	c.Close()

	var left []int
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) && len(left) < 2 {
		if m := timewaitRE.FindStringSubmatch(labSS(t, ctl, "-tan")); m != nil {
			n, _ := strconv.Atoi(m[1])
			if len(left) == 0 || n < left[len(left)-1] {
				left = append(left, n)
			}
		}
		time.Sleep(300 * time.Millisecond)
	}
	if len(left) < 2 || left[0] > 4 || left[1] >= left[0] {
		t.Fatalf("TIME-WAIT time left %v: want decreasing from at most 4s", left)
	}
	// ss without -a hides TIME-WAIT, as ss does.
	if out := labSS(t, ctl, "-tn"); strings.Contains(out, "TIME-WAIT") {
		t.Errorf("ss -tn shows TIME-WAIT:\n%s", out)
	}
	if !srv.stderr.waitFor(`"to":"CLOSED"`, 6*time.Second) {
		t.Fatalf("no CLOSED event: %s", srv.stderr.String())
	}
	if out := labSS(t, ctl, "-tan"); strings.Contains(out, "TIME-WAIT") || !strings.Contains(out, "LISTEN") {
		t.Fatalf("after TIME-WAIT ended:\n%s", out)
	}

	evs := jsonEvents(t, srv.stderr.String())
	want := "LISTEN>SYN-RCVD SYN-RCVD>ESTABLISHED ESTABLISHED>FIN-WAIT-1 FIN-WAIT-1>FIN-WAIT-2 FIN-WAIT-2>TIME-WAIT TIME-WAIT>CLOSED"
	if got := transitions(evs); got != want {
		t.Fatalf("transitions\n got %s\nwant %s", got, want)
	}
	last := evs[len(evs)-1]
	if last.Held < 3500*time.Millisecond || last.Held > 5*time.Second {
		t.Fatalf("TIME-WAIT held %v, want about 4s", last.Held)
	}
	for _, ev := range evs {
		if ev.To == inspect.Established && (ev.N.SndUna != 1 || ev.N.SndNxt != 1 || ev.N.RcvNxt != 1 || ev.N.Cwnd == 0) {
			t.Errorf("ESTABLISHED numbers %+v: want snd.una=snd.nxt=rcv.nxt=1 and a cwnd", ev.N)
		}
		// gVisor enters FIN-WAIT-1 when it queues our FIN, and sends
		// it right after: at that instant snd.nxt does not count it.
		if ev.To == inspect.FinWait1 && (ev.N.SndNxt != 5 || ev.N.SndUna != 5) {
			t.Errorf("FIN-WAIT-1 numbers %+v: want snd.una=snd.nxt=5 (4 data bytes acked, our FIN not yet sent)", ev.N)
		}
		if ev.To == inspect.FinWait2 && (ev.N.SndNxt != 6 || ev.N.SndUna != 5) {
			t.Errorf("FIN-WAIT-2 numbers %+v: want snd.nxt=6 (our FIN sent) and snd.una=5 (gVisor changes state before its sender takes the ACK)", ev.N)
		}
		// Through FIN-WAIT-2 the sender took the ACK of our FIN with an
		// earlier segment; straight from FIN-WAIT-1 it has not yet.
		if wantUna := map[inspect.State]uint32{inspect.FinWait2: 6, inspect.FinWait1: 5}[ev.From]; ev.To == inspect.TimeWait && (ev.N.RcvNxt != 6 || ev.N.SndNxt != 6 || ev.N.SndUna != wantUna) {
			t.Errorf("%s -> TIME-WAIT numbers %+v: want rcv.nxt=6 (their FIN), snd.nxt=6 and snd.una=%d", ev.From, ev.N, wantUna)
		}
	}
}

// TestSSQueues: a client that sends but does not read fills the server's
// send queue and then, because the server stops reading while its writes
// block, its receive queue: ss shows both, and they drain when the client
// reads.
func TestSSQueues(t *testing.T) {
	l := newLab(t)
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	startServer(t, l, "--control", ctl)
	// A small receive buffer, set before connecting as the kernel wants
	// (it fixes the window scale in the SYN).
	var c net.Conn
	err := l.Do(lab.Ant, func() error {
		d := net.Dialer{Timeout: 5 * time.Second, Control: func(network, address string, rc syscall.RawConn) error {
			var serr error
			rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 8<<10) })
			return serr
		}}
		var err error
		c, err = d.Dial("tcp4", serverAddr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const total = 8 << 20
	go func() {
		chunk := make([]byte, 64<<10)
		for i := 0; i < total/len(chunk); i++ {
			c.SetWriteDeadline(time.Now().Add(20 * time.Second))
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}()
	estab := regexp.MustCompile(`(?m)^ESTAB +(\d+) +(\d+) +10\.0\.2\.2:9999 +10\.0\.1\.2:\d+$`)
	var recvQ, sendQ int
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := estab.FindStringSubmatch(labSS(t, ctl, "-tn")); m != nil {
			recvQ, _ = strconv.Atoi(m[1])
			sendQ, _ = strconv.Atoi(m[2])
			if recvQ > 0 && sendQ > 0 {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if recvQ == 0 || sendQ == 0 {
		t.Fatalf("ESTAB Recv-Q %d Send-Q %d: want both > 0 with a client that does not read", recvQ, sendQ)
	}
	// The kernel's ss on the client's side agrees that data waits there.
	out := runIn(t, l, lab.Ant, "ss", "-tn", "dst", serverAddr)
	if !regexp.MustCompile(`ESTAB +[1-9]\d* +[1-9]\d*`).MatchString(out) {
		t.Errorf("kernel ss in ant: %s", out)
	}
	// -i shows the detail line.
	if info := labSS(t, ctl, "-tni"); !regexp.MustCompile(`\n\t .*rto:\d+ rtt:[\d.]+/[\d.]+ mss:\d+ cwnd:\d+.* bytes_received:\d+`).MatchString(info) {
		t.Errorf("ss -i:\n%s", info)
	}

	// Read everything back: the queues drain.
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, err := io.CopyN(io.Discard, c, total); err != nil {
		t.Fatalf("read back %d: %v", n, err)
	}
	// The server's last reply may still wait for the client's ACK.
	var m []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if m = estab.FindStringSubmatch(labSS(t, ctl, "-tn")); m != nil && m[1] == "0" && m[2] == "0" {
			break
		}
	}
	if m == nil || m[1] != "0" || m[2] != "0" {
		t.Fatalf("after draining: %v", m)
	}
}

// TestControlSocketRefusesOthers: the socket is owner-only by its file
// mode; with the mode opened up, the server still refuses another uid
// (SO_PEERCRED). And the stats and trace commands work for the owner.
func TestControlSocketRefusesOthers(t *testing.T) {
	l := newLab(t)
	// A directory others may search, so that only the socket's own mode
	// (and then the server) keeps them out.
	dir, err := os.MkdirTemp("", "tcp-upper-ctl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	ctl := filepath.Join(dir, "ctl.sock")
	startServer(t, l, "--control", ctl)
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}

	code, _, errOut := runCmd(t, 10*time.Second, nobody, bin("tcp-upper-lab"), "ss", "--control", ctl)
	if fi, err := os.Stat(ctl); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket mode: %v %v", fi.Mode(), err)
	}
	if code != 1 {
		t.Fatalf("nobody: exit %d", code)
	}
	oneLine(t, "file mode", errOut, "tcp-upper-lab ss", "permission denied: it is owner-only")

	if err := os.Chmod(ctl, 0o666); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = runCmd(t, 10*time.Second, nobody, bin("tcp-upper-lab"), "ss", "--control", ctl)
	if code != 1 {
		t.Fatalf("nobody with 0666: exit %d", code)
	}
	oneLine(t, "peercred", errOut, "tcp-upper-lab ss", "permission denied: uid 65534 is not the server's owner (uid 0)")

	// Garbage from the owner: an error line, and the connection still works.
	conn, err := net.Dial("unix", ctl)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("GET / HTTP/1.0\r\n{\"cmd\":\"stats\"}\n"))
	r := bufio.NewReader(conn)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i, want := range []string{`"error":"bad request`, `"counters":[`} {
		line, err := r.ReadString('\n')
		if err != nil || !strings.Contains(line, want) {
			t.Fatalf("response %d %q %v: want %s", i, line, err, want)
		}
	}

	code, out, errOut := runCmd(t, 10*time.Second, nil, bin("tcp-upper-lab"), "stats", "--json", "--control", ctl)
	var counters map[string]uint64
	if code != 0 || json.Unmarshal([]byte(out), &counters) != nil || counters["tcp.passive_opens"] != 0 {
		t.Fatalf("stats --json: exit %d %q %s", code, out, errOut)
	}
}

// TestLabEvents: tcp-upper-lab events attaches to a running server and
// streams its events; when the server exits it says so and exits 0.
func TestLabEvents(t *testing.T) {
	l := newLab(t)
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	srv := startServer(t, l, "--control", ctl)
	tr := startIn(t, nil, "", bin("tcp-upper-lab"), "events", "--control", ctl)
	if !tr.stderr.waitFor("attached to tcp-upper-server", 5*time.Second) {
		t.Fatalf("events did not attach: %s", tr.stderr.String())
	}
	seedSession(t, l)
	if !tr.stdout.waitFor("LAST-ACK -> CLOSED (our FIN was acknowledged)", 5*time.Second) {
		t.Fatalf("events output:\n%s", tr.stdout.String())
	}
	for _, want := range []string{"LISTEN -> SYN-RCVD (received SYN, peer ISN ", "SYN-RCVD -> ESTABLISHED", "ESTABLISHED -> CLOSE-WAIT", "CLOSE-WAIT -> LAST-ACK"} {
		if !strings.Contains(tr.stdout.String(), want) {
			t.Errorf("events lacks %q", want)
		}
	}
	srv.stop(t, syscall.SIGTERM, 10*time.Second)
	if code := tr.wait(t, 5*time.Second); code != 0 || !strings.Contains(tr.stderr.String(), "the server exited") {
		t.Fatalf("events after server exit: %d %s", code, tr.stderr.String())
	}
	if _, err := os.Stat(ctl); !os.IsNotExist(err) {
		t.Fatalf("control socket left behind: %v", err)
	}
}

// TestDefaultControlPath: without --control the socket is named after the
// namespace and the TUN, and tcp-upper-lab finds the only running server.
func TestDefaultControlPath(t *testing.T) {
	l := newLab(t)
	srv := startIn(t, l, lab.Apple, bin("tcp-upper-server"), "--tun", "tun0", "--addr", lab.ServerAddr.String())
	if !srv.stdout.waitFor("waiting for connections", 10*time.Second) {
		t.Fatalf("server did not start: %s", srv.stderr.String())
	}
	// A clean exit removes the socket (SIGKILL at cleanup would leave it).
	defer srv.stop(t, syscall.SIGTERM, 10*time.Second)
	want := filepath.Join(control.Dir, l.NetNS(lab.Apple)+"-tun0.sock")
	if _, err := os.Stat(want); err != nil {
		t.Fatalf("default control socket: %v", err)
	}
	if out := labSS(t, want, "-l"); !strings.Contains(out, "LISTEN") {
		t.Fatalf("ss -l:\n%s", out)
	}
}

// TestClientActiveCloseTimeWait: the client on its own stack closes first
// (Ctrl-D / end of input), so FIN-WAIT-1, FIN-WAIT-2 and TIME-WAIT happen in
// a stack we observe; with --linger it stays until TIME-WAIT ends.
func TestClientActiveCloseTimeWait(t *testing.T) {
	l := newLab(t)
	startServer(t, l)
	start := time.Now()
	code, stdout, stderr := clientIn(t, l, "abc\n", "--stack", "netstack", "-i", "10.0.2.2",
		"--events", "--time-wait", "2s", "--linger", "--control", "none")
	if code != 0 || stdout != "ABC\n" {
		t.Fatalf("exit %d stdout %q stderr %q", code, stdout, stderr)
	}
	if d := time.Since(start); d < 2*time.Second {
		t.Errorf("client exited after %v: --linger should hold it through 2s of TIME-WAIT", d)
	}
	var got []string
	for _, line := range strings.Split(stderr, "\n") {
		if m := regexp.MustCompile(` 10\.0\.2\.2:9999 ([A-Z0-9-]+ -> [A-Z0-9-]+) `).FindStringSubmatch(line); m != nil {
			got = append(got, m[1])
		}
	}
	want := "CLOSED -> SYN-SENT,SYN-SENT -> ESTABLISHED,ESTABLISHED -> FIN-WAIT-1,FIN-WAIT-1 -> FIN-WAIT-2,FIN-WAIT-2 -> TIME-WAIT,TIME-WAIT -> CLOSED"
	// The server may ACK our FIN and send its own in one segment.
	alt := "CLOSED -> SYN-SENT,SYN-SENT -> ESTABLISHED,ESTABLISHED -> FIN-WAIT-1,FIN-WAIT-1 -> TIME-WAIT,TIME-WAIT -> CLOSED"
	if g := strings.Join(got, ","); g != want && g != alt {
		t.Fatalf("client transitions\n got %s\nwant %s\nstderr:\n%s", strings.Join(got, ","), want, stderr)
	}
	if !strings.Contains(stderr, "after 2.0s in TIME-WAIT") {
		t.Errorf("TIME-WAIT not held 2s:\n%s", stderr)
	}
}

// TestEventsCausalOrder: with --events and --trace, stdout and stderr on
// one pipe (as in a terminal), the server prints a connection's
// "connected" after its LISTEN -> SYN-RCVD and handshake, and
// "disconnected" after the client's FIN and the ESTABLISHED -> CLOSE-WAIT
// it caused (issue 14, item 6).
func TestEventsCausalOrder(t *testing.T) {
	l := newLab(t)
	out := &watch{}
	cmd := exec.Command(bin("tcp-upper-server"), "--tun", "tun0", "--addr", lab.ServerAddr.String(),
		"--events", "--trace", "--control", filepath.Join(t.TempDir(), "ctl.sock"))
	cmd.Stdout, cmd.Stderr = out, out // one pipe: the order in which the server wrote
	if err := l.Start(lab.Apple, cmd); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	if !out.waitFor("waiting for connections...", 10*time.Second) {
		t.Fatalf("server did not start: %q", out.String())
	}
	for i := 0; i < 3; i++ {
		c := dialAnt(t, l, serverAddr)
		local := c.LocalAddr().String()
		if err := app.Session(c, app.NewPipeLines(strings.NewReader("abc\n")), io.Discard); err != nil {
			t.Fatal(err)
		}
		if !out.waitFor(local+" disconnected", 5*time.Second) {
			t.Fatalf("no disconnect: %s", out.String())
		}
		text := out.String()
		at := func(s string) int {
			i := strings.Index(text, s)
			if i < 0 {
				t.Fatalf("%q not printed:\n%s", s, text)
			}
			return i
		}
		fin := at("IP " + strings.Replace(local, ":", ".", 1) + " > 10.0.2.2.9999: Flags [F.]")
		if at(local+" LISTEN -> SYN-RCVD") > at(local+" connected") || at(local+" SYN-RCVD -> ESTABLISHED") > at(local+" connected") {
			t.Fatalf("%s connected printed before its handshake's events:\n%s", local, text)
		}
		if fin > at(local+" disconnected") || at(local+" ESTABLISHED -> CLOSE-WAIT") > at(local+" disconnected") {
			t.Fatalf("%s disconnected printed before the FIN that caused it:\n%s", local, text)
		}
	}
}
