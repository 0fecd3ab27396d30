package cli

import (
	"bytes"
	"io"
	"sync"
)

// SyncWriter lets several goroutines share one output (stderr) without
// mixing their lines: each writes whole lines, under one lock.
type SyncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

// NewSyncWriter wraps w.
func NewSyncWriter(w io.Writer) *SyncWriter { return &SyncWriter{w: w} }

// Line writes s and a newline in one piece.
func (s *SyncWriter) Line(line string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	io.WriteString(s.w, line+"\n")
}

// Write implements io.Writer for writers that already write whole lines.
func (s *SyncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// Lines returns a writer for one producer that may write lines in pieces
// (a buffered writer flushing mid-line): it passes on only complete lines
// and keeps the rest until its newline arrives. It is not safe for
// concurrent use by several goroutines; give each producer its own.
func (s *SyncWriter) Lines() io.Writer { return &lineWriter{s: s} }

type lineWriter struct {
	s       *SyncWriter
	partial []byte
}

func (l *lineWriter) Write(p []byte) (int, error) {
	i := bytes.LastIndexByte(p, '\n')
	if i < 0 {
		l.partial = append(l.partial, p...)
		return len(p), nil
	}
	l.s.mu.Lock()
	var err error
	if len(l.partial) > 0 {
		_, err = l.s.w.Write(l.partial)
		l.partial = l.partial[:0]
	}
	if err == nil {
		_, err = l.s.w.Write(p[:i+1])
	}
	l.s.mu.Unlock()
	l.partial = append(l.partial, p[i+1:]...)
	if err != nil {
		return 0, err
	}
	return len(p), nil
}
