package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

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

// ServerOptions configure a Server.
type ServerOptions struct {
	// Out receives the seed's lines ("listening at port: ...",
	// "PEER connected", "PEER disconnected"). Nil discards them.
	Out io.Writer
	// IdleClose, when positive, closes a connection that has received
	// nothing for that long (the server then closes first, so TIME-WAIT
	// lands on the server's side).
	IdleClose time.Duration
	// MaxConns, when positive, is how many connections are served at
	// once: at the limit a new connection is closed as soon as it is
	// accepted (the client reads EOF at once), counted (Refused) and
	// logged. With IdleClose, idle connections free their places.
	MaxConns int
}

// Server uppercases whatever its clients send, byte for byte, and sends it
// back as soon as it arrives.
type Server struct {
	ln   net.Listener
	opts ServerOptions
	log  *slog.Logger

	outMu sync.Mutex

	mu       sync.Mutex
	conns    map[net.Conn]*connState
	closing  bool
	handlers sync.WaitGroup
	refused  uint64    // connections closed at once: MaxConns reached
	warned   time.Time // when a refusal was last logged as a warning

	// bufs holds *[]byte of BufSize for connections receiving in bulk.
	bufs sync.Pool
	// quiet is quietAfter (shorter in tests).
	quiet time.Duration
}

// NewServer returns a server for ln. Call Serve to run it.
func NewServer(ln net.Listener, opts ServerOptions, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	s := &Server{ln: ln, opts: opts, log: log, conns: make(map[net.Conn]*connState), quiet: quietAfter}
	s.bufs.New = func() any { b := make([]byte, BufSize); return &b }
	return s
}

// ListenLine is the seed's first line for a listener on addr.
func ListenLine(addr net.Addr) string {
	host, port := "0.0.0.0", "?"
	if ta, ok := addr.(*net.TCPAddr); ok {
		if len(ta.IP) != 0 && !ta.IP.IsUnspecified() {
			host = ta.IP.String()
		}
		port = fmt.Sprint(ta.Port)
	}
	return fmt.Sprintf("listening at port: %s:%s, waiting for connections...", host, port)
}

func (s *Server) println(format string, args ...any) {
	s.outMu.Lock()
	defer s.outMu.Unlock()
	fmt.Fprintf(s.opts.Out, format+"\n", args...)
}

// Serve prints the listening line and accepts connections until Shutdown.
// It returns nil after Shutdown and the accept error otherwise.
func (s *Server) Serve() error {
	s.println("%s", ListenLine(s.ln.Addr()))
	for {
		c, err := s.ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			c.Close()
			return nil
		}
		if s.opts.MaxConns > 0 && len(s.conns) >= s.opts.MaxConns {
			s.refuse(c)
			s.mu.Unlock()
			continue
		}
		h := &connState{c: c, peer: peerName(c), got: true}
		s.conns[c] = h
		s.handlers.Add(1)
		s.mu.Unlock()
		go s.handle(h)
	}
}

// refuse closes c at once because MaxConns connections are open, counts
// it, and logs it: every refusal at debug level, and a warning with the
// running total at most once a second (a flood of refusals must not flood
// the log). s.mu is held.
func (s *Server) refuse(c net.Conn) {
	s.refused++
	peer := peerName(c)
	c.Close()
	s.log.Debug("refused a connection: --max-conns reached", "peer", peer, "max_conns", s.opts.MaxConns)
	if now := time.Now(); now.Sub(s.warned) >= time.Second {
		s.warned = now
		s.log.Warn("refusing connections: --max-conns reached", "peer", peer, "max_conns", s.opts.MaxConns, "refused_total", s.refused)
	}
}

// peerName is c's remote address as the seed prints it. Our stack's and
// the kernel's connections keep the address they were accepted with even
// after a reset; another net.Conn may not, and must not crash the server.
func peerName(c net.Conn) string {
	if a := c.RemoteAddr(); a != nil {
		return a.String()
	}
	return "unknown-peer"
}

// handle echoes c's data uppercased until EOF, an error, IdleClose or
// Shutdown. It reads into a small buffer of its own and switches to a
// pooled BufSize buffer only while reads keep filling the small one; after
// s.quiet without data it returns the pooled buffer, so idle connections
// cost little memory.
func (s *Server) handle(h *connState) {
	h.small = make([]byte, smallBufSize)
	h.rn, _ = h.c.(ReadNotifier)
	s.println("%s connected", h.peer)
	s.echo(h)
}

// ReadNotifier is a connection that can say when it becomes readable, so
// that an idle one needs no goroutine blocked in Read. Our stack's
// connections are (netstack.Conn); the kernel's net.Conn is not, and there
// the server keeps a goroutine per connection as usual.
type ReadNotifier interface {
	// NotifyReadable arranges for ready to be called once a Read would
	// not block; ready must not block. stop undoes it.
	NotifyReadable(ready func()) (stop func())
}

// connState is a connection's handler state, which outlives the goroutine
// running it (see echo).
type connState struct {
	c     net.Conn
	peer  string
	small []byte
	big   *[]byte // from s.bufs while data keeps coming
	// idleAt is when IdleClose ends the connection; deadline is the read
	// deadline set on c.
	idleAt, deadline time.Time
	got              bool // the last read returned data (or none yet)
	// wrote: this goroutine has written. A write on our stack runs
	// gVisor's whole send path on the writer's goroutine, which leaves it
	// with a stack of 8 KiB or more that the runtime does not shrink while
	// it waits in Read.
	wrote bool

	rn ReadNotifier // h.c, if it can park

	// A parked connection has no goroutine: the first of readiness, the
	// IdleClose timer and Shutdown to claim it (parked true -> false)
	// starts one (see park).
	parked atomic.Bool
	parkMu sync.Mutex // held while parking; resume waits for it
	stop   func()     // ends the readiness arrangement
	timer  *time.Timer
}

