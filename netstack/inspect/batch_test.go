package inspect

import (
	"net/netip"
	"testing"
	"time"
)

func faultEvent(i int) Event {
	return Event{Time: time.Now(), Kind: KindFault, Rule: i,
		Conn: ConnID{netip.MustParseAddrPort("10.0.1.2:40000"), netip.MustParseAddrPort("10.0.2.2:9999")}}
}

// An event reaches a subscriber that never calls Sync: the tracker drains
// on its own, once a batch has gathered.
func TestEventsWithoutSync(t *testing.T) {
	tr := New(Options{}, nil)
	defer tr.Close()
	sub := tr.Subscribe(16)
	tr.Inject(faultEvent(7))
	select {
	case ev := <-sub.C():
		if ev.Kind != KindFault || ev.Rule != 7 {
			t.Fatalf("got %+v, want the fault event of rule 7", ev)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("no event within 2 s without Sync (batches every %v)", batchEvery)
	}
}

// Items that keep coming are taken in batches, not one wake-up each; Sync
// still delivers every one of them, in order.
func TestBatches(t *testing.T) {
	tr := New(Options{}, nil)
	defer tr.Close()
	// One item each 200 µs (or as often as the timer allows): the packets
	// of a slow exchange.
	const n = 150
	sub := tr.Subscribe(n)
	pace := time.NewTicker(200 * time.Microsecond)
	defer pace.Stop()
	start := time.Now()
	for i := range n {
		tr.Inject(faultEvent(i))
		<-pace.C
	}
	elapsed := time.Since(start)
	tr.Sync()
	if got := sub.Delivered(); got != n {
		t.Fatalf("delivered %d events after Sync, want %d", got, n)
	}
	for i := range n {
		if ev := <-sub.C(); ev.Rule != i {
			t.Fatalf("event %d is rule %d: out of order", i, ev.Rule)
		}
	}
	var batches int
	tr.do(func() { batches = tr.batches })
	// One batch per batchEvery while items came, one for Sync, and one
	// for a timer that was due as the loop ended.
	if most := int(elapsed/batchEvery) + 3; batches > most {
		t.Fatalf("%d items in %v took %d batches, want at most %d (one per %v)", n, elapsed, batches, most, batchEvery)
	}
	t.Logf("%d items in %v: %d batches", n, elapsed, batches)
}
