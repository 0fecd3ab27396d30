package tests

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/experiment"
	"github.com/tcp-upper/tcp-upper/lab"
)

// TestExperiments runs the whole catalogue, each in its own lab, and wants
// every expectation to pass and the three output files written.
func TestExperiments(t *testing.T) {
	requireRoot(t)
	forModes(t, testExperiments)
}

func testExperiments(t *testing.T, mode []string) {
	for _, x := range experiment.Catalogue() {
		t.Run(x.Name, func(t *testing.T) {
			var out bytes.Buffer
			dir := t.TempDir()
			opts := experiment.Options{Dir: dir, Seed: 1, Name: randomLabName(), PlainTUN: slices.Contains(mode, "--offload=false")}
			res, err := experiment.Run(context.Background(), x, opts, &out)
			if err != nil {
				t.Fatalf("%v\n%s", err, out.String())
			}
			if !res.Passed() {
				t.Fatalf("failed:\n%s", out.String())
			}
			for _, f := range []string{"capture.pcap", "events.jsonl", "summary.md", "report.html"} {
				if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Size() == 0 {
					t.Errorf("%s: %v", f, err)
				}
			}
			sum, _ := os.ReadFile(filepath.Join(dir, "summary.md"))
			if !strings.Contains(string(sum), "**PASS**") || strings.Contains(string(sum), "**FAIL**") {
				t.Errorf("summary.md:\n%s", sum)
			}
			// report.html: the verdicts, a ladder with the server's states,
			// graphs, and nothing fetched from outside.
			rep, _ := os.ReadFile(filepath.Join(dir, "report.html"))
			for _, want := range []string{x.Summary, "PASS", `<pre class="ladder">`, "ESTABLISHED", "<svg", `class="timeline"`} {
				if !strings.Contains(string(rep), strings.ReplaceAll(want, "'", "&#39;")) {
					t.Errorf("report.html lacks %q", want)
				}
			}
			for _, bad := range []string{"src=", "<link", "@import", "url(", `href="http`} {
				if strings.Contains(string(rep), bad) {
					t.Errorf("report.html refers outside itself: %q", bad)
				}
			}
		})
	}
}

// TestSynLossConnectTime measures from the kernel client's side: with
// --fault 'in syn drop count=2' connect takes about 3 s (SYN retries after
// 1 s and 2 s more), without it well under 1 s.
func TestSynLossConnectTime(t *testing.T) {
	for _, tc := range []struct {
		faults   []string
		min, max time.Duration
	}{
		{nil, 0, time.Second},
		{[]string{"--fault", "in syn drop count=2"}, 2500 * time.Millisecond, 4500 * time.Millisecond},
	} {
		l := newLab(t)
		// Linux 6.7+ first retries SYNs linearly; ask for the classic backoff.
		l.Do(lab.Ant, func() error {
			return os.WriteFile("/proc/sys/net/ipv4/tcp_syn_linear_timeouts", []byte("0"), 0)
		})
		startServer(t, l, tc.faults...)
		start := time.Now()
		dialAnt(t, l, serverAddr)
		took := time.Since(start)
		t.Logf("%v: connect took %v", tc.faults, took.Round(time.Millisecond))
		if took < tc.min || took > tc.max {
			t.Errorf("%v: connect took %v, want %v to %v", tc.faults, took, tc.min, tc.max)
		}
	}
}
