package tests

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/tcp-upper/tcp-upper/lab"
)

func runCmd(t *testing.T, timeout time.Duration, cred *syscall.Credential, name string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Dir = os.TempDir()
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s %v did not finish in %v: %s", name, args, timeout, stderr.String())
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

// TestDemo runs the README's demo command as root: the lab session with
// tcpdump and ss, then everything torn down.
func TestDemo(t *testing.T) {
	requireRoot(t)
	requireTool(t, "tcpdump")
	requireTool(t, "ss")
	name := labName("demo")
	code, out, stderr := runCmd(t, 60*time.Second, nil, bin("tcp-upper-lab"), "demo", "--name", name, "--time-wait", "2s")
	if code != 0 {
		t.Fatalf("demo exit %d: %s\n%s", code, stderr, out)
	}
	for _, want := range []string{
		"apple  | listening at port: 0.0.0.0:9999, waiting for connections...",
		"ant    | > abc", "ant    | ABC",
		"ant    | > hello world!", "ant    | HELLO WORLD!",
		"ant    | > fasionchan.com", "ant    | FASIONCHAN.COM",
		" connected", " disconnected",
		"Flags [S]", "Flags [S.]", "Flags [P.]", "Flags [F.]",
		"# handshake 1/3: the client's SYN. Its initial sequence number (ISN) is ",
		"# close 1/4: the client's FIN", "# close 1/4: our FIN, seq 8: the server closes first",
		"LISTEN -> SYN-RCVD (received SYN, peer ISN ", "LAST-ACK -> CLOSED", "ESTABLISHED -> FIN-WAIT-1 (we closed",
		"timer:(timewait,2sec)", "timer:(timewait,1sec)", "TIME-WAIT -> CLOSED (2MSL timer expired after 2.0s in TIME-WAIT)",
		"packets: field for field the lines of our stack's trace above", // tcpdump on tun0 agrees with our trace
		"10.0.2.2:9999", // the TIME-WAIT line in ant's ss
		"lab " + strconv.Quote(name) + " torn down",
		// The ladder at the end: arrows, the stack's states, TIME-WAIT's end.
		"== the ladder of the session", "|<--- S. 0 ack 1 win 29184 mss 1460 ws 7", "| SYN-RCVD", "| LAST-ACK",
		"TIME-WAIT expired (2.0s) | CLOSED",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	checkTimeWaitWay(t, out)
	if t.Failed() {
		t.Logf("demo printed:\n%s", out)
	}
	if l, _ := lab.New(name, nil); l.Exists() {
		l.Down()
		t.Fatal("demo left its namespaces behind")
	}
}

// TestDemoReaderGone: `tcp-upper-lab demo | head -3` must not leave the
// lab behind: when nobody reads its output any more the demo stops and tears
// down, within a bound.
func TestDemoReaderGone(t *testing.T) {
	requireRoot(t)
	name := labName("pipe")
	cmd := exec.Command(bin("tcp-upper-lab"), "demo", "--name", name)
	r, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "tcp-upper demo") {
		t.Fatalf("first line %q, %v", line, err)
	}
	r.Close() // the reader is gone, as when head has its lines
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatal("demo still running 30s after its reader went away")
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("demo exit %d after its reader went away, want 0 (as head's writers do)", code)
	}
	if l, _ := lab.New(name, nil); l.Exists() {
		l.Down()
		t.Fatal("demo left its namespaces behind when its reader went away")
	}
}

// TestDemoUnprivileged: without root the demo says so in one line and runs
// the same session in memory.
func TestDemoUnprivileged(t *testing.T) {
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		cred = &syscall.Credential{Uid: 65534, Gid: 65534}
	}
	code, out, stderr := runCmd(t, 60*time.Second, cred, bin("tcp-upper-lab"), "demo", "--time-wait", "1s")
	if code != 0 {
		t.Fatalf("exit %d: %s\n%s", code, stderr, out)
	}
	lines := strings.Split(out, "\n")
	if !strings.HasPrefix(lines[0], "no root/CAP_NET_ADMIN: running the same session in memory") {
		t.Errorf("first line %q", lines[0])
	}
	for _, want := range []string{"ant    | ABC", "ant    | HELLO WORLD!", "ant    | FASIONCHAN.COM", "10.0.1.2:", " disconnected",
		"# handshake 3/3", "CLOSE-WAIT -> LAST-ACK", "timer:(timewait,", "TIME-WAIT -> CLOSED"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	checkTimeWaitWay(t, out)
}

