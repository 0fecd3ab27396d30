package app

import (
	"bytes"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// tryConn is a connection that parks and is served in place (ReadNotifier,
// TryConn), driven by the test: it feeds bytes and calls ready where our
// stack's reader would.
type tryConn struct {
	net.Conn // the unused methods (deadlines, addresses) of a pipe end

	mu       sync.Mutex
	in       []byte // sent by the client, not read yet
	eof      bool
	out      bytes.Buffer
	writeCap int // what one TryWrite takes at most
	ready    func()
	armed    chan struct{} // a value each time the server arranges readiness
	closed   chan struct{}
}

func newTryConn() *tryConn {
	a, b := net.Pipe()
	b.Close()
	return &tryConn{Conn: a, writeCap: 1 << 20, armed: make(chan struct{}, 16), closed: make(chan struct{})}
}

func (c *tryConn) NotifyReadable(ready func()) (stop func()) {
	c.mu.Lock()
	c.ready = ready
	c.mu.Unlock()
	c.armed <- struct{}{}
	return func() {
		c.mu.Lock()
		c.ready = nil
		c.mu.Unlock()
	}
}

func (c *tryConn) TryRead(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.in) == 0 {
		if c.eof {
			return 0, io.EOF
		}
		return 0, nil
	}
	n := copy(b, c.in)
	c.in = c.in[n:]
	return n, nil
}

func (c *tryConn) TryWrite(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := min(len(b), c.writeCap)
	c.out.Write(b[:n])
	return n, nil
}

// Write is the blocking write of a goroutine serving the connection.
func (c *tryConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Write(b)
}

func (c *tryConn) Read([]byte) (int, error) { panic("a short exchange must not block in Read") }

func (c *tryConn) Close() error {
	close(c.closed)
	return nil
}

// send gives the server p (or the end of the stream) and reports readiness
// as our stack's reader does, on the calling goroutine.
func (c *tryConn) send(t *testing.T, p []byte, eof bool) {
	t.Helper()
	select {
	case <-c.armed:
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not park the connection")
	}
	c.mu.Lock()
	c.in = append(c.in, p...)
	c.eof = eof
	ready := c.ready
	c.mu.Unlock()
	if ready == nil {
		t.Fatal("parked without a readiness arrangement")
	}
	ready()
}

func (c *tryConn) output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.String()
}

// TestServedInPlace: a parked TryConn that becomes readable is answered
// on the goroutine that reports it, before that call returns; a reply the
// connection does not take whole is finished by a goroutine, which parks
// the connection again; the end of the stream ends it.
func TestServedInPlace(t *testing.T) {
	disconnected := make(chan struct{})
	ln := newPipeListener()
	out := writerFunc(func(p []byte) (int, error) {
		if strings.HasSuffix(string(p), " disconnected\n") {
			close(disconnected)
		}
		return len(p), nil
	})
	srv := NewServer(ln, ServerOptions{Out: out}, nil)
	go srv.Serve()
	defer ln.Close()
	c := newTryConn()
	ln.conns <- c

	c.send(t, []byte("hello"), false)
	if got := c.output(); got != "HELLO" {
		t.Fatalf("after readiness returned: %q, want HELLO", got)
	}
	if n := srv.InPlace(); n != 1 {
		t.Errorf("InPlace %d, want 1", n)
	}

	// A reply the connection takes 3 bytes at a time: a goroutine writes
	// the rest and parks the connection again.
	c.mu.Lock()
	c.writeCap = 3
	c.mu.Unlock()
	c.send(t, []byte("abcdefghij"), false)
	c.send(t, nil, true) // waits until parked again; then the end
	select {
	case <-c.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the end of the stream did not close the connection")
	}
	if got := c.output(); got != "HELLOABCDEFGHIJ" {
		t.Errorf("echo %q, want HELLOABCDEFGHIJ", got)
	}
	if n := srv.InPlace(); n != 1 {
		t.Errorf("InPlace %d, want 1 (the partial reply was finished by a goroutine)", n)
	}
	select {
	case <-disconnected:
	case <-time.After(10 * time.Second):
		t.Fatal("no disconnected line")
	}
	if n := srv.Conns(); n != 0 {
		t.Errorf("%d connections left", n)
	}
}
