package node_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/node"
	"github.com/tcp-upper/tcp-upper/tun"
)

var (
	srvAddr = netip.MustParsePrefix("10.0.2.2/24")
	cliAddr = netip.MustParsePrefix("10.0.2.3/24")
)

const port = 9999

// failing is a device that goes away underneath the stack once failed is
// set: its next read fails with an error other than tun.ErrClosed.
type failing struct {
	*tun.PipeDevice
	failed atomic.Bool
}

func (d *failing) Read(b []byte) (int, error) {
	n, err := d.PipeDevice.Read(b)
	if err == nil && d.failed.Load() {
		return 0, errors.New("device gone")
	}
	return n, err
}

// watcher records the order in which the node calls it, next to the
// stack's own end.
type watcher struct {
	mu     sync.Mutex
	events []string
	st     *netstack.Stack
}

func (w *watcher) Start(st *netstack.Stack) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.st = st
	w.events = append(w.events, "start")
	return nil
}

func (w *watcher) Close(context.Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	// The stack is closed first: its tracker no longer answers.
	w.events = append(w.events, "close")
}

func (w *watcher) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.events, ",")
}

func dialEcho(t *testing.T, cli *node.Node) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := cli.Stack.Dial(ctx, netip.AddrPortFrom(srvAddr.Addr(), port))
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("abc\n")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ABC\n" {
		t.Fatalf("echo %q, %v", got, err)
	}
	return c
}

// TestShutdownOrder: the server ends its connection with a FIN, Shutdown
// waits until the FIN exchange is over (the client read EOF, not a reset,
// and its own close was acknowledged), and closes the watcher after the
// stack, once.
func TestShutdownOrder(t *testing.T) {
	a, b := tun.Pipe("srv0", "cli0", 1500)
	w := &watcher{}
	srv, err := node.Start(a, node.Options{Stack: netstack.Options{Addr: srvAddr, Inspect: true}, Serve: true, Port: port, Watch: w})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if w.String() != "start" || w.st != srv.Stack {
		t.Fatalf("watcher after Start: %q, stack %v", w.String(), w.st == srv.Stack)
	}
	srv.Serve()
	cli, err := node.Start(b, node.Options{Stack: netstack.Options{Addr: cliAddr}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	c := dialEcho(t, cli)
	// The client closes when it reads the server's FIN, as a client does.
	copied := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, c)
		c.Close()
		copied <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	t.Logf("Shutdown took %v", time.Since(start).Round(time.Millisecond))
	if err := <-srv.Served(); err != nil {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
	if err := <-copied; err != nil {
		t.Fatalf("the client's read ended with %v, want EOF", err)
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer dcancel()
	if err := cli.Stack.Drain(dctx); err != nil {
		t.Fatalf("the client's close was not acknowledged: %v", err)
	}
	if w.String() != "start,close" {
		t.Fatalf("watcher calls %q, want start,close", w.String())
	}
	srv.Close() // again: nothing
	if w.String() != "start,close" {
		t.Fatalf("a second Close closed the watcher again: %q", w.String())
	}
}

// TestShutdownLinkDown: when the device failed, Shutdown does not wait for
// FINs that cannot arrive, and the node reports the link's error.
func TestShutdownLinkDown(t *testing.T) {
	a, b := tun.Pipe("srv0", "cli0", 1500)
	fa := &failing{PipeDevice: a}
	var told atomic.Bool
	srv, err := node.Start(fa, node.Options{Stack: netstack.Options{Addr: srvAddr, OnLinkError: func(error) { told.Store(true) }}, Serve: true, Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.Serve()
	cli, err := node.Start(b, node.Options{Stack: netstack.Options{Addr: cliAddr}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	c := dialEcho(t, cli)
	defer c.Close()
	fa.failed.Store(true)
	c.Write([]byte("x")) // the next packet finds the device gone
	select {
	case err := <-srv.LinkErr():
		if !strings.Contains(err.Error(), "device gone") {
			t.Fatalf("LinkErr: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no link error within 5s")
	}
	if !told.Load() {
		t.Fatal("the caller's OnLinkError was not called")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	srv.Shutdown(ctx)
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("Shutdown with the link down took %v: it waited for FINs", took)
	}
}

// TestStartFailsClean: a node that cannot start closes its device and its
// watcher, and returns the error.
func TestStartFailsClean(t *testing.T) {
	a, b := tun.Pipe("srv0", "cli0", 1500)
	defer b.Close()
	w := &watcher{}
	_, err := node.Start(a, node.Options{Stack: netstack.Options{Addr: netip.MustParsePrefix("::1/128")}, Watch: w})
	if err == nil {
		t.Fatal("Start with an IPv6 address succeeded")
	}
	if w.String() != "close" {
		t.Fatalf("watcher calls %q, want close", w.String())
	}
	if _, err := a.Read(make([]byte, 1500)); !errors.Is(err, tun.ErrClosed) {
		t.Fatalf("device read after a failed Start: %v, want tun.ErrClosed", err)
	}
}
