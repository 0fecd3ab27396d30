package experiment

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNoSleepAsBarrier: the experiments and the demo's narrator wait for
// what they expect (Env.Await, the tracker's Sync, the trace's Flush),
// never for a guessed time.
func TestNoSleepAsBarrier(t *testing.T) {
	files, _ := filepath.Glob("*.go")
	files = append(files, filepath.Join("..", "cmd", "tcp-upper-lab", "narrate.go"))
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "time.Sleep(") {
				t.Errorf("%s:%d: %s", f, i+1, strings.TrimSpace(line))
			}
		}
	}
}