// echo runs h's read-uppercase-write loop. When the connection goes quiet
// (nothing for s.quiet) it gives back the big buffer and, on our stack
// (ReadNotifier), parks the connection without a goroutine; elsewhere,
// after this goroutine has written, it hands the connection to a fresh
// goroutine with a small stack. Either way it returns: that is what keeps
// an idle connection at a few KiB. Busy connections never switch.
func (s *Server) echo(h *connState) {
	for {
		if h.got && s.opts.IdleClose > 0 {
			h.idleAt = time.Now().Add(s.opts.IdleClose)
		}
		want := h.idleAt
		// A connection that can park does so after s.quiet without data.
		quiet := h.big != nil || h.wrote || h.rn != nil
		if quiet {
			// Refreshed at most every s.quiet/2, not on every read.
			q := h.deadline
			if q.IsZero() || time.Until(q) < s.quiet/2 {
				q = time.Now().Add(s.quiet)
			}
			if want.IsZero() || q.Before(want) {
				want = q
			}
		}
		if !want.Equal(h.deadline) {
			if !s.setReadDeadline(h.c, want) {
				break // Shutdown has begun
			}
			h.deadline = want
		}
		buf := h.small
		if h.big != nil {
			buf = *h.big
		}
		n, err := h.c.Read(buf)
		h.got = n > 0
		if n > 0 {
			Upper(buf[:n])
			if _, werr := h.c.Write(buf[:n]); werr != nil {
				s.log.Debug("write failed", "peer", h.peer, "err", werr)
				break
			}
			h.wrote = true
			if h.big == nil && n == len(h.small) {
				h.big = s.bufs.Get().(*[]byte)
			}
		}
		if err != nil {
			timeout := isTimeout(err)
			if timeout && quiet && !s.isClosing() && (h.idleAt.IsZero() || time.Now().Before(h.idleAt)) {
				// Quiet, not idle.
				if h.big != nil {
					s.bufs.Put(h.big)
					h.big = nil
				}
				if h.rn != nil {
					h.wrote = false
					s.park(h)
					return
				}
				if h.wrote {
					h.wrote = false
					go s.echo(h)
					return
				}
				continue
			}
			if !errors.Is(err, io.EOF) && !timeout {
				s.log.Debug("read failed", "peer", h.peer, "err", err)
			}
			if timeout && !s.isClosing() {
				s.log.Info("closing idle connection", "peer", h.peer, "idle", s.opts.IdleClose)
			}
			break
		}
	}
	if h.big != nil {
		s.bufs.Put(h.big)
		h.big = nil
	}
	h.c.Close()
	s.mu.Lock()
	delete(s.conns, h.c)
	s.mu.Unlock()
	s.println("%s disconnected", h.peer)
	s.handlers.Done()
}

// park leaves h without a goroutine until it is readable, IdleClose ends
// it, or Shutdown begins: the first of these claims it and resumes echo on
// a new goroutine.
func (s *Server) park(h *connState) {
	h.parkMu.Lock()
	defer h.parkMu.Unlock()
	h.parked.Store(true)
	if !h.idleAt.IsZero() {
		h.timer = time.AfterFunc(time.Until(h.idleAt), func() { s.claim(h) })
	}
	h.stop = h.rn.NotifyReadable(func() { s.claim(h) })
	if s.isClosing() {
		s.claim(h) // Shutdown may have looked before we parked
	}
}

// claim resumes a parked h. It never blocks: readiness calls it under the
// stack's locks.
func (s *Server) claim(h *connState) {
	if h.parked.CompareAndSwap(true, false) {
		go s.resume(h)
	}
}

func (s *Server) resume(h *connState) {
	h.parkMu.Lock() // park has finished arranging
	if h.stop != nil {
		h.stop()
		h.stop = nil
	}
	if h.timer != nil {
		h.timer.Stop()
		h.timer = nil
	}
	h.parkMu.Unlock()
	s.echo(h)
}

// isTimeout reports a read deadline's expiry: os.ErrDeadlineExceeded from
// the kernel's net.Conn, a net.Error whose Timeout is true from gonet's.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// setReadDeadline sets c's read deadline unless Shutdown has begun (its
// immediate deadline, which wakes the handler, must not be overwritten);
// then it reports false.
func (s *Server) setReadDeadline(c net.Conn, t time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	c.SetReadDeadline(t)
	return true
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Shutdown stops accepting, ends every connection with a FIN (each handler
// finishes the echo it is writing, then closes) and waits for the handlers,
// or until ctx ends, when it closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for c, h := range s.conns {
		// Wake a handler blocked in Read, or a parked connection; it
		// then closes.
		c.SetReadDeadline(time.Now())
		s.claim(h)
	}
	s.mu.Unlock()
	s.ln.Close()

	done := make(chan struct{})
	go func() { s.handlers.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		n := len(s.conns)
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		<-done
		return fmt.Errorf("shutdown: forced %d connection(s) closed: %w", n, ctx.Err())
	}
}

// Refused reports how many connections were closed at once because
// MaxConns connections were open.
func (s *Server) Refused() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refused
}

// Conns reports how many connections are open.
func (s *Server) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}
