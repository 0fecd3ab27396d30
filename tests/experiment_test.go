package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/experiment"
	"github.com/tcp-upper/tcp-upper/lab"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
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
			for _, f := range []string{"capture.pcap", "events.jsonl", "timeline.jsonl", "summary.md", "report.html"} {
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

// stateSequence is the state events of an experiment's events.jsonl, in
// order: "FROM>TO ...".
func stateSequence(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "events.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var evs []inspect.Event
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var ev inspect.Event
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("events.jsonl line %q: %v", l, err)
		}
		evs = append(evs, ev)
	}
	// Each end's own sequence: the two ends' clocks order their events
	// against each other only to within microseconds.
	var ours, kernel []inspect.Event
	for _, ev := range evs {
		if ev.Stack == inspect.StackKernel {
			kernel = append(kernel, ev)
		} else {
			ours = append(ours, ev)
		}
	}
	return transitions(ours) + " | kernel: " + transitions(kernel)
}

// captureRSTs counts the segments with RST in a capture, as tshark reads
// it.
func captureRSTs(t *testing.T, pcap string) int {
	t.Helper()
	out, err := exec.Command("tshark", "-r", pcap, "-Y", "tcp.flags.reset == 1", "-T", "fields", "-e", "frame.number").Output()
	if err != nil {
		t.Fatalf("tshark -r %s: %v", pcap, err)
	}
	return len(strings.Fields(string(out)))
}

// TestExperimentsRepeat: the same seed gives the same sequence of state
// events, run after run, in both link modes: the experiment decides who
// closes first and waits for the close to finish, so timing does not.
// Every close is clean: the captures hold no RST.
func TestExperimentsRepeat(t *testing.T) {
	requireRoot(t)
	requireTool(t, "tshark")
	// Ours, then the kernel client's (from its tracepoints).
	const clientCloses = "LISTEN>SYN-RCVD SYN-RCVD>ESTABLISHED ESTABLISHED>CLOSE-WAIT CLOSE-WAIT>LAST-ACK LAST-ACK>CLOSED" +
		" | kernel: CLOSED>SYN-SENT SYN-SENT>ESTABLISHED ESTABLISHED>FIN-WAIT-1 FIN-WAIT-1>FIN-WAIT-2 FIN-WAIT-2>TIME-WAIT"
	want := map[string]string{
		"handshake":       clientCloses,
		"syn-ack-loss":    clientCloses,
		"reorder":         clientCloses,
		"fast-retransmit": clientCloses,
	}
	forModes(t, func(t *testing.T, mode []string) {
		for _, name := range []string{"handshake", "syn-ack-loss", "reorder", "fast-retransmit"} {
			x, err := experiment.Find(name)
			if err != nil {
				t.Fatal(err)
			}
			t.Run(name, func(t *testing.T) {
				for run := 1; run <= 3; run++ {
					var out bytes.Buffer
					dir := t.TempDir()
					opts := experiment.Options{Dir: dir, Seed: 11, Name: randomLabName(), PlainTUN: slices.Contains(mode, "--offload=false")}
					res, err := experiment.Run(context.Background(), x, opts, &out)
					if err != nil {
						t.Fatalf("run %d: %v\n%s", run, err, out.String())
					}
					if !res.Passed() {
						t.Fatalf("run %d failed:\n%s", run, out.String())
					}
					if got := stateSequence(t, dir); got != want[name] {
						t.Fatalf("run %d with seed 11: states\n got %s\nwant %s", run, got, want[name])
					}
					if n := captureRSTs(t, filepath.Join(dir, "capture.pcap")); n != 0 {
						tsh, _ := exec.Command("tcpdump", "-nr", filepath.Join(dir, "capture.pcap")).CombinedOutput()
						t.Fatalf("run %d: %d RST segments in the capture:\n%s", run, n, tsh)
					}
				}
			})
		}
	})
}

// TestCaptureMarksFaults: the experiment's capture (pcapng) marks each
// packet the fault layer acted on with a comment tshark reads: the
// client's SYNs dropped before our stack (kept in the capture, marked),
// our data segment dropped on its way out, and the client's segments our
// stack received duplicated, corrupted or overtaken. tcpdump reads the
// same files.
func TestCaptureMarksFaults(t *testing.T) {
	requireRoot(t)
	requireTool(t, "tshark")
	requireTool(t, "tcpdump")
	for _, tc := range []struct {
		name  string
		marks []string // "FLAGS\tCOMMENT", in order
	}{
		{"syn-loss", []string{"S\tdropped by rule 1: in syn drop count=2", "S\tdropped by rule 1: in syn drop count=2"}},
		{"fast-retransmit", []string{"A\tdropped by rule 1: out data drop nth=20"}},
		{"duplicate", []string{"A\tduplicated by rule 1: in data dup nth=3", "A\tcopy 1 of it, made by rule 1: in data dup nth=3"}},
		{"corruption", []string{"A\tcorrupted by rule 1: in data corrupt count=3", "A\tcorrupted by rule 1: in data corrupt count=3", "A\tcorrupted by rule 1: in data corrupt count=3"}},
		{"reorder", []string{"AP\theld back to be overtaken by rule 1: in data reorder nth=5"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x, err := experiment.Find(tc.name)
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			dir := t.TempDir()
			res, err := experiment.Run(context.Background(), x, experiment.Options{Dir: dir, Seed: 1, Name: randomLabName()}, &out)
			if err != nil || !res.Passed() {
				t.Fatalf("%v\n%s", err, out.String())
			}
			pcap := filepath.Join(dir, "capture.pcap")
			ts, err := exec.Command("tshark", "-r", pcap, "-Y", "frame.comment", "-T", "fields", "-e", "tcp.flags.str", "-e", "frame.comment").Output()
			if err != nil {
				t.Fatalf("tshark: %v", err)
			}
			var got []string
			for _, row := range strings.Split(strings.TrimSpace(string(ts)), "\n") {
				flags, comment, _ := strings.Cut(row, "\t")
				// tshark draws the flags as ·······A··S·: keep the letters.
				got = append(got, strings.Map(func(r rune) rune {
					if r >= 'A' && r <= 'Z' {
						return r
					}
					return -1
				}, flags)+"\t"+comment)
			}
			if strings.Join(got, "\n") != strings.Join(tc.marks, "\n") {
				t.Fatalf("marked packets:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.marks, "\n"))
			}
			if td, err := exec.Command("tcpdump", "-nr", pcap).Output(); err != nil || !strings.Contains(string(td), "Flags [S.]") {
				t.Fatalf("tcpdump -r: %v\n%s", err, td)
			}
		})
	}
}
