// Package handoff moves items from the packet path to a background
// goroutine without making the packet path wait or pay for a wake-up per
// item.
//
// The trace layer and the connection tracker are fed from gVisor's hot
// paths (every packet, and the TCP probe under the endpoint lock). A
// channel send per packet wakes the consumer per packet, which on a
// two-core machine costs more than the work itself. A Queue instead
// appends under a short lock, wakes the consumer only when the queue goes
// from empty to non-empty (Ready) or reaches half of its bound (Full), and
// lets the consumer take everything at once.
package handoff

import (
	"sync"
	"sync/atomic"
	"time"
)

// Queue is a bounded multi-producer, single-consumer batch queue.
type Queue[T any] struct {
	mu    sync.Mutex
	items []T
	spare []T
	max   int
	high  int // Full's mark
	ready chan struct{}
	full  chan struct{}

	dropped atomic.Uint64
}

// New returns a queue that holds at most limit items; Push drops (and
// counts) beyond that.
func New[T any](limit int) *Queue[T] {
	return &Queue[T]{items: make([]T, 0, 64), spare: make([]T, 0, 64), max: limit, high: max(limit/2, 1),
		ready: make(chan struct{}, 1), full: make(chan struct{}, 1)}
}

// Push queues v. It never blocks; it returns false, counting a drop, if
// the queue is full.
func (q *Queue[T]) Push(v T) bool {
	q.mu.Lock()
	if len(q.items) >= q.max {
		q.mu.Unlock()
		q.dropped.Add(1)
		return false
	}
	q.items = append(q.items, v)
	n := len(q.items)
	q.mu.Unlock()
	if n == 1 {
		signal(q.ready)
	}
	if n == q.high {
		signal(q.full)
	}
	return true
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Ready receives a value when items are waiting: one value when the queue
// goes from empty to non-empty, kept until it is received.
func (q *Queue[T]) Ready() <-chan struct{} { return q.ready }

// Full receives a value when the queue holds half of what it may: a
// consumer that lets items gather takes them at once then,
// before the queue fills and drops.
func (q *Queue[T]) Full() <-chan struct{} { return q.full }

// Take returns every queued item, oldest first. The slice is valid until
// the next Take (the queue reuses it); the consumer must be a single
// goroutine.
func (q *Queue[T]) Take() []T {
	q.mu.Lock()
	out := q.items
	clear(q.spare)
	q.items, q.spare = q.spare[:0], out
	q.mu.Unlock()
	return out
}

// Len is how many items wait.
func (q *Queue[T]) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

// Dropped is how many items Push could not queue.
func (q *Queue[T]) Dropped() uint64 { return q.dropped.Load() }

// Linger is how long a consumer waits after a wake-up before it takes the
// batch, so that under load items arrive in batches of many rather than
// one wake-up each (the trace layer's recorder; the connection tracker
// gathers longer batches, see inspect's batchEvery). It bounds how late a
// trace line appears.
const Linger = time.Millisecond
