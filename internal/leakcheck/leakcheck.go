// Package leakcheck fails a test that leaves goroutines behind, in the
// spirit of wireguard-go's goroutine leak checks.
package leakcheck

import (
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"
)

// Check records the goroutines running now and, when the test ends, waits
// up to five seconds for every goroutine started since to finish. Call it
// first in the test, so its cleanup runs after all the others.
func Check(t testing.TB) {
	t.Helper()
	before := goroutines()
	t.Cleanup(func() {
		var leaked []string
		deadline := time.Now().Add(5 * time.Second)
		for {
			leaked = leaked[:0]
			for id, stack := range goroutines() {
				if _, ok := before[id]; !ok && !ignored(stack) {
					leaked = append(leaked, stack)
				}
			}
			if len(leaked) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if len(leaked) > 0 {
			sort.Strings(leaked)
			t.Errorf("%d goroutine(s) leaked:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
	})
}

func ignored(stack string) bool {
	for _, s := range []string{
		"testing.(*T).Run",
		"testing.tRunner",
		"runtime.goexit0",
		"leakcheck.goroutines",
		"os/signal.signal_recv",
		"runtime.ensureSigM",
	} {
		if strings.Contains(stack, s) {
			return true
		}
	}
	return false
}

func goroutines() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	m := map[string]string{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		header, _, _ := strings.Cut(g, "\n")
		if id, ok := strings.CutPrefix(header, "goroutine "); ok {
			id, _, _ = strings.Cut(id, " ")
			m[id] = g
		}
	}
	return m
}