// TestLabUpExecDown drives the lab by hand as the README shows, with two
// labs at once.
func TestLabUpExecDown(t *testing.T) {
	requireRoot(t)
	names := []string{labName("lab1"), labName("lab2")}
	for _, n := range names {
		n := n
		t.Cleanup(func() {
			if l, _ := lab.New(n, nil); l.Exists() {
				l.Down()
				t.Errorf("lab %s left behind", n)
			}
		})
		code, out, stderr := runCmd(t, 30*time.Second, nil, bin("tcp-upper-lab"), "up", "--name", n)
		if code != 0 {
			t.Fatalf("up %s: exit %d %s", n, code, stderr)
		}
		if !strings.Contains(out, "server running in apple") || !strings.Contains(out, "try:  tcp-upper-lab exec --name "+n+" ant tcp-upper-client -i 10.0.2.2\n") {
			t.Fatalf("up printed %q", out)
		}
		// ss --name finds the server up started.
		if code, out, stderr := runCmd(t, 10*time.Second, nil, bin("tcp-upper-lab"), "ss", "-l", "--name", n); code != 0 || !strings.Contains(out, "LISTEN") {
			t.Fatalf("ss --name %s: exit %d %q %q", n, code, out, stderr)
		}
	}
	var pids []int
	for _, n := range names {
		l, _ := lab.New(n, nil)
		pids = append(pids, l.ServerPID())
		cmd := exec.Command(bin("tcp-upper-lab"), "exec", "--name", n, "ant", "tcp-upper-client", "-i", "10.0.2.2")
		cmd.Stdin = strings.NewReader("lab " + n + "\n")
		out, err := cmd.CombinedOutput()
		if err != nil || string(out) != "LAB "+strings.ToUpper(n)+"\n" {
			t.Fatalf("client in %s: %q %v", n, out, err)
		}
		// exec in apple sees the TUN the server made.
		out, err = exec.Command(bin("tcp-upper-lab"), "exec", "--name", n, "apple", "cat", "/sys/class/net/tun0/mtu").CombinedOutput()
		if err != nil {
			t.Fatalf("exec apple: %v %s", err, out)
		}
	}
	code, _, stderr := runCmd(t, 10*time.Second, nil, bin("tcp-upper-lab"), "up", "--name", names[0])
	if code != 1 || !strings.Contains(stderr, "already up") {
		t.Errorf("second up of a running lab: exit %d %q", code, stderr)
	}
	for i, n := range names {
		code, out, stderr := runCmd(t, 30*time.Second, nil, bin("tcp-upper-lab"), "down", "--name", n)
		if code != 0 || !strings.Contains(out, "is down") {
			t.Fatalf("down %s: exit %d %q %q", n, code, out, stderr)
		}
		if _, err := os.Stat("/proc/" + strconv.Itoa(pids[i])); err == nil {
			if b, _ := os.ReadFile("/proc/" + strconv.Itoa(pids[i]) + "/stat"); !strings.Contains(string(b), ") Z") {
				t.Errorf("server pid %d of lab %s still runs after down", pids[i], n)
			}
		}
	}
	code, _, stderr = runCmd(t, 10*time.Second, nil, bin("tcp-upper-lab"), "exec", "--name", names[0], "ant", "true")
	if code != 1 || !strings.Contains(stderr, "is not up") {
		t.Errorf("exec on a lab that is down: exit %d %q", code, stderr)
	}
}

func TestLabBadInput(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		prog, want string
	}{
		{[]string{"frobnicate"}, "tcp-upper-lab", "unknown command \"frobnicate\""},
		{[]string{"up", "--name", "Bad_Name"}, "tcp-upper-lab up", "bad lab name"},
		{[]string{"exec", "banana", "true"}, "tcp-upper-lab exec", "unknown host \"banana\""},
		{[]string{"exec", "ant"}, "tcp-upper-lab exec", "usage"},
	} {
		code, _, stderr := runCmd(t, 10*time.Second, nil, bin("tcp-upper-lab"), tc.args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2 (%q)", tc.args, code, stderr)
		}
		oneLine(t, strings.Join(tc.args, " "), stderr, tc.prog, tc.want)
	}
}

