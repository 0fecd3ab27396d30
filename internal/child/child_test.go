package child

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"
)

func here(cmd *exec.Cmd) error { return cmd.Start() }

// TestMain lets the test binary be the program Start runs: with
// CHILD_TEST_SERVE set it says it is ready (once SIGTERM is caught, so a
// SIGTERM right after the line ends it cleanly) and exits 0 on SIGTERM,
// or by itself after 20 s.
func TestMain(m *testing.M) {
	if os.Getenv("CHILD_TEST_SERVE") != "" {
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		fmt.Println("listening at port: 1, waiting for connections...")
		select {
		case <-term:
			os.Exit(0)
		case <-time.After(20 * time.Second):
			os.Exit(4)
		}
	}
	os.Exit(m.Run())
}

// serving starts the test binary (os.Args[0]) as the program of TestMain.
func serving(cmd *exec.Cmd) error {
	cmd.Env = append(os.Environ(), "CHILD_TEST_SERVE=1")
	return cmd.Start()
}

// A program that says it is ready runs until Stop, which ends it with
// SIGTERM; one that exits first is an error with its last stderr line,
// and so is one that exits while running (Exited).
func TestStartStop(t *testing.T) {
	p, err := Start(context.Background(), serving, os.Args[0], nil, "waiting for connections", false)
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
