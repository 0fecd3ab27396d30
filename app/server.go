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
	"time"
)

// BufSize is how much one read of the server takes at most.
const BufSize = 64 << 10

// smallBufSize is the buffer each connection owns: an idle connection, or
// one exchanging short lines, never holds more. A read that fills it
// borrows a BufSize buffer from the server's pool for as long as data keeps
// coming.
const smallBufSize = 2 << 10

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
	conns    map[net.Conn]struct{}
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
	s := &Server{ln: ln, opts: opts, log: log, conns: make(map[net.Conn]struct{}), quiet: quietAfter}
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
		s.conns[c] = struct{}{}
		s.handlers.Add(1)
		s.mu.Unlock()
		go s.handle(c)
	}
}

// refuse closes c at once because MaxConns connections are open, counts
// it, and logs it: every refusal at debug level, and a warning with the
// running total at most once a second (a flood of refusals must not flood
// the log). s.mu is held.
func (s *Server) refuse(c net.Conn) {
	s.refused++
	peer := c.RemoteAddr().String()
	c.Close()
	s.log.Debug("refused a connection: --max-conns reached", "peer", peer, "max_conns", s.opts.MaxConns)
	if now := time.Now(); now.Sub(s.warned) >= time.Second {
		s.warned = now
		s.log.Warn("refusing connections: --max-conns reached", "peer", peer, "max_conns", s.opts.MaxConns, "refused_total", s.refused)
	}
}

// handle echoes c's data uppercased until EOF, an error, IdleClose or
// Shutdown. It reads into a small buffer of its own and switches to a
// pooled BufSize buffer only while reads keep filling the small one; after
// s.quiet without data it returns the pooled buffer, so idle connections
// cost little memory.
func (s *Server) handle(c net.Conn) {
	defer s.handlers.Done()
	peer := c.RemoteAddr().String()
	s.println("%s connected", peer)
	small := make([]byte, smallBufSize)
	var big *[]byte // from s.bufs while data keeps coming
	defer func() {
		if big != nil {
			s.bufs.Put(big)
		}
	}()
	var idleAt, deadline time.Time // IdleClose's end; the deadline set on c
	got := true                    // the last read returned data (or none yet)
	for {
		if got && s.opts.IdleClose > 0 {
			idleAt = time.Now().Add(s.opts.IdleClose)
		}
		want := idleAt
		if big != nil {
			// Refreshed at most every s.quiet/2, not on every read.
			q := deadline
			if q.IsZero() || time.Until(q) < s.quiet/2 {
				q = time.Now().Add(s.quiet)
			}
			if want.IsZero() || q.Before(want) {
				want = q
			}
		}
		if !want.Equal(deadline) {
			if !s.setReadDeadline(c, want) {
				break // Shutdown has begun
			}
			deadline = want
		}
		buf := small
		if big != nil {
			buf = *big
		}
		n, err := c.Read(buf)
		got = n > 0
		if n > 0 {
			Upper(buf[:n])
			if _, werr := c.Write(buf[:n]); werr != nil {
				s.log.Debug("write failed", "peer", peer, "err", werr)
				break
			}
			if big == nil && n == len(small) {
				big = s.bufs.Get().(*[]byte)
			}
		}
		if err != nil {
			timeout := isTimeout(err)
			if timeout && big != nil && !s.isClosing() && (idleAt.IsZero() || time.Now().Before(idleAt)) {
				// Quiet, not idle: give the big buffer back and wait on
				// the small one.
				s.bufs.Put(big)
				big = nil
				continue
			}
			if !errors.Is(err, io.EOF) && !timeout {
				s.log.Debug("read failed", "peer", peer, "err", err)
			}
			if timeout && !s.isClosing() {
				s.log.Info("closing idle connection", "peer", peer, "idle", s.opts.IdleClose)
			}
			break
		}
	}
	c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.println("%s disconnected", peer)
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
	for c := range s.conns {
		// Wake a handler blocked in Read; it then closes its connection.
		c.SetReadDeadline(time.Now())
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
