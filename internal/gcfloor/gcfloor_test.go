package gcfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
)

func TestPercent(t *testing.T) {
	const mb = 1 << 20
	for _, tc := range []struct {
		base        int
		live, floor uint64
		want        int
	}{
		{100, 0, 32 * mb, 800},        // the minimum heap reaches 32 MB at 800
		{100, 1 * mb, 32 * mb, 800},   // 1 MB live: 9 MB by live, 32 by the minimum
		{100, 8 * mb, 32 * mb, 300},   // 8 MB*(1+3) = 32 MB
		{100, 16 * mb, 32 * mb, 100},  // 16 MB*2 = 32 MB: GOGC as found
		{100, 100 * mb, 32 * mb, 100}, // a large heap: GOGC as found
		{200, 100 * mb, 32 * mb, 200}, // a GOGC set higher is kept
		{100, 1 * mb, 4 * mb, 100},    // a floor at Go's own minimum: nothing to do
	} {
		if got := percent(tc.base, tc.live, tc.floor); got != tc.want {
			t.Errorf("percent(%d, %d, %d) = %d, want %d", tc.base, tc.live, tc.floor, got, tc.want)
		}
	}
}

// After a collection with a small live heap, the heap goal is at the
// floor, not Go's 4 MB; stop restores GOGC.
func TestStart(t *testing.T) {
	const floor = 32 << 20
	before := debug.SetGCPercent(100)
	defer debug.SetGCPercent(before)
	stop := Start(floor)
	goal := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}}
	var got uint64
	for i := 0; i < 20; i++ { // the cleanup runs on its own goroutine after a GC
		runtime.GC()
		runtime.GC()
		metrics.Read(goal)
		if got = goal[0].Value.Uint64(); got >= floor*9/10 {
			break
		}
	}
	if got < floor*9/10 || got > floor*3/2 {
		t.Errorf("heap goal %d bytes, want about %d", got, floor)
	}
	stop()
	if p := debug.SetGCPercent(100); p != 100 {
		t.Errorf("GOGC after stop %d, want 100", p)
	}
}
