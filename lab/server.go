package lab

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ServerBinary is the server program's name.
const ServerBinary = "tcp-upper-server"

// ServerReady is what the server prints once it listens (the end of its
// "listening at port: ..." line).
const ServerReady = "waiting for connections"

// FindServer looks for the server program next to the running program,
// then on PATH.
func FindServer() (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), ServerBinary)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath(ServerBinary); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s not found next to this program or on PATH: build it with go install ./cmd/... (or use --no-server and start it yourself)", ServerBinary)
}

func (l *Lab) pidFile() string { return filepath.Join(l.StateDir(), "server.pid") }

// ServerLog is the file the lab's server writes its output to.
func (l *Lab) ServerLog() string { return filepath.Join(l.StateDir(), "server.log") }

// StartServer starts bin in apple on tun0 at ServerAddr, detached (it keeps
// running after we exit; Down stops it), writing its output to ServerLog.
// It returns once the server prints its listening line.
func (l *Lab) StartServer(bin string, extra ...string) (pid int, err error) {
	if err := os.MkdirAll(l.StateDir(), 0o700); err != nil {
		return 0, fmt.Errorf("state directory: %w", err)
	}
	logf, err := os.OpenFile(l.ServerLog(), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, fmt.Errorf("server log: %w", err)
	}
	defer logf.Close()
	args := append([]string{"--tun", "tun0", "--addr", ServerAddr.String(), "--log-level", "info", "--control", l.ControlPath()}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := l.Start(Apple, cmd); err != nil {
		return 0, fmt.Errorf("start %s in apple: %w", bin, err)
	}
	pid = cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	if err := os.WriteFile(l.pidFile(), []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		cmd.Process.Kill()
		return 0, fmt.Errorf("pid file: %w", err)
	}
	deadline := time.After(10 * time.Second)
	for {
		if strings.Contains(readFile(l.ServerLog()), ServerReady) {
			return pid, nil
		}
		select {
		case err := <-exited:
			os.Remove(l.pidFile())
			return 0, fmt.Errorf("server exited (%v): %s", err, lastLine(l.ServerLog()))
		case <-deadline:
			l.StopServer()
			return 0, fmt.Errorf("server did not start listening within 10s: %s", lastLine(l.ServerLog()))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ServerPID returns the pid of the server StartServer started, or 0.
func (l *Lab) ServerPID() int {
	b, err := os.ReadFile(l.pidFile())
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// StopServer sends SIGTERM to the server StartServer started (only if the
// pid still names a tcp-upper-server in apple) and waits up to 5s, then
// kills it.
func (l *Lab) StopServer() error {
	pid := l.ServerPID()
	if pid == 0 {
		return nil
	}
	defer os.Remove(l.pidFile())
	if !l.isOurServer(pid) {
		return nil
	}
	if err := unix.Kill(pid, unix.SIGTERM); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil
		}
		return fmt.Errorf("stop server pid %d: %w", pid, err)
	}
	for i := 0; i < 250; i++ {
		if !alive(pid) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	unix.Kill(pid, unix.SIGKILL)
	return fmt.Errorf("server pid %d did not stop within 5s of SIGTERM: killed", pid)
}

// isOurServer checks that pid is a tcp-upper-server living in our apple.
func (l *Lab) isOurServer(pid int) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil || !strings.HasPrefix(filepath.Base(strings.TrimSuffix(exe, " (deleted)")), ServerBinary) {
		return false
	}
	var a, b unix.Stat_t
	if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &a) != nil || unix.Stat(l.NetNSPath(Apple), &b) != nil {
		return false
	}
	return a.Ino == b.Ino && a.Dev == b.Dev
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if errors.Is(err, fs.ErrNotExist) {
		return false
	}
	// A zombie has exited; its parent (init, once we are gone) reaps it.
	if i := strings.LastIndexByte(string(b), ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'Z' {
		return false
	}
	return err == nil
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

func lastLine(p string) string {
	var last string
	f, err := os.Open(p)
	if err != nil {
		return "(no output)"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if t := strings.TrimSpace(sc.Text()); t != "" {
			last = t
		}
	}
	if last == "" {
		return "(no output)"
	}
	return last
}
