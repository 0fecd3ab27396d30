package tests

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

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
	code, out, stderr := runCmd(t, 60*time.Second, nil, bin("tcp-upper-lab"), "demo", "--name", "tdemo", "--time-wait", "2s")
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
		`lab "tdemo" torn down`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	// The stack goes to TIME-WAIT through FIN-WAIT-2 when the client's
	// ACK of our FIN comes alone, straight from FIN-WAIT-1 when it rides
	// on the client's FIN (which of the two depends on the client's
	// delayed ACK). The events are the stack's: exactly one of them.
	viaFW2 := strings.Contains(out, "FIN-WAIT-1 -> FIN-WAIT-2 (our FIN was acknowledged)") && strings.Contains(out, "FIN-WAIT-2 -> TIME-WAIT (received FIN; ACK sent;")
	direct := strings.Contains(out, "FIN-WAIT-1 -> TIME-WAIT (received FIN and the ACK of ours;")
	if viaFW2 == direct {
		t.Errorf("demo output: our stack's way into TIME-WAIT: through FIN-WAIT-2 %v, straight from FIN-WAIT-1 %v; want exactly one", viaFW2, direct)
	}
	if t.Failed() {
		t.Logf("demo printed:\n%s", out)
	}
	if l, _ := lab.New("tdemo", nil); l.Exists() {
		l.Down()
		t.Fatal("demo left its namespaces behind")
	}
}

// TestDemoReaderGone: `tcp-upper-lab demo | head -3` must not leave the
// lab behind: when nobody reads its output any more the demo stops and tears
// down, within a bound.
func TestDemoReaderGone(t *testing.T) {
	requireRoot(t)
	cmd := exec.Command(bin("tcp-upper-lab"), "demo", "--name", "tdemopipe")
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
	if l, _ := lab.New("tdemopipe", nil); l.Exists() {
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
		"# handshake 3/3", "CLOSE-WAIT -> LAST-ACK", "FIN-WAIT-1 -> FIN-WAIT-2", "timer:(timewait,", "TIME-WAIT -> CLOSED"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestLabUpExecDown drives the lab by hand as the README shows, with two
// labs at once.
func TestLabUpExecDown(t *testing.T) {
	requireRoot(t)
	names := []string{"tlab1", "tlab2"}
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
		if !strings.Contains(out, "server running in apple") {
			t.Fatalf("up printed %q", out)
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
