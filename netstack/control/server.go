package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// MaxClients is how many control connections a server serves at once; more
// are refused with an error line.
const MaxClients = 16

// Handler answers one request. It writes its responses with send (one for
// a plain command, many for a stream) and returns when done; ctx ends when
// the client goes away or the server closes. A returned error is sent to
// the client as an error response.
type Handler func(ctx context.Context, req *Request, send func(*Response) error) error

// Server serves a control socket.
type Server struct {
	path string
	ln   *net.UnixListener
	log  *slog.Logger
	uid  int

	mu       sync.Mutex
	handlers map[string]Handler
	conns    map[net.Conn]struct{}
	closed   bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Listen creates the control socket at path (mode 0600; its directory is
// created 0700 if missing). A stale socket left by a server that died is
// replaced; one a live server answers on is an error naming the fix.
func Listen(path string, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if len(path) >= len(unix.RawSockaddrUnix{}.Path) {
		return nil, fmt.Errorf("control socket %s: path longer than %d bytes: pick a shorter --control", path, len(unix.RawSockaddrUnix{}.Path)-1)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("control socket %s: a file that is not a socket is in the way: remove it or pick another --control", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s: in use by another running server: stop it or pick another --control", path)
		}
		os.Remove(path) // stale
	}
	// Create the socket with no permissions for others from the start (no
	// window in which another user could connect), then set 0600.
	old := unix.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		path: path, ln: ln, log: log, uid: os.Geteuid(),
		handlers: map[string]Handler{},
		conns:    map[net.Conn]struct{}{},
		ctx:      ctx, cancel: cancel,
	}
	return s, nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Handle registers h for cmd, replacing any earlier one.
func (s *Server) Handle(cmd string, h Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handlers[cmd] = h
}

// Commands lists the registered commands.
func (s *Server) Commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var cmds []string
	for c := range s.handlers {
		cmds = append(cmds, c)
	}
	sort.Strings(cmds)
	return cmds
}

// Serve accepts connections until Close. It starts a goroutine and returns
// at once.
func (s *Server) Serve() {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := s.ln.AcceptUnix()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					s.log.Warn("control socket: accept", "err", err)
				}
				return
			}
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				c.Close()
				return
			}
			full := len(s.conns) >= MaxClients
			if !full {
				s.conns[c] = struct{}{}
			}
			s.mu.Unlock()
			if full {
				refuse(c, fmt.Sprintf("too many control connections (%d): close one", MaxClients))
				continue
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() {
					s.mu.Lock()
					delete(s.conns, c)
					s.mu.Unlock()
					c.Close()
				}()
				s.serveConn(c)
			}()
		}
	}()
}

func refuse(c net.Conn, msg string) {
	c.SetWriteDeadline(time.Now().Add(time.Second))
	json.NewEncoder(c).Encode(&Response{Error: msg})
	c.Close()
}

// peerUID is the uid of the process at the other end (SO_PEERCRED).
func peerUID(c *net.UnixConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return -1, err
	}
	if serr != nil {
		return -1, serr
	}
	return int(cred.Uid), nil
}

func (s *Server) serveConn(c *net.UnixConn) {
	uid, err := peerUID(c)
	if err != nil {
		refuse(c, fmt.Sprintf("cannot tell who you are (SO_PEERCRED: %v)", err))
		return
	}
	if uid != s.uid && uid != 0 {
		s.log.Warn("control socket: refused a client of another user", "uid", uid)
		refuse(c, fmt.Sprintf("permission denied: uid %d is not the server's owner (uid %d)", uid, s.uid))
		return
	}
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()

	var wmu sync.Mutex
	enc := json.NewEncoder(c)
	send := func(r *Response) error {
		wmu.Lock()
		defer wmu.Unlock()
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		return enc.Encode(r)
	}

	// Requests are read in their own goroutine, so a stream notices the
	// client leaving (EOF) while it is sending.
	reqs := make(chan []byte)
	go func() {
		defer close(reqs)
		defer cancel()
		r := bufio.NewReaderSize(c, 4096)
		for {
			line, err := readLine(r)
			if errors.Is(err, errLineTooLong) {
				send(&Response{Error: fmt.Sprintf("bad request: line longer than %d bytes", MaxLine)})
				return
			}
			if err != nil {
				return
			}
			select {
			case reqs <- line:
			case <-ctx.Done():
				return
			}
		}
	}()
	for line := range reqs {
		if len(strings.TrimSpace(string(line))) == 0 {
			continue
		}
		var req Request
		if err := json.Unmarshal(line, &req); err != nil || req.Cmd == "" {
			msg := "bad request: want one JSON object per line, like {\"cmd\":\"ss\"}"
			if err != nil {
				msg += fmt.Sprintf(" (%s)", jsonError(err))
			}
			if send(&Response{Error: msg}) != nil {
				return
			}
			continue
		}
		if err := s.dispatch(ctx, &req, send); err != nil {
			return
		}
	}
}

// dispatch runs one request; it returns an error only when the connection
// is no longer usable.
func (s *Server) dispatch(ctx context.Context, req *Request, send func(*Response) error) error {
	s.mu.Lock()
	h, ok := s.handlers[req.Cmd]
	s.mu.Unlock()
	if !ok || h == nil {
		return send(&Response{Error: fmt.Sprintf("unknown command %q: want one of %s", req.Cmd, strings.Join(s.Commands(), ", "))})
	}
	if err := h(ctx, req, send); err != nil {
		// The connection is gone (a failed send), or a stream ended
		// because the client left: nothing to answer. Any other error is
		// the request's, and is answered even when the client has already
		// half-closed (a request piped in and EOF).
		if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, os.ErrDeadlineExceeded) ||
			errors.Is(err, net.ErrClosed) || (ctx.Err() != nil && errors.Is(err, ctx.Err())) {
			return err
		}
		return send(&Response{Error: err.Error()})
	}
	return nil
}

func jsonError(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("invalid JSON at byte %d: %v", se.Offset, se)
	}
	return err.Error()
}

var errLineTooLong = errors.New("line too long")

func readLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		frag, isPrefix, err := r.ReadLine()
		if err != nil {
			if err == io.EOF && len(line) > 0 {
				return line, nil
			}
			return nil, err
		}
		line = append(line, frag...)
		if len(line) > MaxLine {
			return nil, errLineTooLong
		}
		if !isPrefix {
			return line, nil
		}
	}
}

// Close stops the server: it closes the listener (removing the socket
// file) and every connection, and waits for their goroutines.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.cancel()
	err := s.ln.Close()
	s.wg.Wait()
	return err
}
