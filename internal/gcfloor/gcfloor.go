// Package gcfloor keeps the Go garbage collector's heap goal from falling
// below a floor while the live heap is small.
//
// With a small live heap Go collects every 4 MB of allocation (GOGC=100).
// Our server under request/response allocates about 1.7 KB per round
// trip, so it collected every 100 ms (GODEBUG=gctrace=1), and every 100
// ms a round trip took 0.6-2 ms instead of 60 µs, a few after it 150-300
// µs; with GOGC=off none did (docs/PERFORMANCE.md). Go has no
// setting for the minimum heap other than GOGC, which scales every heap:
// Start adjusts GOGC after each collection so that the next goal is about
// the floor while the live heap is small, and leaves the GOGC it found
// (100 by default) once the live heap is large enough for that goal to
// reach the floor by itself.
package gcfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// heapMinimum is Go's minimum heap goal at GOGC=100 (runtime's
// defaultHeapMinimum); it scales with GOGC.
const heapMinimum = 4 << 20

// percent is the smallest GOGC at or above base whose heap goal, with
// live bytes marked live by the last collection, reaches floor. Go's
// goal is the larger of live*(1+GOGC/100) and heapMinimum*GOGC/100.
func percent(base int, live, floor uint64) int {
	byMin := floor * 100 / heapMinimum
	p := byMin
	if live >= floor {
		p = 0
	} else if live > 0 {
		if byLive := (floor - live) * 100 / live; byLive < p {
			p = byLive
		}
	}
	if p < uint64(base) {
		return base
	}
	return int(p)
}

// Start keeps the heap goal at about floor bytes or more, adjusting GOGC
// after every collection, until stop is called (stop restores the GOGC
// it found). With GOGC off (GOGC=off) or floor 0 it does nothing.
func Start(floor uint64) (stop func()) {
	base := debug.SetGCPercent(100)
	debug.SetGCPercent(base)
	if base < 0 || floor == 0 {
		return func() {}
	}
	var stopped atomic.Bool
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	set := base
	adjust := func() {
		metrics.Read(sample)
		if sample[0].Value.Kind() != metrics.KindUint64 {
			return
		}
		if p := percent(base, sample[0].Value.Uint64(), floor); p != set {
			debug.SetGCPercent(p)
			set = p
		}
	}
	adjust()
	// A cleanup runs after the collection that found its object
	// unreachable: one sentinel per collection.
	var arm func()
	arm = func() {
		s := new([16]byte)
		runtime.AddCleanup(s, func(struct{}) {
			if stopped.Load() {
				return
			}
			adjust()
			arm()
		}, struct{}{})
	}
	arm()
	return func() {
		if stopped.CompareAndSwap(false, true) {
			debug.SetGCPercent(base)
		}
	}
}
