// Package tests holds the end-to-end tests: the real programs, the kernel's
// TCP as the client inside network namespaces made by each test, and real
// tcpdump/tshark/ss as observers. Tests that need root skip without it,
// unless TCP_UPPER_REQUIRE_ROOT=1 (as .ci/run sets), where a skip is a
// failure.
package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/tcp-upper/tcp-upper/internal/ktrace"
	"github.com/tcp-upper/tcp-upper/internal/testenv"
	"github.com/tcp-upper/tcp-upper/lab"
)

// binDir holds the programs built once for all tests.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tcp-upper-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cmd := exec.Command("go", "build", "-o", dir+"/", "../cmd/...")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build programs:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	// Readable by the unprivileged user some tests run programs as.
	os.Chmod(dir, 0o755)
	binDir = dir
	b := make([]byte, 2)
	rand.Read(b)
	runTag = hex.EncodeToString(b)
	before := leftovers()
	code := m.Run()
	os.RemoveAll(dir)
	// Servers the tests killed (SIGKILL at cleanup) cannot remove their
	// kernel trace instances; ours must all be closed.
	ktrace.RemoveStale()
	if own, _ := filepath.Glob(fmt.Sprintf("%s/instances/tcp-upper-%d-*", ktrace.Root, os.Getpid())); len(own) > 0 {
		fmt.Fprintf(os.Stderr, "leaked by the tests: trace instances %v\n", own)
		code = 1
	}
	// Nothing a test made may outlive it: no namespace, no device in the
	// root namespace.
	for k := range leftovers() {
		if !before[k] {
			fmt.Fprintf(os.Stderr, "leaked by the tests: %s\n", k)
			code = 1
		}
	}
	os.Exit(code)
}

// runTag is drawn once per run of the tests; every lab the tests make (or
// have a program make) is named labName(...), so begins with "tu"+runTag.
// Other runs of these tests, and other programs, on the same host then never
// share a name with ours, and the leak check counts only what this run could
// have made.
var runTag string

// labName is the name of a lab this run makes: "tu", the run's tag, then
// what (lowercase letters and digits; at most 14 of them).
func labName(what string) string { return "tu" + runTag + what }

// randomLabName is labName with 4 random hex digits.
func randomLabName() string {
	b := make([]byte, 2)
	rand.Read(b)
	return labName(hex.EncodeToString(b))
}

// testDevices are the names the tests give devices; they make them only
// inside their labs' namespaces, so one in the root namespace is a leak.
var testDevices = []string{"tun0", "tun1", "up0", "utun0"}

// leftovers lists what this run's tests could have left behind: namespaces
// and /run/tcp-upper state of this run's labs, and TUN/veth devices with
// the tests' names in the root namespace. Other namespaces and devices on
// the host are not ours to count.
func leftovers() map[string]bool {
	m := map[string]bool{}
	prefix := labName("")
	entries, _ := os.ReadDir(lab.NetNSDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			m["netns "+e.Name()] = true
		}
	}
	links, _ := netlink.LinkList()
	for _, l := range links {
		if t := l.Type(); (t == "tuntap" || t == "veth") && slices.Contains(testDevices, l.Attrs().Name) {
			m[t+" "+l.Attrs().Name] = true
		}
	}
	// Control sockets (NETNS-TUN.sock, NETNS named after the lab) and lab
	// state (lab-NAME) left under /run/tcp-upper.
	for _, pat := range []string{"/run/tcp-upper/" + prefix + "*.sock", "/run/tcp-upper/lab-" + prefix + "*"} {
		found, _ := filepath.Glob(pat)
		for _, f := range found {
			m["file "+f] = true
		}
	}
	return m
}

// TestLeftoversCountOnlyOurs: the leak check sees this run's labs and not
// a lab another program (or another run of the tests) made meanwhile.
func TestLeftoversCountOnlyOurs(t *testing.T) {
	requireRoot(t)
	b := make([]byte, 3)
	rand.Read(b)
	other, err := lab.New("other"+hex.EncodeToString(b), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Down() })
	if err := other.Up(); err != nil {
		t.Fatal(err)
	}
	ours := newLab(t)
	m := leftovers()
	if !m["netns "+ours.NetNS(lab.Ant)] || !m["netns "+ours.NetNS(lab.Apple)] {
		t.Errorf("leftovers misses this run's lab %s: %v", ours.Name, m)
	}
	for k := range m {
		if strings.Contains(k, other.Name) {
			t.Errorf("leftovers counts %q, which another program made", k)
		}
	}
}

