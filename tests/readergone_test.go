package tests

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/netstack/control"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
)

// fakeServer serves a control socket that answers as a server with one
// established connection would (hello, ss, stats, fault, and an events
// stream that sends an event every 10 ms), for the commands that print.
func fakeServer(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ctl.sock")
	s, err := control.Listen(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	conn := inspect.ConnID{Local: netip.MustParseAddrPort("10.0.2.2:9999"), Remote: netip.MustParseAddrPort("10.0.1.2:47762")}
	s.Handle("hello", func(ctx context.Context, req *control.Request, send func(*control.Response) error) error {
		return send(&control.Response{Hello: &control.Hello{PID: os.Getpid(), Program: "fake", TUN: "tun0"}})
	})
	s.Handle("ss", func(ctx context.Context, req *control.Request, send func(*control.Response) error) error {
		return send(&control.Response{Sockets: []control.Socket{{State: inspect.Established, Local: conn.Local, Remote: conn.Remote}}})
	})
	s.Handle("stats", func(ctx context.Context, req *control.Request, send func(*control.Response) error) error {
		var cs []control.Counter
		for i := range 50 {
			cs = append(cs, control.Counter{Name: "c" + strings.Repeat("x", i), Value: uint64(i), Help: "a counter"})
		}
		return send(&control.Response{Counters: cs})
	})
	s.Handle("fault", func(ctx context.Context, req *control.Request, send func(*control.Response) error) error {
		b, _ := json.Marshal(control.FaultReply{Seed: 7})
		return send(&control.Response{Data: b})
	})
	s.Handle("events", func(ctx context.Context, req *control.Request, send func(*control.Response) error) error {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			ev := &inspect.Event{Time: time.Now(), Kind: inspect.KindState, Conn: conn, From: inspect.SynRcvd, To: inspect.Established, Cause: "fake"}
			if err := send(&control.Response{Event: ev}); err != nil {
				return err
			}
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
		}
	})
	s.Serve()
	return path
}

// TestReaderGoneIsQuiet: `tcp-upper-lab stats | head -2` and the like. When
// the reader of its output goes away, every command that prints stops (a
// stream too) and exits 0 without a word on stderr.
func TestReaderGoneIsQuiet(t *testing.T) {
	ctl := fakeServer(t)
	for _, args := range [][]string{
		{"stats", "--control", ctl},
		{"stats", "--json", "--control", ctl},
		{"ss", "-a", "--control", ctl},
		{"ss", "--json", "--control", ctl},
		{"fault", "list", "--control", ctl},
		{"events", "--control", ctl},
		{"events", "--format", "json", "--control", ctl},
		{"trace", "--control", ctl}, // events' first name
		{"run", "--list"},
		{"ladder", "--control", ctl},
		{"ladder", "../viz/testdata/fast-retransmit", "--explain"},
	} {
		var name []string
		for _, a := range args {
			if a == "--control" {
				break
			}
			name = append(name, strings.TrimLeft(a, "-"))
		}
		t.Run(strings.Join(name, "-"), func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			r.Close() // the reader is gone before the first line
			cmd := exec.Command(bin("tcp-upper-lab"), args...)
			var stderr watch
			cmd.Stdout, cmd.Stderr = w, &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			w.Close()
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Fatalf("%v still running 10s after its reader went away; stderr %q", args, stderr.String())
			}
			if code := cmd.ProcessState.ExitCode(); code != 0 {
				t.Errorf("%v: exit %d, want 0; stderr %q", args, code, stderr.String())
			}
			live := args[0] == "events" || args[0] == "trace" || args[0] == "ladder" && args[1] == "--control" // they say "attached" on stderr
			if s := stderr.String(); strings.Contains(s, "broken pipe") || (!live && s != "") {
				t.Errorf("%v: stderr %q, want nothing", args, s)
			}
		})
	}
}
