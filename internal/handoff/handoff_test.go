package handoff

import (
	"sync"
	"testing"
)

func TestOrderBoundAndWakeups(t *testing.T) {
	q := New[int](10)
	for i := 0; i < 12; i++ {
		q.Push(i)
	}
	if q.Dropped() != 2 || q.Len() != 10 {
		t.Fatalf("dropped %d len %d", q.Dropped(), q.Len())
	}
	select {
	case <-q.Ready():
	default:
		t.Fatal("no wake-up")
	}
	select {
	case <-q.Ready():
		t.Fatal("a second wake-up for the same batch")
	default:
	}
	got := q.Take()
	for i, v := range got {
		if v != i {
			t.Fatalf("order %v", got)
		}
	}
	if len(q.Take()) != 0 {
		t.Fatal("items left after Take")
	}
}

func TestConcurrentProducers(t *testing.T) {
	q := New[int](1 << 20)
	var wg sync.WaitGroup
	for p := 0; p < 4; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10000; i++ {
				q.Push(i)
			}
		}()
	}
	n := 0
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for {
		select {
		case <-q.Ready():
			n += len(q.Take())
		case <-done:
			n += len(q.Take())
			if n != 40000 {
				t.Fatalf("took %d, want 40000", n)
			}
			return
		}
	}
}

func TestFullAtHalf(t *testing.T) {
	q := New[int](8)
	full := func() bool {
		select {
		case <-q.Full():
			return true
		default:
			return false
		}
	}
	for i := 0; i < 3; i++ {
		q.Push(i)
	}
	if full() {
		t.Fatal("Full with 3 of 8 items")
	}
	q.Push(3)
	if !full() {
		t.Fatal("no Full at 4 of 8 items")
	}
	for i := 4; i < 8; i++ {
		q.Push(i)
	}
	if full() {
		t.Fatal("a second Full for the same batch")
	}
	q.Take()
	for i := 0; i < 4; i++ {
		q.Push(i)
	}
	if !full() {
		t.Fatal("no Full at 4 of 8 items after a Take")
	}
}
