package tests

import (
	"context"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/lab"
)

// BenchmarkTraceOverhead measures what watching the stack costs on the lab
// path (kernel client in ant, our server in apple): bidirectional bulk
// throughput with --trace --events and the control socket, divided by the
// same with all of them off, in alternating rounds of one run (the issue's
// goal is a ratio of at least 0.9); and the same with a full-payload
// --pcap added, which writes every byte twice more.
//
//	sudo go test ./tests -run '^$' -bench TraceOverhead -benchtime 3x
//
// TCP_UPPER_BENCH_MIB sets the bytes each way per round (default 256).
func BenchmarkTraceOverhead(b *testing.B) {
	requireRoot(b)
	mib := envInt(b, "TCP_UPPER_BENCH_MIB", 256)
	l := newLab(b)
	dir := b.TempDir()
	modes := []struct {
		name  string
		flags []string
	}{
		{"off", []string{"--control", "none"}},
		{"on", []string{"--trace", "--events", "--control", filepath.Join(dir, "ctl.sock")}},
		{"on+pcap", []string{"--trace", "--events", "--control", filepath.Join(dir, "ctl.sock"), "--pcap", filepath.Join(dir, "bench.pcap")}},
	}
	rate := map[string][]float64{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, m := range modes {
			rate[m.name] = append(rate[m.name], benchRound(b, l, mib, uint64(i), m.flags))
		}
	}
	b.StopTimer()
	off, on := median(rate["off"]), median(rate["on"])
	b.ReportMetric(off/1e6, "MB/s-off")
	b.ReportMetric(on/1e6, "MB/s-on")
	b.ReportMetric(on/off, "on/off")
	pc := median(rate["on+pcap"])
	b.ReportMetric(pc/off, "on+pcap/off")
	b.Logf("bulk each way, median of %d rounds: off %.0f MB/s; --trace --events %.0f MB/s, ratio %.2f (goal >= 0.9); with --pcap of every byte too %.0f MB/s, ratio %.2f",
		b.N, off/1e6, on/1e6, on/off, pc/1e6, pc/off)
}

// benchRound starts a server with flags (output to /dev/null, as a user
// redirecting it would), runs one bidirectional bulk transfer and returns
// bytes per second each way.
func benchRound(b *testing.B, l *lab.Lab, mib int, seed uint64, flags []string) float64 {
	args := append([]string{"--tun", "tun0", "--addr", lab.ServerAddr.String()}, flags...)
	cmd := exec.Command(bin("tcp-upper-server"), args...)
	out := &watch{}
	cmd.Stdout = out // stderr (the trace) goes to /dev/null
	if err := l.Start(lab.Apple, cmd); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
	if !out.waitFor("waiting for connections", 10*time.Second) {
		b.Fatalf("server did not start: %s", out.String())
	}
	conn := dialAnt(b, l, serverAddr)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := app.Bulk(ctx, conn, app.BulkOptions{Total: int64(mib) << 20, Seed: seed, StallAfter: 10 * time.Second})
	if err != nil {
		b.Fatalf("bulk %v: %v", flags, err)
	}
	return float64(res.Received) / res.Elapsed.Seconds()
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
