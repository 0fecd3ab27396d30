package app

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
)

// LineReader gives the client its input one line at a time. ReadLine
// returns the line with its newline, if it had one, and io.EOF at the end
// of input (Ctrl-D on a terminal).
type LineReader interface {
	ReadLine() (string, error)
}

// PipeLines reads lines from a non-terminal input (a pipe or a file): no
// prompt, bytes passed exactly as they come.
type PipeLines struct{ r *bufio.Reader }

// NewPipeLines returns a LineReader over r.
func NewPipeLines(r io.Reader) *PipeLines { return &PipeLines{r: bufio.NewReader(r)} }

// ReadLine implements LineReader.
func (p *PipeLines) ReadLine() (string, error) {
	line, err := p.r.ReadString('\n')
	if err == io.EOF && line != "" {
		return line, nil // a last line without a newline is still sent
	}
	return line, err
}

// ErrServerGone means the server closed or reset the connection while the
// client still expected a reply.
var ErrServerGone = errors.New("the server closed the connection")

// Session sends each input line to the server and writes the server's reply
// to out, line after line. The reply to a line has exactly the line's length
// (the server only changes letters), so the client knows when it is
// complete without any framing. At the end of input the client closes the
// connection (the active close, so TIME-WAIT lands on the client) and
// returns nil.
//
// The connection is watched while the client waits for input: if the
// server closes it (say after --idle-close), Session returns ErrServerGone
// at once instead of when the next line is typed, and its own close
// answers the server's FIN.
func Session(conn net.Conn, in LineReader, out io.Writer) error {
	defer conn.Close()
	stop := make(chan struct{})
	defer close(stop)

	type input struct {
		line string
		err  error
	}
	lines := make(chan input)
	go func() {
		for {
			l, err := in.ReadLine()
			select {
			case lines <- input{l, err}:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()

	type chunk struct {
		b   []byte
		err error
	}
	data := make(chan chunk)
	next := make(chan []byte, 1) // buffers handed back to the reader
	next <- make([]byte, 32<<10)
	go func() {
		for {
			var buf []byte
			select {
			case buf = <-next:
			case <-stop:
				return
			}
			n, err := conn.Read(buf)
			select {
			case data <- chunk{buf[:n], err}:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()

	var pending []byte // reply bytes received, not yet printed
	want := 0          // reply bytes still expected for the lines sent
	var recvErr error
	for {
		var inCh <-chan input
		if want == 0 && recvErr == nil {
			inCh = lines // one line at a time, as the seed's client
		}
		select {
		case in := <-inCh:
			if errors.Is(in.err, io.EOF) {
				return nil
			}
			if in.err != nil {
				return fmt.Errorf("read input: %w", in.err)
			}
			if in.line == "" {
				continue
			}
			if _, err := io.WriteString(conn, in.line); err != nil {
				return sessionError("send", err)
			}
			want += len(in.line)
		case c := <-data:
			pending = append(pending, c.b...)
			if c.err != nil {
				recvErr = c.err
			} else {
				next <- c.b[:cap(c.b)]
			}
			if len(pending) >= want && want > 0 {
				reply := pending
				if reply[len(reply)-1] != '\n' {
					reply = append(reply, '\n')
				}
				if _, err := out.Write(reply); err != nil {
					return fmt.Errorf("write output: %w", err)
				}
				pending, want = pending[:0], 0
			}
			if recvErr != nil {
				if want > 0 {
					return sessionError("receive", recvErr)
				}
				return sessionError("while waiting for input", recvErr)
			}
		}
	}
}

func sessionError(op string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		isResetText(err) {
		return fmt.Errorf("%s: %w", op, ErrServerGone)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// isResetText recognises the reset errors of gVisor's gonet, which carry the
// stack's error text rather than an errno.
func isResetText(err error) bool {
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Err == nil {
		return false
	}
	switch oe.Err.Error() {
	case "connection reset by peer", "connection was aborted", "endpoint is closed for send", "broken pipe":
		return true
	}
	return false
}
