package tests

import (
	"context"
	"errors"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/app"
)

func envInt(t testing.TB, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

// TestBulkNoStall is the guard against gVisor's zero-window stall: a kernel
// TCP client in ant writes MiB-sized chunks while reading the echo at full
// speed, RUNS times, each run SIZE MiB each way, with a progress watchdog.
// TCP_UPPER_STALL_RUNS and TCP_UPPER_STALL_MIB scale it
// (scripts/stall-repeat.sh runs it longer and counts stalls).
func TestBulkNoStall(t *testing.T) { forModes(t, testBulkNoStall) }

func testBulkNoStall(t *testing.T, mode []string) {
	l := newLab(t)
	startServer(t, l, mode...)
	runs := envInt(t, "TCP_UPPER_STALL_RUNS", 6)
	mib := envInt(t, "TCP_UPPER_STALL_MIB", 256)
	stalled := 0
	for i := 0; i < runs; i++ {
		conn := dialAnt(t, l, serverAddr)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		res, err := app.Bulk(ctx, conn, app.BulkOptions{Total: int64(mib) << 20, Seed: uint64(i), StallAfter: 10 * time.Second})
		cancel()
		switch {
		case errors.Is(err, app.ErrStalled):
			stalled++
			t.Errorf("run %d: %v", i, err)
		case err != nil:
			t.Fatalf("run %d: %v", i, err)
		default:
			t.Logf("run %d: %d MiB each way in %v (%.0f MB/s each way)", i, mib, res.Elapsed.Round(time.Millisecond), float64(res.Received)/res.Elapsed.Seconds()/1e6)
		}
	}
	t.Logf("STALLS %d/%d", stalled, runs)
}
