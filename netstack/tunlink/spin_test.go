package tunlink

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/tcp-upper/tcp-upper/tun"
)

// chanDispatcher hands each delivered packet's bytes to a channel.
type chanDispatcher chan []byte

func (d chanDispatcher) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	v := pkt.ToView()
	d <- bytes.Clone(v.AsSlice())
	v.Release()
}

func (chanDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// waitFor waits up to bound for cond, failing with what if it never holds.
func waitFor(t *testing.T, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, bound)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// send writes p to d, vouching for its checksum on a device with offloads
// (segment makes none).
func send(t *testing.T, d *tun.PipeDevice, p []byte) {
	t.Helper()
	var err error
	if d.Offloads() {
		_, err = d.WriteOffload([][]byte{p}, tun.Offload{DataValid: true})
	} else {
		_, err = d.Write(p)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// TestSpinBounded: with Options.Spin, a reader that finds the device
// empty polls it for that long and then sleeps (one spin and one park per
// idle spell, counted), a packet sent while it sleeps is still delivered,
// and the next idle spell spins again; plain and with offloads.
func TestSpinBounded(t *testing.T) {
	for _, offload := range []bool{false, true} {
		t.Run(fmt.Sprintf("offload=%v", offload), func(t *testing.T) {
			near, far := tun.Pipe("near", "far", 1500)
			if offload {
				near, far = tun.OffloadPipe("near", "far", 1500)
			}
			e := New(near, Options{Spin: 2 * time.Millisecond}, nil)
			defer e.Close()
			got := make(chanDispatcher, 4)
			e.Attach(got)
			st := e.Stats()
			// An idle device: one spin, ended by its bound.
			waitFor(t, 5*time.Second, "the first spin's park", func() bool { return st.RxSpinParks.Load() == 1 })
			if n := st.RxSpins.Load(); n != 1 {
				t.Fatalf("spins %d after the first park, want 1", n)
			}
			p := segment(header.TCPProtocolNumber, 0, header.TCPMinimumSize, 10)
			send(t, far, p)
			got.expect(t, p, "a parked reader")
			waitFor(t, 5*time.Second, "the second spin's park", func() bool { return st.RxSpinParks.Load() == 2 })
			if n := st.RxSpins.Load(); n != 2 {
				t.Fatalf("spins %d after the second park, want 2", n)
			}
		})
	}
}

// TestSpinCatchesAndCloses: a packet that arrives while the reader spins
// is delivered without a park, and Close stops a spinning reader at once
// rather than when its spin runs out.
func TestSpinCatchesAndCloses(t *testing.T) {
	for _, offload := range []bool{false, true} {
		t.Run(fmt.Sprintf("offload=%v", offload), func(t *testing.T) {
			near, far := tun.Pipe("near", "far", 1500)
			if offload {
				near, far = tun.OffloadPipe("near", "far", 1500)
			}
			const spin = time.Second // the most tunlink could be asked for in a test's time
			e := New(near, Options{Spin: spin}, nil)
			got := make(chanDispatcher, 4)
			e.Attach(got)
			st := e.Stats()
			waitFor(t, 5*time.Second, "the reader spinning", func() bool { return st.RxSpins.Load() == 1 })
			p := segment(header.TCPProtocolNumber, 0, header.TCPMinimumSize, 10)
			send(t, far, p)
			got.expect(t, p, "a spinning reader")
			waitFor(t, 5*time.Second, "the reader spinning again", func() bool { return st.RxSpins.Load() == 2 })
			start := time.Now()
			e.Close()
			e.Wait()
			if d := time.Since(start); d >= spin/2 {
				t.Errorf("Close and Wait took %v with a %v spin: the spin did not see the close", d, spin)
			}
			if n := st.RxSpinParks.Load(); n != 0 {
				t.Errorf("%d parks, want 0: the packet came while the reader spun, and Close came before the spin ran out", n)
			}
		})
	}
}

// expect waits up to 5 s for the delivery of p, sent to who.
func (c chanDispatcher) expect(t *testing.T, p []byte, who string) {
	t.Helper()
	select {
	case b := <-c:
		if !bytes.Equal(b, p) {
			t.Fatalf("delivered %x, want %x", b, p)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("a packet sent to %s was not delivered", who)
	}
}