func bin(name string) string { return filepath.Join(binDir, name) }

func requireRoot(t testing.TB)              { t.Helper(); testenv.RequireRoot(t) }
func requireTool(t testing.TB, name string) { t.Helper(); testenv.RequireTool(t, name) }

// newLab builds a lab with a unique name and removes it when the test ends,
// pass or fail.
func newLab(t testing.TB) *lab.Lab {
	t.Helper()
	requireRoot(t)
	l, err := lab.New(randomLabName(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Down(); err != nil {
			t.Errorf("lab down: %v", err)
		}
		if l.Exists() {
			t.Errorf("lab %s still exists after Down", l.Name)
		}
	})
	if err := l.Up(); err != nil {
		t.Fatal(err)
	}
	return l
}

// proc is a program the test started, with its output collected.
type proc struct {
	cmd    *exec.Cmd
	stdout *watch
	stderr *watch
	done   chan struct{}
	err    error
}

// startIn starts a program inside host of l (or in our own namespace for
// l == nil) and stops it (SIGKILL) when the test ends if it still runs.
func startIn(t *testing.T, l *lab.Lab, host string, name string, args ...string) *proc {
	t.Helper()
	return startAs(t, l, host, nil, name, args...)
}

// startAs is startIn as the user cred (nil: as we are).
func startAs(t *testing.T, l *lab.Lab, host string, cred *syscall.Credential, name string, args ...string) *proc {
	t.Helper()
	p := &proc{stdout: &watch{}, stderr: &watch{}, done: make(chan struct{})}
	p.cmd = exec.Command(name, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if cred != nil {
		p.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	var err error
	if l == nil {
		err = p.cmd.Start()
	} else {
		err = l.Start(host, p.cmd)
	}
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
			if t.Failed() {
				// It ended by itself: say how, for the failure's sake.
				t.Logf("%s %v ended: %v; stderr (last 4 KiB): %s", filepath.Base(name), args, p.err, tail(p.stderr.String(), 4096))
			}
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// linkModes are the ways the server can hold its TUN; what the data path
// guarantees (byte-exact echo, no stall, valid traces, faults) is tested in
// each. Offloads are the default.
var linkModes = []struct {
	name  string
	flags []string
}{
	{"offload", nil},
	{"plain", []string{"--offload=false"}},
}

// forModes runs f once per link mode, as subtests, with the server flags
// that select it.
func forModes(t *testing.T, f func(t *testing.T, flags []string)) {
	for _, m := range linkModes {
		t.Run(m.name, func(t *testing.T) { f(t, m.flags) })
	}
}

// startServer runs tcp-upper-server in apple on tun0 and waits until it
// listens.
func startServer(t *testing.T, l *lab.Lab, args ...string) *proc {
	t.Helper()
	args = append([]string{"--tun", "tun0", "--addr", lab.ServerAddr.String()}, args...)
	if !slices.Contains(args, "--control") {
		// Not the default under /run: a server the test kills with SIGKILL
		// cannot remove its socket, and t.TempDir is cleaned for us.
		args = append(args, "--control", filepath.Join(t.TempDir(), "ctl.sock"))
	}
	p := startIn(t, l, lab.Apple, bin("tcp-upper-server"), args...)
	if !p.stdout.waitFor("waiting for connections...", 10*time.Second) {
		t.Fatalf("server did not start: stdout %q stderr %q", p.stdout.String(), p.stderr.String())
	}
	return p
}

// stop sends sig and waits for the exit, returning the exit code.
func (p *proc) stop(t *testing.T, sig syscall.Signal, timeout time.Duration) int {
	t.Helper()
	p.cmd.Process.Signal(sig)
	return p.wait(t, timeout)
}

// wait waits for the program to exit and returns its exit code.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("%s did not exit within %v; stderr %q", p.cmd.Path, timeout, p.stderr.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

// dialAnt connects from ant with the kernel's TCP.
func dialAnt(t testing.TB, l *lab.Lab, addr string) net.Conn {
	t.Helper()
	var c net.Conn
	err := l.Do(lab.Ant, func() error {
		var err error
		c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(context.Background(), "tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("dial %s from ant: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

var serverAddr = net.JoinHostPort(lab.ServerAddr.Addr().String(), fmt.Sprint(lab.Port))

// watch is a goroutine-safe buffer one can wait on.
type watch struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *watch) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *watch) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func (w *watch) waitFor(s string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(w.String(), s) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return strings.Contains(w.String(), s)
}
