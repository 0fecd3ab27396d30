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
func Session(conn net.Conn, in LineReader, out io.Writer) error {
	defer conn.Close()
	var reply []byte
	for {
		line, err := in.ReadLine()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read input: %w", err)
		}
		if line == "" {
			continue
		}
		if _, err := io.WriteString(conn, line); err != nil {
			return sessionError("send", err)
		}
		if cap(reply) < len(line) {
			reply = make([]byte, len(line))
		}
		reply = reply[:len(line)]
		if _, err := io.ReadFull(conn, reply); err != nil {
			return sessionError("receive", err)
		}
		if reply[len(reply)-1] != '\n' {
			reply = append(reply, '\n')
		}
		if _, err := out.Write(reply); err != nil {
			return fmt.Errorf("write output: %w", err)
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