// TestSecondServerRefused: with the lab's server running in apple, a second
// server whose TUN address or network is already taken there refuses in one
// line (exit 1) instead of printing its listening line and never seeing a
// packet; it leaves no device and no second route, and the first serves on.
func TestSecondServerRefused(t *testing.T) {
	requireRoot(t)
	name := labName("shadow")
	l, _ := lab.New(name, nil)
	t.Cleanup(func() {
		if l.Exists() {
			l.Down()
			t.Errorf("lab %s left behind", name)
		}
	})
	if code, out, stderr := runCmd(t, 30*time.Second, nil, bin("tcp-upper-lab"), "up", "--name", name); code != 0 {
		t.Fatalf("up: exit %d %q %q", code, out, stderr)
	}
	defer func() {
		if code, _, stderr := runCmd(t, 30*time.Second, nil, bin("tcp-upper-lab"), "down", "--name", name); code != 0 {
			t.Errorf("down: exit %d %q", code, stderr)
		}
	}()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--tun", "tun9"}, `open tun "tun9": 10.0.2.0/24 is already routed through tun0`},
		{[]string{"--tun", "tun9", "--addr", "10.0.1.9/24", "--tun-addr", "10.0.1.8/24"}, "10.0.1.0/24 is already routed through eth0"},
		{[]string{"--tun", "tun9", "--addr", "10.0.200.2/16", "--tun-addr", "10.0.1.1/16"}, "10.0.1.0/24 is already routed through eth0"},
		{[]string{"--tun", "tun9", "--addr", "127.0.0.2/8", "--tun-addr", "127.0.0.1/8"}, "address 127.0.0.1 is already on lo"},
	} {
		args := append([]string{"exec", "--name", name, "apple", "tcp-upper-server"}, tc.args...)
		code, out, stderr := runCmd(t, 15*time.Second, nil, bin("tcp-upper-lab"), args...)
		if code != 1 || out != "" {
			t.Errorf("%v: exit %d stdout %q, want 1 and nothing", tc.args, code, out)
		}
		oneLine(t, strings.Join(tc.args, " "), stderr, "tcp-upper-server", tc.want)
	}
	inNS(t, l, lab.Apple, func(h *netlink.Handle) {
		if _, err := h.LinkByName("tun9"); err == nil {
			t.Error("tun9 left behind in apple")
		}
		routes, err := h.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, r := range routes {
			if r.Dst != nil && r.Dst.String() == "10.0.2.0/24" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("apple has %d routes to 10.0.2.0/24, want 1: %v", n, routes)
		}
	})
	// The first server still answers.
	cmd := exec.Command(bin("tcp-upper-lab"), "exec", "--name", name, "ant", "tcp-upper-client", "-i", "10.0.2.2")
	cmd.Stdin = strings.NewReader("still here\n")
	if out, err := cmd.CombinedOutput(); err != nil || string(out) != "STILL HERE\n" {
		t.Fatalf("the first server after the refused ones: %q %v", out, err)
	}
}

// TestInspectByLabName: `ss --name LAB` finds the server in the lab's apple
// however it was started: here by hand, as `tcp-upper-lab exec apple
// tcp-upper-server` (and scripts/tmux-lab.sh) start it, with its socket at
// the default path. Another user is told that it is a permission problem.
func TestInspectByLabName(t *testing.T) {
	l := newLab(t)
	srv := startIn(t, l, lab.Apple, bin("tcp-upper-server"), "--tun", "tun0")
	if !srv.stdout.waitFor("waiting for connections...", 10*time.Second) {
		t.Fatalf("server did not start: %q", srv.stderr.String())
	}
	// SIGTERM, not the cleanup's SIGKILL: the default socket is under /run.
	defer srv.stop(t, syscall.SIGTERM, 10*time.Second)

	for _, cmd := range [][]string{{"ss", "-l"}, {"stats"}, {"fault", "list"}} {
		args := append(cmd, "--name", l.Name)
		code, out, stderr := runCmd(t, 10*time.Second, nil, bin("tcp-upper-lab"), args...)
		if code != 0 {
			t.Fatalf("%v: exit %d %q", args, code, stderr)
		}
		if cmd[0] == "ss" && !strings.Contains(out, "LISTEN") {
			t.Errorf("%v printed %q", args, out)
		}
	}

	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	for _, args := range [][]string{{"ss", "--name", l.Name}, {"ss"}} {
		code, _, stderr := runCmd(t, 10*time.Second, nobody, bin("tcp-upper-lab"), args...)
		if code != 1 {
			t.Errorf("%v as nobody: exit %d, want 1", args, code)
		}
		oneLine(t, strings.Join(args, " ")+" as nobody", stderr, "tcp-upper-lab ss", "permission denied")
	}

	code, _, stderr := runCmd(t, 10*time.Second, nil, bin("tcp-upper-lab"), "stats", "--name", labName("nolab"))
	if code != 1 {
		t.Errorf("a lab that is not up: exit %d, want 1", code)
	}
	oneLine(t, "lab not up", stderr, "tcp-upper-lab stats", "is not up")
}

