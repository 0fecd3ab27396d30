package app

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/term"
)

// Prompt is the client's prompt on a terminal, as in the seed.
const Prompt = "> "

// TermLines reads lines from a terminal with the prompt "> ", line editing
// and history (golang.org/x/term). Ctrl-D on an empty line is the end of
// input. The terminal is in raw mode until Close, so replies must be written
// through Writer.
type TermLines struct {
	t     *term.Terminal
	fd    int
	state *term.State
}

// IsTerminal reports whether f is a terminal.
func IsTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// NewTermLines puts the terminal in into raw mode and returns a LineReader
// that prompts on out.
func NewTermLines(in *os.File, out io.Writer) (*TermLines, error) {
	fd := int(in.Fd())
	st, err := term.MakeRaw(fd)
	if err != nil {
		return nil, fmt.Errorf("terminal raw mode: %w", err)
	}
	t := term.NewTerminal(struct {
		io.Reader
		io.Writer
	}{in, out}, Prompt)
	return &TermLines{t: t, fd: fd, state: st}, nil
}

// ReadLine implements LineReader.
func (tl *TermLines) ReadLine() (string, error) {
	line, err := tl.t.ReadLine()
	if err != nil {
		return "", err
	}
	return line + "\n", nil
}

// Writer writes to the terminal, turning "\n" into "\r\n" while it is raw.
func (tl *TermLines) Writer() io.Writer { return tl.t }

// Close restores the terminal.
func (tl *TermLines) Close() error { return term.Restore(tl.fd, tl.state) }
