package app

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// pipeListener hands out the server ends of net.Pipe connections.
type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4zero, Port: 9999} }

// dial returns the client end of a new connection to the server.
func (l *pipeListener) dial(t testing.TB) net.Conn {
	t.Helper()
	cli, srv := net.Pipe()
	select {
	case l.conns <- srv:
	case <-time.After(5 * time.Second):
		t.Fatal("server did not accept")
	}
	return cli
}

// startPipeServer runs a Server on a pipeListener until the test ends.
func startPipeServer(t testing.TB, quiet time.Duration) (*Server, *pipeListener) {
	t.Helper()
	ln := newPipeListener()
	srv := NewServer(ln, ServerOptions{}, nil)
	if quiet > 0 {
		srv.quiet = quiet
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return srv, ln
}

// echo writes p and reads back len(p) bytes, concurrently (net.Pipe is
// unbuffered).
func echo(t testing.TB, c net.Conn, p []byte) []byte {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	werr := make(chan error, 1)
	go func() { _, err := c.Write(p); werr <- err }()
	got := make([]byte, len(p))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	return got
}

// memInUse is the heap and stack memory in use after a full collection.
func memInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

func TestServerEchoesAcrossBufferSizes(t *testing.T) {
	_, ln := startPipeServer(t, 20*time.Millisecond)
	c := ln.dial(t)
	defer c.Close()
	for i, size := range []int{1, 16, smallBufSize - 1, smallBufSize, smallBufSize + 1, BufSize, 3*BufSize + 7, 16} {
		in := make([]byte, size)
		for j := range in {
			in[j] = byte(j*7 + i)
		}
		want := bytes.Clone(in)
		Upper(want)
		if got := echo(t, c, in); !bytes.Equal(got, want) {
			t.Fatalf("echo of %d bytes differs", size)
		}
		if i == 5 {
			time.Sleep(60 * time.Millisecond) // quiet: the big buffer goes back
		}
	}
}

// perConn opens n connections, makes each echo payload once, lets them go
// quiet and returns the memory each still costs, in bytes.
func perConn(t *testing.T, n int, payload []byte) float64 {
	_, ln := startPipeServer(t, 20*time.Millisecond)
	before := memInUse()
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = ln.dial(t)
		echo(t, conns[i], payload)
	}
	time.Sleep(200 * time.Millisecond) // longer than the quiet period
	after := memInUse()
	for _, c := range conns {
		c.Close()
	}
	if after < before {
		return 0
	}
	return float64(after-before) / float64(n)
}

// TestIdleConnMemory: an idle connection must not keep a BufSize buffer,
// neither one that only exchanged a short line nor one that received bulk
// data and went quiet. The bound is well under BufSize (what each
// connection cost when it owned one) and includes both ends of the pipe
// and the handler's goroutine.
func TestIdleConnMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("measures heap growth over 1000 connections")
	}
	const n, limit = 1000, 12 << 10
	for _, tc := range []struct {
		name    string
		payload []byte
	}{
		{"short", []byte("hello world!\n")},
		{"after-bulk", bytes.Repeat([]byte("abc"), BufSize)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			per := perConn(t, n, tc.payload)
			t.Logf("%d idle connections: %.0f bytes each (heap and stacks, both ends)", n, per)
			if per > limit {
				t.Errorf("an idle connection costs %.0f bytes, want at most %d", per, limit)
			}
		})
	}
}