// TestLabCommandsNeedRoot: without root, each command that needs it says
// which (not "building the lab" for exec) and how (sudo), in one line.
func TestLabCommandsNeedRoot(t *testing.T) {
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		cred = &syscall.Credential{Uid: 65534, Gid: 65534}
	}
	for _, tc := range []struct {
		args       []string
		prog, want string
	}{
		{[]string{"up", "--name", labName("nr")}, "tcp-upper-lab up", "building the lab needs root"},
		{[]string{"exec", "--name", labName("nr"), "ant", "true"}, "tcp-upper-lab exec", "exec (entering the lab's namespaces) needs root"},
		{[]string{"down", "--name", labName("nr")}, "tcp-upper-lab down", "taking the lab down needs root"},
		{[]string{"run", "handshake"}, "tcp-upper-lab run", "running an experiment (it builds a lab of its own) needs root"},
		{[]string{"bench"}, "tcp-upper-lab bench", "building the lab needs root"},
		{[]string{"compare"}, "tcp-upper-lab compare", "building the lab needs root"},
	} {
		code, _, stderr := runCmd(t, 10*time.Second, cred, bin("tcp-upper-lab"), tc.args...)
		if code != 1 {
			t.Errorf("%v: exit %d, want 1", tc.args, code)
		}
		oneLine(t, strings.Join(tc.args, " "), stderr, tc.prog, tc.want)
		if !strings.Contains(stderr, "sudo") {
			t.Errorf("%v: %q does not say how (sudo)", tc.args, stderr)
		}
	}
}

// TestUpPrintsRunnableCommands: what up prints to type next runs as
// printed, with the lab's --name where it belongs (after exec).
func TestUpPrintsRunnableCommands(t *testing.T) {
	requireRoot(t)
	name := labName("next")
	l, _ := lab.New(name, nil)
	t.Cleanup(func() {
		if l.Exists() {
			l.Down()
		}
	})
	code, out, stderr := runCmd(t, 30*time.Second, nil, bin("tcp-upper-lab"), "up", "--no-server", "--name", name)
	if code != 0 {
		t.Fatalf("up --no-server: exit %d %q", code, stderr)
	}
	want := "start the server:  tcp-upper-lab exec --name " + name + " apple tcp-upper-server\n"
	if !strings.Contains(out, want) {
		t.Fatalf("up --no-server printed %q, want a line %q", out, want)
	}
	// Run it as printed (the programs from this test's build).
	fields := strings.Fields(strings.TrimPrefix(want, "start the server:  "))
	srv := startIn(t, nil, "", bin(fields[0]), append(fields[1:len(fields)-1], bin(fields[len(fields)-1]), "--control", filepath.Join(t.TempDir(), "ctl.sock"))...)
	if !srv.stdout.waitFor("waiting for connections...", 10*time.Second) {
		t.Fatalf("the printed command did not start a server: %q %q", srv.stdout.String(), srv.stderr.String())
	}
	if code := srv.stop(t, syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Errorf("server exit %d: %q", code, srv.stderr.String())
	}
	if code, _, stderr := runCmd(t, 30*time.Second, nil, bin("tcp-upper-lab"), "down", "--name", name); code != 0 {
		t.Errorf("down: exit %d %q", code, stderr)
	}
}

// checkTimeWaitWay checks the demo's part 2, where our stack closes first:
// it goes to TIME-WAIT through FIN-WAIT-2 when the client's ACK of our FIN
// comes alone, straight from FIN-WAIT-1 when it rides on the client's FIN
// (which of the two depends on the client's delayed ACK: the kernel's, or
// in memory our stack's, patch 0014). The events are the stack's: exactly
// one of them.
func checkTimeWaitWay(t *testing.T, out string) {
	t.Helper()
	viaFW2 := strings.Contains(out, "FIN-WAIT-1 -> FIN-WAIT-2 (our FIN was acknowledged)") && strings.Contains(out, "FIN-WAIT-2 -> TIME-WAIT (received FIN; ACK sent;")
	direct := strings.Contains(out, "FIN-WAIT-1 -> TIME-WAIT (received FIN and the ACK of ours;")
	if viaFW2 == direct {
		t.Errorf("demo output: our stack's way into TIME-WAIT: through FIN-WAIT-2 %v, straight from FIN-WAIT-1 %v; want exactly one", viaFW2, direct)
	}
}
