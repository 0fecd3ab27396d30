package app

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// This file keeps an idle connection cheap, so that the echo loop (echo,
// in upper.go) can stay a plain read-uppercase-write loop. A connection
// that sends nothing for a while costs a few KiB: it gives back its big
// buffer, and either parks without a goroutine (our stack) or moves to a
// fresh goroutine with a small stack (the kernel's).

// BufSize is how much one read of the server takes at most.
const BufSize = 64 << 10

// smallBufSize is the buffer each connection owns: an idle connection, or
// one exchanging short lines, never holds more. A read that fills it
// borrows a BufSize buffer from the server's pool for as long as data keeps
// coming.
const smallBufSize = 512

// quietAfter is how long a connection holding a pooled buffer may receive
// nothing before it gives the buffer back.
const quietAfter = 100 * time.Millisecond

// errResting is conn.Read's answer when the connection went quiet and
// rests: parked, or continued on a fresh goroutine. The goroutine that got
// it must return at once; echo runs again when the client sends more.
var errResting = errors.New("connection resting")

// errShutdown is conn.Read's answer once Server.Shutdown has begun.
var errShutdown = errors.New("server shutting down")

// errIdle is conn.Read's answer when IdleClose ends a connection that
// waits without a read deadline (see TryConn).
var errIdle = errors.New("idle")

// ReadNotifier is a connection that can say when it becomes readable, so
// that an idle one needs no goroutine blocked in Read. Our stack's
// connections are (netstack.Conn); the kernel's net.Conn is not, and there
// the server keeps a goroutine per connection as usual.
type ReadNotifier interface {
	// NotifyReadable arranges for ready to be called once a Read would
	// not block; ready must not block. stop undoes it.
	NotifyReadable(ready func()) (stop func())
}

// TryConn is a connection that can read and write without waiting. With
// ReadNotifier, a connection exchanging short requests then parks as soon
// as it has answered, and is served where its readiness is reported: on
// our stack (netstack.Conn) that is the goroutine that delivered the
// request, so a request is answered with no goroutine to wake. Such a
// connection's NotifyReadable must call ready outside its own locks, since
// ready reads and writes it.
type TryConn interface {
	// TryRead reads what has arrived into b: (0, nil) when nothing has,
	// io.EOF once the peer closed and everything was read.
	TryRead(b []byte) (int, error)
	// TryWrite writes as much of b as can be sent now, and says how
	// much that was.
	TryWrite(b []byte) (int, error)
}

// conn is one client connection as the server holds it: a net.Conn whose
// Read and Write also do the bookkeeping that keeps it cheap (read
// deadlines for IdleClose and for going quiet, the buffer to read into,
// parking). Its state outlives the goroutine running echo on it.
type conn struct {
	net.Conn
	s     *Server
	peer  string
	small []byte
	big   *[]byte // from s.bufs while data keeps coming
	// idleAt is when IdleClose ends the connection; deadline is the read
	// deadline set on the connection.
	idleAt, deadline time.Time
	got              bool // the last read returned data (or none yet)
	// wrote: this goroutine has written. A write on our stack runs
	// gVisor's whole send path on the writer's goroutine, which leaves it
	// with a stack of 8 KiB or more that the runtime does not shrink while
	// it waits in Read.
	wrote bool

	rn         ReadNotifier // the connection, if it can park
	onReadable func()       // c.readable, bound once (parking allocates nothing)
	// tc is the connection, if it can park and be served without waiting
	// (and ServerOptions.HandOff is off).
	tc TryConn

	// A parked connection has no goroutine: the first of readiness, the
	// IdleClose timer and Shutdown to claim it (parked true -> false)
	// starts one (see park).
	parked atomic.Bool
	parkMu sync.Mutex // held while parking; resume waits for it
	stop   func()     // ends the readiness arrangement
	timer  *time.Timer
}

func newConn(s *Server, c net.Conn) *conn {
	return &conn{Conn: c, s: s, peer: peerName(c), got: true}
}

// start readies c for its first echo (on the goroutine that runs it).
func (c *conn) start() {
	c.small = make([]byte, smallBufSize)
	c.rn, _ = c.Conn.(ReadNotifier)
	c.onReadable = c.readable
	if tc, ok := c.Conn.(TryConn); ok && c.rn != nil && !c.s.opts.HandOff {
		c.tc = tc
	}
}

// Buffer is the buffer to read into: the connection's small one, or a
// pooled BufSize one while reads keep filling the small one.
func (c *conn) Buffer() []byte {
	if c.big != nil {
		return *c.big
	}
	return c.small
}

// Read reads into b (from Buffer) after setting the read deadline that
// IdleClose and going quiet need. It returns errResting when the
// connection went quiet and rests (see rest), errShutdown once Shutdown
// has begun, and the connection's error (after logging it) otherwise.
// With data it returns no error: the next Read reports it. It may return
// (0, nil): read again, into Buffer's new answer.
func (c *conn) Read(b []byte) (int, error) {
	s := c.s
	if c.got && s.opts.IdleClose > 0 {
		c.idleAt = time.Now().Add(s.opts.IdleClose)
	}
	if c.tc != nil && c.big == nil {
		return c.tryRead(b)
	}
	want := c.idleAt
	// A connection that can park does so after s.quiet without data.
	quiet := c.big != nil || c.wrote || c.rn != nil
	if quiet {
		// Refreshed at most every s.quiet/2, not on every read.
		q := c.deadline
		if q.IsZero() || time.Until(q) < s.quiet/2 {
			q = time.Now().Add(s.quiet)
		}
		if want.IsZero() || q.Before(want) {
			want = q
		}
	}
	if !want.Equal(c.deadline) {
		if !s.setReadDeadline(c.Conn, want) {
			return 0, errShutdown
		}
		c.deadline = want
	}
	n, err := c.Conn.Read(b)
	c.got = n > 0
	if n > 0 {
		if c.big == nil && n == len(c.small) {
			c.big = s.bufs.Get().(*[]byte)
		}
		return n, nil
	}
	if err == nil {
		return 0, nil
	}
	timeout := isTimeout(err)
	if timeout && quiet && !s.isClosing() && (c.idleAt.IsZero() || time.Now().Before(c.idleAt)) {
		return 0, c.rest() // quiet, not idle
	}
	if !errors.Is(err, io.EOF) && !timeout {
		s.log.Debug("read failed", "peer", c.peer, "err", err)
	}
	if timeout && !s.isClosing() {
		s.log.Info("closing idle connection", "peer", c.peer, "idle", s.opts.IdleClose)
	}
	return 0, err
}

