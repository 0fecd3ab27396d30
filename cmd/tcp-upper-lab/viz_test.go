package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// ladder and plot: what they draw from a committed experiment, and bad
// input: one line naming the fix, exit 2 for usage, 1 otherwise.
func TestLadderAndPlotCommands(t *testing.T) {
	dir := "../../viz/testdata/data-loss-rto"
	notCapture := filepath.Join(t.TempDir(), "notes.txt")
	os.WriteFile(notCapture, []byte("these are my notes, not a capture at all\n"), 0o644)
	out := t.TempDir()
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"ladder", dir}, 0, "| SYN-RCVD"},
		{[]string{"ladder", "--explain", dir, "--width", "100"}, 0, "RFC 6298"},
		{[]string{"ladder", "--pcap", dir + "/capture.pcap"}, 0, "no stack events: the wire only"},
		{[]string{"ladder", "--pcap", dir + "/capture.pcap", "--events", dir + "/events.jsonl"}, 0, "* RTO fired"},
		{[]string{"plot", dir, "--out", out}, 0, "c1-timeseq-server.svg"},
		{[]string{"ladder"}, 2, "give an experiment's output directory"},
		{[]string{"ladder", dir, "--width", "10"}, 2, "at least 64 columns"},
		{[]string{"ladder", dir, "--pcap", "x.pcap"}, 2, "not both"},
		{[]string{"ladder", dir, "--name", "lab1"}, 2, "not both"},
		{[]string{"ladder", "a", "b"}, 2, "one directory or capture"},
		{[]string{"ladder", "/nonexistent-dir"}, 1, "no such file"},
		{[]string{"ladder", notCapture}, 1, "not a pcap or pcapng file"},
		{[]string{"ladder", "--pcap", dir + "/capture.pcap", "--events", notCapture}, 1, "not an event"},
		// The hint names the file at fault: the events, not the capture.
		{[]string{"ladder", "--pcap", dir + "/capture.pcap", "--events", notCapture}, 1, "give the server's --events --events-format json output"},
		{[]string{"plot", dir + "/capture.pcap", "--events", "/nonexistent-events.jsonl"}, 1, "--events: open /nonexistent-events.jsonl: no such file or directory: give the server's"},
		{[]string{"plot", "--bogus"}, 2, "bogus"},
	} {
		var so, se bytes.Buffer
		code := run(context.Background(), c.args, &so, &se)
		got := so.String() + se.String()
		if code != c.code || !strings.Contains(got, c.want) {
			t.Errorf("%q: exit %d, want %d with %q; printed:\n%s", c.args, code, c.code, c.want, got)
		}
		if c.code != 0 && strings.Count(strings.TrimSpace(se.String()), "\n") != 0 {
			t.Errorf("%q: more than one line: %q", c.args, se.String())
		}
	}
	if _, err := os.Stat(filepath.Join(out, "c1-cwnd.svg")); err != nil {
		t.Errorf("plot wrote no cwnd graph: %v", err)
	}
}