// TestShutdownWakesQuietHandler: a handler holding the big buffer (with its
// quiet deadline armed), or one that went quiet and continues on a fresh
// goroutine, still ends promptly on Shutdown, and Shutdown counts it.
func TestShutdownWakesQuietHandler(t *testing.T) {
	for _, quiet := range []time.Duration{time.Hour, 10 * time.Millisecond} {
		ln := newPipeListener()
		srv := NewServer(ln, ServerOptions{}, nil)
		srv.quiet = quiet
		served := make(chan error, 1)
		go func() { served <- srv.Serve() }()
		c := ln.dial(t)
		echo(t, c, bytes.Repeat([]byte("x"), 3*smallBufSize))
		time.Sleep(50 * time.Millisecond) // with 10ms: quiet, the connection moved
		if got := echo(t, c, []byte("ok")); string(got) != "OK" {
			t.Fatalf("quiet %v: echo %q", quiet, got)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := srv.Shutdown(ctx); err != nil {
			t.Fatalf("quiet %v: shutdown: %v", quiet, err)
		}
		cancel()
		if err := <-served; err != nil {
			t.Fatalf("quiet %v: serve: %v", quiet, err)
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("quiet %v: client read after shutdown: %v, want EOF", quiet, err)
		}
		if n := srv.Conns(); n != 0 {
			t.Errorf("quiet %v: %d connections left", quiet, n)
		}
		c.Close()
	}
}

// gonetTimeout is how gVisor's gonet reports a deadline: a net.Error whose
// Timeout is true, not os.ErrDeadlineExceeded.
type gonetTimeout struct{}

func (gonetTimeout) Error() string   { return "i/o timeout" }
func (gonetTimeout) Timeout() bool   { return true }
func (gonetTimeout) Temporary() bool { return true }

// gonetLike makes a conn report deadlines as gonet does.
type gonetLike struct{ net.Conn }

func (c gonetLike) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = &net.OpError{Op: "read", Net: "tcp", Err: gonetTimeout{}}
	}
	return n, err
}

// TestQuietConnStaysOpen: a connection that received bulk data and then
// went quiet gives its big buffer back and keeps working, whichever way
// the conn reports the quiet deadline.
func TestQuietConnStaysOpen(t *testing.T) {
	for _, wrap := range []struct {
		name string
		fn   func(net.Conn) net.Conn
	}{
		{"net", func(c net.Conn) net.Conn { return c }},
		{"gonet", func(c net.Conn) net.Conn { return gonetLike{c} }},
	} {
		t.Run(wrap.name, func(t *testing.T) {
			_, ln := startPipeServer(t, 20*time.Millisecond)
			cli, srv := net.Pipe()
			select {
			case ln.conns <- wrap.fn(srv):
			case <-time.After(5 * time.Second):
				t.Fatal("server did not accept")
			}
			defer cli.Close()
			bulk := bytes.Repeat([]byte("abcd"), BufSize)
			echo(t, cli, bulk)
			time.Sleep(100 * time.Millisecond) // several quiet periods
			if got := echo(t, cli, []byte("still there?")); string(got) != "STILL THERE?" {
				t.Fatalf("echo after a quiet period: %q", got)
			}
		})
	}
}

// BenchmarkEcho is a bulk echo through the handler over net.Pipe.
func BenchmarkEcho(b *testing.B) {
	_, ln := startPipeServer(b, 0)
	c := ln.dial(b)
	defer c.Close()
	p := bytes.Repeat([]byte("abcdefgh"), BufSize/8)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		echo(b, c, p)
	}
}

// noAddr is a connection that no longer knows its peer, as gonet's did
// after a reset.
type noAddr struct{ net.Conn }

func (noAddr) RemoteAddr() net.Addr { return nil }

// TestConnWithoutPeerAddress: a connection without a remote address is
// served and named, not a crash (it once took the server down).
func TestConnWithoutPeerAddress(t *testing.T) {
	var out bytes.Buffer
	var mu sync.Mutex
	ln := newPipeListener()
	srv := NewServer(ln, ServerOptions{Out: writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return out.Write(p)
	})}, nil)
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	cli, s := net.Pipe()
	ln.conns <- noAddr{s}
	if got := echo(t, cli, []byte("abc")); string(got) != "ABC" {
		t.Fatalf("echo %q", got)
	}
	cli.Close()
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(out.String(), "unknown-peer connected\nunknown-peer disconnected\n") {
		t.Fatalf("output %q", out.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
