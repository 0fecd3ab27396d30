package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Client talks to a server's control socket.
type Client struct {
	path string
	c    net.Conn
	r    *bufio.Reader
	enc  *json.Encoder
}

// Dial connects to the control socket at path.
func Dial(path string) (*Client, error) {
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return nil, dialError(path, err)
	}
	return &Client{path: path, c: c, r: bufio.NewReaderSize(c, 64<<10), enc: json.NewEncoder(c)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.c.Close() }

func (c *Client) send(req *Request) error {
	c.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := c.enc.Encode(req); err != nil {
		return fmt.Errorf("control socket %s: send %s: %w", c.path, req.Cmd, err)
	}
	return nil
}

func (c *Client) recv() (*Response, error) {
	line, err := c.r.ReadBytes('\n')
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("control socket %s: the server closed the connection", c.path)
		}
		return nil, fmt.Errorf("control socket %s: %w", c.path, err)
	}
	var r Response
	if err := json.Unmarshal(line, &r); err != nil {
		return nil, fmt.Errorf("control socket %s: bad response: %v", c.path, err)
	}
	if r.Error != "" {
		return nil, &ServerError{Msg: r.Error}
	}
	return &r, nil
}

// ServerError is an error the server answered with.
type ServerError struct{ Msg string }

func (e *ServerError) Error() string { return e.Msg }

// sendFailed explains a failed send: a server that refused us (too many
// clients, another user) wrote why before it closed, so read that first.
func (c *Client) sendFailed(err error) error {
	c.c.SetReadDeadline(time.Now().Add(time.Second))
	if _, rerr := c.recv(); rerr != nil {
		var se *ServerError
		if errors.As(rerr, &se) {
			return se
		}
	}
	return err
}

// Call sends one request and returns its response; an error response
// becomes the error.
func (c *Client) Call(cmd string, args any) (*Response, error) {
	req := &Request{Cmd: cmd}
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", cmd, err)
		}
		req.Args = b
	}
	if err := c.send(req); err != nil {
		return nil, c.sendFailed(err)
	}
	c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.c.SetReadDeadline(time.Time{})
	return c.recv()
}

// Stream sends a streaming request (with args, if not nil, as Call) and
// calls fn for each response until ctx ends (nil error), the server goes
// away, or fn fails.
func (c *Client) Stream(ctx context.Context, cmd string, args any, fn func(*Response) error) error {
	req := &Request{Cmd: cmd}
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return fmt.Errorf("%s: %w", cmd, err)
		}
		req.Args = b
	}
	if err := c.send(req); err != nil {
		return c.sendFailed(err)
	}
	stop := context.AfterFunc(ctx, func() { c.c.SetReadDeadline(time.Now()) })
	defer stop()
	for {
		r, err := c.recv()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if err := fn(r); err != nil {
			return err
		}
	}
}