// tryRead is Read for a connection exchanging short requests (TryConn):
// it reads what is there, or parks c at once (errResting) when nothing is.
func (c *conn) tryRead(b []byte) (int, error) {
	s := c.s
	n, err := c.tc.TryRead(b)
	c.got = n > 0
	if n > 0 {
		if s.opts.IdleClose > 0 {
			c.idleAt = time.Now().Add(s.opts.IdleClose)
		}
		if n == len(c.small) {
			// More is coming: read it with a goroutine and a big buffer.
			c.big = s.bufs.Get().(*[]byte)
		}
		return n, nil
	}
	if err != nil {
		if !errors.Is(err, io.EOF) {
			s.log.Debug("read failed", "peer", c.peer, "err", err)
		}
		return 0, err
	}
	if s.isClosing() {
		return 0, errShutdown
	}
	if !c.idleAt.IsZero() && !time.Now().Before(c.idleAt) {
		s.log.Info("closing idle connection", "peer", c.peer, "idle", s.opts.IdleClose)
		return 0, errIdle
	}
	return 0, c.rest()
}

// serveNow is echo for a parked c that became readable (see TryConn), on
// the goroutine that reported it, which must not wait: it answers a short
// request and parks c again, or hands c to a goroutine of its own when
// serving it could wait (a long read, a reply the connection does not take
// at once, the connection's end).
func (c *conn) serveNow() {
	s := c.s
	n, err := c.Read(c.small) // tryRead: c.big is nil
	if n > 0 {
		Upper(c.small[:n])
		m, werr := c.tc.TryWrite(c.small[:n])
		switch {
		case werr != nil:
			s.log.Debug("write failed", "peer", c.peer, "err", werr)
			go s.finish(c)
		case m < n:
			go s.echoFrom(c, c.small[m:n])
		case c.big != nil:
			go s.echo(c)
		default:
			s.inPlace.Add(1)
			c.park()
		}
		return
	}
	if err == errResting {
		return // parked again (readiness with nothing to read)
	}
	go s.finish(c)
}

// Write writes b, logging a failure.
func (c *conn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err != nil {
		c.s.log.Debug("write failed", "peer", c.peer, "err", err)
		return n, err
	}
	c.wrote = true
	return n, nil
}

// rest is what a quiet connection does: it gives back the big buffer and,
// on our stack (ReadNotifier), parks without a goroutine; elsewhere, after
// this goroutine has written, it hands the connection to a fresh goroutine
// with a small stack. Either way it returns errResting, and the goroutine
// that read must return: that is what keeps an idle connection at a few
// KiB. Otherwise (nil) reading goes on here.
func (c *conn) rest() error {
	c.putBig()
	if c.rn != nil {
		c.wrote = false
		c.park()
		return errResting
	}
	if c.wrote {
		c.wrote = false
		go c.s.echo(c)
		return errResting
	}
	return nil
}

func (c *conn) putBig() {
	if c.big != nil {
		c.s.bufs.Put(c.big)
		c.big = nil
	}
}

// Close gives back the big buffer and closes the connection.
func (c *conn) Close() error {
	c.putBig()
	return c.Conn.Close()
}

// park leaves c without a goroutine until it is readable, IdleClose ends
// it, or Shutdown begins: the first of these claims it and resumes echo on
// a new goroutine.
func (c *conn) park() {
	c.parkMu.Lock()
	defer c.parkMu.Unlock()
	c.parked.Store(true)
	if !c.idleAt.IsZero() {
		c.timer = time.AfterFunc(time.Until(c.idleAt), c.claim)
	}
	c.stop = c.rn.NotifyReadable(c.onReadable)
	if c.s.isClosing() {
		c.claim() // Shutdown may have looked before we parked
	}
}

// claim resumes a parked c. It never blocks: readiness calls it under the
// stack's locks.
func (c *conn) claim() {
	if c.parked.CompareAndSwap(true, false) {
		go c.resume()
	}
}

// readable is a parked c's readiness: it serves c at once where it can
// (TryConn), or resumes echo on a goroutine.
func (c *conn) readable() {
	if c.tc == nil {
		c.claim()
		return
	}
	if c.parked.CompareAndSwap(true, false) {
		c.unpark()
		c.serveNow()
	}
}

func (c *conn) resume() {
	c.unpark()
	c.s.echo(c)
}

// unpark ends what park arranged, once it has finished arranging.
func (c *conn) unpark() {
	c.parkMu.Lock()
	if c.stop != nil {
		c.stop()
		c.stop = nil
	}
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	c.parkMu.Unlock()
}

// isTimeout reports a read deadline's expiry: os.ErrDeadlineExceeded from
// the kernel's net.Conn, a net.Error whose Timeout is true from gonet's.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}
