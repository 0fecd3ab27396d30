package tests

import (
	"io"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/lab"
)

// oneLine checks that a failing program printed exactly one line on stderr
// that starts with its name and contains want, and no stack trace.
func oneLine(t *testing.T, what, stderr, prog, want string) {
	t.Helper()
	if strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, prog+": ") || !strings.Contains(stderr, want) {
		t.Errorf("%s: stderr %q, want one line %q... containing %q", what, stderr, prog+": ", want)
	}
	if strings.Contains(stderr, "goroutine ") || strings.Contains(stderr, "panic") {
		t.Errorf("%s: a stack trace reached the user: %q", what, stderr)
	}
}

func TestServerWithoutPrivileges(t *testing.T) {
	l := newLab(t)
	p := startAs(t, l, lab.Apple, &syscall.Credential{Uid: 65534, Gid: 65534}, bin("tcp-upper-server"))
	if code := p.wait(t, 10*time.Second); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	oneLine(t, "unprivileged server", p.stderr.String(), "tcp-upper-server", "CAP_NET_ADMIN")
	if tunExists(t, l, "tun0") {
		t.Error("a TUN was left behind")
	}
}

func TestTunBusy(t *testing.T) {
	l := newLab(t)
	first := startServer(t, l)
	second := startIn(t, l, lab.Apple, bin("tcp-upper-server"), "--tun", "tun0")
	if code := second.wait(t, 10*time.Second); code != 1 {
		t.Fatalf("second server exit %d, want 1", code)
	}
	oneLine(t, "second server on a busy TUN", second.stderr.String(), "tcp-upper-server", "busy")
	// The first server and its device are untouched.
	c := dialAnt(t, l, serverAddr)
	c.Write([]byte("ok"))
	b := make([]byte, 2)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "OK" {
		t.Fatalf("first server after the failed second: %q %v", b, err)
	}
	c.Close()
	if code := first.stop(t, syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Fatalf("first server exit %d", code)
	}
}

func TestTunDeviceMissing(t *testing.T) {
	requireTool(t, "unshare")
	l := newLab(t)
	// A private mount namespace where /dev/net is empty.
	p := startIn(t, l, lab.Apple, "unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /dev/net && exec "+bin("tcp-upper-server"))
	if code := p.wait(t, 10*time.Second); code != 1 {
		t.Fatalf("exit %d, want 1; stderr %q", code, p.stderr.String())
	}
	oneLine(t, "no /dev/net/tun", p.stderr.String(), "tcp-upper-server", "/dev/net/tun is missing")
}

func TestKernelPortInUse(t *testing.T) {
	l := newLab(t)
	first := startIn(t, l, lab.Apple, bin("tcp-upper-server"), "--stack", "kernel")
	if !first.stdout.waitFor("waiting for connections", 10*time.Second) {
		t.Fatalf("kernel server did not start: %q", first.stderr.String())
	}
	second := startIn(t, l, lab.Apple, bin("tcp-upper-server"), "--stack", "kernel")
	if code := second.wait(t, 10*time.Second); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	oneLine(t, "port in use", second.stderr.String(), "tcp-upper-server", "port in use")
	first.stop(t, syscall.SIGTERM, 10*time.Second)
}

func TestClientCannotConnect(t *testing.T) {
	l := newLab(t)
	startServer(t, l)
	for _, tc := range []struct {
		name string
		host string
		args []string
		want string
	}{
		{"refused", lab.Ant, []string{"-i", "10.0.2.2", "-p", "9998"}, "connection refused"},
		// In ant the way ends at apple, the router: running the client
		// somewhere else would not help.
		{"no route beyond the router", lab.Ant, []string{"-i", "10.0.9.9"}, "no route to host: the router 10.0.1.1 on the way has no route to 10.0.9.9: check the address"},
		// apple has no route to 10.0.9.0/24 at all: wrong place, or wrong address.
		{"no route here", lab.Apple, []string{"-i", "10.0.9.9"}, "no route to host: this host has no route to 10.0.9.9: check the address, or run the client where the server is reachable (in the lab: tcp-upper-lab exec ant"},
		{"timeout", lab.Ant, []string{"-i", "10.0.2.9", "--timeout", "1s"}, "no answer within 1s"},
	} {
		start := time.Now()
		p := startIn(t, l, tc.host, bin("tcp-upper-client"), tc.args...)
		code := p.wait(t, 30*time.Second)
		stdout, stderr := p.stdout.String(), p.stderr.String()
		if code != 1 || stdout != "" {
			t.Errorf("%s: exit %d stdout %q", tc.name, code, stdout)
		}
		oneLine(t, tc.name, stderr, "tcp-upper-client", tc.want)
		if d := time.Since(start); d > 8*time.Second {
			t.Errorf("%s took %v", tc.name, d)
		}
	}
}

// TestServerGoneMidSession: the server stops between two lines; the client
// says so in one line and exits 1.
func TestServerGoneMidSession(t *testing.T) {
	l := newLab(t)
	srv := startServer(t, l)
	cmd := exec.Command(bin("tcp-upper-client"), "-i", "10.0.2.2")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, errw := &watch{}, &watch{}
	cmd.Stdout, cmd.Stderr = out, errw
	if err := l.Start(lab.Ant, cmd); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	defer func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
			<-done
		}
	}()
	io.WriteString(stdin, "abc\n")
	if !out.waitFor("ABC\n", 5*time.Second) {
		t.Fatalf("no first reply: %q %q", out.String(), errw.String())
	}
	srv.stop(t, syscall.SIGTERM, 10*time.Second)
	io.WriteString(stdin, "more\n")
	stdin.Close()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("client did not exit after the server went away")
	}
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	oneLine(t, "server gone", errw.String(), "tcp-upper-client", "the server closed the connection")
}
