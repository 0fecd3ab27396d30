package cli

import (
	"context"
	"errors"
	"io"
	"sync"
	"syscall"
)

// Output is a program's standard output that notices its reader going away
// (`tcp-upper-lab stats | head -2`): the first write that fails with EPIPE
// marks it gone and cancels the command's context, so a streaming command
// (trace, demo) stops and cleans up; every later write fails at once. The
// program then ends quietly with exit 0, as a Unix filter does (see
// ReaderGone).
type Output struct {
	w      io.Writer
	cancel context.CancelFunc

	mu   sync.Mutex
	gone bool
}

// NewOutput wraps w; cancel is called once when the reader goes away.
func NewOutput(w io.Writer, cancel context.CancelFunc) *Output {
	return &Output{w: w, cancel: cancel}
}

// Write implements io.Writer.
func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.gone {
		return 0, syscall.EPIPE
	}
	n, err := o.w.Write(p)
	if err != nil && errors.Is(err, syscall.EPIPE) {
		o.gone = true
		if o.cancel != nil {
			o.cancel()
		}
	}
	return n, err
}

// Gone reports whether the reader has gone away.
func (o *Output) Gone() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.gone
}

// ReaderGone reports whether err (what a command returned) is nothing but
// the consequence of its reader going away: a broken pipe, or the context
// the reader's departure cancelled. Such a command exits 0 without a word;
// any other error is still reported.
func (o *Output) ReaderGone(err error) bool {
	if !o.Gone() {
		return false
	}
	return err == nil || errors.Is(err, syscall.EPIPE) || errors.Is(err, context.Canceled)
}
