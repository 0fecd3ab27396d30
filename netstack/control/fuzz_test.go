package control_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/netstack/control"
)

// expectedReplies is how many response lines the server owes for in, read
// as the server reads it: one per line that is not blank, and for a line
// longer than control.MaxLine one error, after which the server hangs up.
func expectedReplies(in []byte) (n int, tooLong bool) {
	lines := bytes.Split(in, []byte("\n"))
	for i, l := range lines {
		last := i == len(lines)-1
		if !last {
			l = bytes.TrimSuffix(l, []byte("\r"))
		}
		if len(l) > control.MaxLine {
			return n + 1, true
		}
		if len(bytes.TrimSpace(l)) > 0 {
			n++
		}
	}
	return n, false
}

// FuzzRequest sends arbitrary bytes to a live control socket (a server
// stack with every command registered) and checks the protocol's promise:
// one JSON response line per request line, an error for anything that is
// not a request, a hang-up only after an over-long line, and the server
// still answering the next client.
func FuzzRequest(f *testing.F) {
	for _, s := range []string{
		`{"cmd":"hello"}` + "\n",
		`{"cmd":"ss"}` + "\n" + `{"cmd":"stats"}` + "\n",
		`{"cmd":"fault","args":{"op":"add","rule":"in syn drop count=2"}}` + "\n" + `{"cmd":"fault","args":{"op":"list"}}` + "\n",
		`{"cmd":"fault","args":{"op":"del","id":1}}` + "\n" + `{"cmd":"fault","args":"x"}` + "\n",
		`{"cmd":"events"}` + "\n",
		`{"cmd":"rm -rf"}` + "\r\n\r\n   \n",
		`{"cmd":` + "\n[1,2]\n{}\nnull\n\"ss\"\n",
		"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
		"\x00\xff\xfe\n",
		`{"cmd":"ss","args":{"deep":[[[[[[[[[[]]]]]]]]]]}}`,
		`{"cmd":"hello"}{"cmd":"ss"}` + "\n",
		strings.Repeat("x", control.MaxLine+1) + "\n" + `{"cmd":"hello"}` + "\n",
	} {
		f.Add([]byte(s))
	}
	r := newRig(f)
	// A stream would hold the connection until the client leaves; the fuzz
	// wants every request answered, so events answers once here (streams
	// are TestSSStatsHelloEvents' business).
	r.ctrl.Handle("events", func(ctx context.Context, req *control.Request, send func(*control.Response) error) error {
		return send(&control.Response{Dropped: 1})
	})
	f.Fuzz(func(t *testing.T, in []byte) {
		defer r.srv.Faults().Clear()
		want, tooLong := expectedReplies(in)
		c, err := net.Dial("unix", r.path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		werr := make(chan error, 1)
		go func() {
			_, err := c.Write(in)
			c.(*net.UnixConn).CloseWrite()
			werr <- err
		}()
		got := 0
		var lastErr string
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadBytes('\n')
			if errors.Is(err, io.EOF) && len(line) == 0 {
				break
			}
			if err != nil {
				t.Fatalf("after %d responses: %v", got, err)
			}
			var resp control.Response
			if err := json.Unmarshal(line, &resp); err != nil {
				t.Fatalf("response %q is not JSON: %v", line, err)
			}
			got++
			lastErr = resp.Error
		}
		if err := <-werr; err != nil && !tooLong {
			t.Fatalf("write: %v", err)
		}
		if got != want {
			t.Fatalf("%d responses to %q, want %d", got, in, want)
		}
		if tooLong && !strings.Contains(lastErr, "line longer than") {
			t.Fatalf("over-long line answered %q", lastErr)
		}
		// The server is still there for the next client.
		cl, err := control.Dial(r.path)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		if _, err := cl.Call("stats", nil); err != nil {
			t.Fatalf("stats after %q: %v", in, err)
		}
	})
}
