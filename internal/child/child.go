// Package child runs a server program as a child of this process, for the
// bench and compare: it waits for the line that says the program listens,
// keeps the last of its stderr for error messages, and stops it with
// SIGTERM, then SIGKILL.
package child

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is one program Start started.
type Process struct {
	cmd    *exec.Cmd
	stdout *readyWriter
	stderr *tailWriter
	done   chan struct{}
	err    error // cmd.Wait's, once done is closed
}

// Start starts bin with args through start (which starts the command where
// it should run: in a namespace, or here with (*exec.Cmd).Start), in its
// own process group (a Ctrl-C reaches only us, and we stop the program in
// order), and waits up to 10 s until its stdout says ready. With quiet its
// stderr goes to /dev/null (as a user redirecting a --trace would);
// otherwise its last line is kept for error messages.
func Start(ctx context.Context, start func(*exec.Cmd) error, bin string, args []string, ready string, quiet bool) (*Process, error) {
	p := &Process{stdout: newReadyWriter(ready), stderr: &tailWriter{max: 4 << 10}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout = p.stdout
	if !quiet {
		p.cmd.Stderr = p.stderr
	}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := start(p.cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-p.stdout.ready:
		return p, nil
	case <-p.done:
		return nil, fmt.Errorf("%s exited before listening (%v): %s", p, p.err, p.stderr.last())
	case <-t.C:
		p.Stop()
		return nil, fmt.Errorf("%s did not listen within 10s: %s", p, p.stderr.last())
	case <-ctx.Done():
		p.Stop()
		return nil, ctx.Err()
	}
}

// String is the command line: the program and its arguments.
func (p *Process) String() string { return strings.Join(p.cmd.Args, " ") }

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Exited is nil while the program runs, and says how it ended once it
// has.
func (p *Process) Exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited (%v): %s", p, p.err, p.stderr.last())
	default:
		return nil
	}
}

// Stop sends SIGTERM and waits for the exit (a tcp-upper-server closes
// every connection and waits up to 5 s for its FINs to be acknowledged);
// after 10 s it kills it. It returns an error unless the program exited
// cleanly after the SIGTERM.
func (p *Process) Stop() error {
	if err := p.Exited(); err != nil {
		return err
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-p.done:
		if p.err != nil {
			return fmt.Errorf("%s exit after SIGTERM: %v: %s", p, p.err, p.stderr.last())
		}
		return nil
	case <-t.C:
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s (pid %d) did not exit within 10s of SIGTERM: killed", p, p.Pid())
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

// last is the last non-empty line written, or "(no output on stderr)".
func (w *tailWriter) last() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	lines := strings.Split(strings.TrimSpace(string(w.buf)), "\n")
	if l := strings.TrimSpace(lines[len(lines)-1]); l != "" {
		return l
	}
	return "(no output on stderr)"
}
