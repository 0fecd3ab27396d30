package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Stacks a server can run on.
const (
	Kernel   = "kernel"
	Netstack = "netstack"
)

// server is one tcp-upper-server process this package started.
type server struct {
	cmd    *exec.Cmd
	stdout *readyWriter
	stderr *tailWriter
	done   chan struct{}
	err    error // cmd.Wait's, once done is closed
}

// startFn starts a server program; the lab passes one that starts it inside
// apple, tests one that starts it where we are.
type startFn func(cmd *exec.Cmd) error

// startServer starts bin with args and waits until its stdout says ready
// (tcp-upper-server's listening line). With quiet, its stderr goes to /dev/null (as a user redirecting a
// --trace would); otherwise its last lines are kept for error messages.
func startServer(ctx context.Context, start startFn, bin string, args []string, ready string, quiet bool) (*server, error) {
	s := &server{stdout: newReadyWriter(ready), stderr: &tailWriter{max: 4 << 10}, done: make(chan struct{})}
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stdout = s.stdout
	if !quiet {
		s.cmd.Stderr = s.stderr
	}
	// Its own process group: a Ctrl-C reaches only us, and we stop the
	// server in order.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := start(s.cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() { s.err = s.cmd.Wait(); close(s.done) }()
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-s.stdout.ready:
		return s, nil
	case <-s.done:
		return nil, fmt.Errorf("%s %s exited before listening (%v): %s", bin, strings.Join(args, " "), s.err, s.stderr.last())
	case <-t.C:
		s.stop()
		return nil, fmt.Errorf("%s %s did not listen within 10s: %s", bin, strings.Join(args, " "), s.stderr.last())
	case <-ctx.Done():
		s.stop()
		return nil, ctx.Err()
	}
}

// pid is the server's process id.
func (s *server) pid() int { return s.cmd.Process.Pid }

// exited reports whether the server has ended by itself.
func (s *server) exited() error {
	select {
	case <-s.done:
		return fmt.Errorf("server exited during the measurement (%v): %s", s.err, s.stderr.last())
	default:
		return nil
	}
}

// stop sends SIGTERM and waits for the exit (the server closes every
// connection and waits up to 5s for its FINs to be acknowledged); after 10s
// it kills it. It returns an error if the server did not exit cleanly.
func (s *server) stop() error {
	select {
	case <-s.done:
		return fmt.Errorf("server had exited (%v): %s", s.err, s.stderr.last())
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-s.done:
		if s.err != nil {
			return fmt.Errorf("server exit after SIGTERM: %v: %s", s.err, s.stderr.last())
		}
		return nil
	case <-t.C:
		s.cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("server pid %d did not exit within 10s of SIGTERM: killed", s.pid())
	}
}

// readyWriter discards a program's output once it has seen a marker,
// closing ready then; it keeps at most 4 KiB while waiting.
type readyWriter struct {
	marker []byte
	ready  chan struct{}

	mu    sync.Mutex
	buf   []byte
	found bool
}

func newReadyWriter(marker string) *readyWriter {
	return &readyWriter{marker: []byte(marker), ready: make(chan struct{})}
}

func (w *readyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.found {
		return len(p), nil
	}
	w.buf = append(w.buf, p...)
	if bytes.Contains(w.buf, w.marker) {
		w.found, w.buf = true, nil
		close(w.ready)
	} else if len(w.buf) > 4<<10 {
		w.buf = w.buf[len(w.buf)-len(w.marker):]
	}
	return len(p), nil
}

// tailWriter keeps the last max bytes written to it.
type tailWriter struct {
	max int
	mu  sync.Mutex
	buf []byte
}

func (w *tailWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	if len(w.buf) > w.max {
		w.buf = append(w.buf[:0], w.buf[len(w.buf)-w.max:]...)
	}
	return len(p), nil
}

// last is the last non-empty line written, or "(no output)".
func (w *tailWriter) last() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	lines := strings.Split(strings.TrimSpace(string(w.buf)), "\n")
	if l := strings.TrimSpace(lines[len(lines)-1]); l != "" {
		return l
	}
	return "(no output on stderr)"
}

// vmRSS is a process's resident set size in KiB, from /proc/PID/status.
func vmRSS(pid int) (int64, error) {
	return procStatusKB(pid, "VmRSS:")
}

func procStatusKB(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read server status: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			v, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse %s %q: %w", field, rest, err)
			}
			return v, nil
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// openFilesLimit is a process's soft RLIMIT_NOFILE, from /proc/PID/limits.
func openFilesLimit(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return 0, fmt.Errorf("read server limits: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			if f[0] == "unlimited" {
				return 1 << 62, nil
			}
			return strconv.ParseUint(f[0], 10, 64)
		}
	}
	return 0, errors.New("no open files limit in /proc/PID/limits")
}

// SplitArgs splits a flag string as a shell would for simple cases:
// whitespace separates words; single or double quotes group them
// (--fault "in syn drop count=2"). No escapes or expansions.
func SplitArgs(s string) ([]string, error) {
	var args []string
	var cur strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t' || r == '\n':
			if inWord {
				args = append(args, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated %c quote in %q", quote, s)
	}
	if inWord {
		args = append(args, cur.String())
	}
	return args, nil
}
