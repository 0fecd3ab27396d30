package child

import (
	"context"
	"os/exec"
	"strings"
	"testing"
)

func here(cmd *exec.Cmd) error { return cmd.Start() }

// A program that says it is ready runs until Stop, which ends it with
// SIGTERM; one that exits first is an error with its last stderr line,
// and so is one that exits while running (Exited).
func TestStartStop(t *testing.T) {
	// sleep in the background: the shell runs its trap at once (and the
	// trap ends the sleep). The sleep starts before the ready line, so
	// that a SIGTERM right after it finds $! set: a sleep left running
	// would hold the output pipe open for 20 s.
	ready := `trap 'kill $!; exit 0' TERM; sleep 20 & echo "listening at port: 1, waiting for connections..."; wait`
	p, err := Start(context.Background(), here, "sh", []string{"-c", ready}, "waiting for connections", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Exited(); err != nil {
		t.Fatalf("running program: Exited says %v", err)
	}
	if err := p.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := p.Exited(); err == nil {
		t.Fatal("stopped program: Exited says nil")
	}

	_, err = Start(context.Background(), here, "sh", []string{"-c", "echo first >&2; echo cannot listen >&2; exit 3"}, "waiting for connections", false)
	if err == nil || !strings.Contains(err.Error(), "exited before listening (exit status 3): cannot listen") {
		t.Fatalf("a program that exits before it is ready: %v", err)
	}

	if err := p.Stop(); err == nil || !strings.Contains(err.Error(), "exited (<nil>)") {
		t.Fatalf("Stop of a program that had ended: %v", err)
	}
}

// A cancelled context stops the wait and the program.
func TestStartCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Start(ctx, here, "sh", []string{"-c", "trap 'kill $!; exit 0' TERM; sleep 20 & wait"}, "never", true)
	if err != context.Canceled {
		t.Fatalf("Start with a cancelled context: %v, want context.Canceled", err)
	}
}
