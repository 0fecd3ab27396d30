package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

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
	// HandOff serves every readable connection from a goroutine, even
	// one that could be answered where its readiness is reported without
	// waiting (TryConn): the server as it was, for comparison.
	HandOff bool
}

// Server uppercases whatever its clients send, byte for byte, and sends it
// back as soon as it arrives.
type Server struct {
	ln   net.Listener
	opts ServerOptions
	log  *slog.Logger

	outMu sync.Mutex

	mu       sync.Mutex
	conns    map[net.Conn]*conn
	closing  bool
	handlers sync.WaitGroup
	refused  uint64    // connections closed at once: MaxConns reached
	warned   time.Time // when a refusal was last logged as a warning

	// bufs holds *[]byte of BufSize for connections receiving in bulk.
	bufs sync.Pool
	// quiet is quietAfter (shorter in tests).
	quiet time.Duration
	// inPlace counts requests answered where their readiness was
	// reported (TryConn), without a goroutine of their own.
	inPlace atomic.Uint64
}

// NewServer returns a server for ln. Call Serve to run it.
func NewServer(ln net.Listener, opts ServerOptions, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	s := &Server{ln: ln, opts: opts, log: log, conns: make(map[net.Conn]*conn), quiet: quietAfter}
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
		h := newConn(s, c)
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

// handle runs echo on a new connection and ends it.
func (s *Server) handle(c *conn) {
	c.start()
	s.println("%s connected", c.peer)
	s.echo(c)
}

// finish ends c after echo: it closes c and forgets it.
func (s *Server) finish(c *conn) {
	c.Close()
	s.mu.Lock()
	delete(s.conns, c.Conn)
	s.mu.Unlock()
	s.println("%s disconnected", c.peer)
	s.handlers.Done()
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
		h.claim()
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

// InPlace reports how many requests were answered where their readiness
// was reported (TryConn: on our stack, by the goroutine that delivered
// them) rather than by a goroutine woken for them.
func (s *Server) InPlace() uint64 { return s.inPlace.Load() }

// Conns reports how many connections are open.
func (s *Server) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}
