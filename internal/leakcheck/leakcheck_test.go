package leakcheck

import (
	"strings"
	"testing"
)

// recorder runs cleanups on demand and records errors.
type recorder struct {
	testing.TB
	cleanups []func()
	errs     []string
}

func (r *recorder) Helper()          {}
func (r *recorder) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }
func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, format)
}

func TestDetectsLeak(t *testing.T) {
	r := &recorder{TB: t}
	Check(r)
	stop := make(chan struct{})
	go func() { <-stop }()
	for _, f := range r.cleanups {
		f()
	}
	close(stop)
	if len(r.errs) != 1 || !strings.Contains(r.errs[0], "leaked") {
		t.Fatalf("leak not reported: %v", r.errs)
	}
}

func TestNoLeak(t *testing.T) {
	r := &recorder{TB: t}
	Check(r)
	done := make(chan struct{})
	go func() { close(done) }()
	<-done
	for _, f := range r.cleanups {
		f()
	}
	if len(r.errs) != 0 {
		t.Fatalf("false leak: %v", r.errs)
	}
}
