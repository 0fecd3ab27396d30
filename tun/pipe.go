package tun

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// PipeQueueLen is how many packets each direction of a Pipe holds before it
// drops, like a NIC transmit queue.
const PipeQueueLen = 4096

// Pipe returns two connected in-memory devices: a packet written to one is
// read from the other. It needs no privileges, so tests and the
// unprivileged demo run the same link endpoints, fault layers and stacks as
// the TUN path, joined in memory instead of through the kernel.
func Pipe(nameA, nameB string, mtu int) (*PipeDevice, *PipeDevice) {
	ab := make(chan []byte, PipeQueueLen)
	ba := make(chan []byte, PipeQueueLen)
	a := &PipeDevice{name: nameA, mtu: mtu, in: ba, out: ab, done: make(chan struct{})}
	b := &PipeDevice{name: nameB, mtu: mtu, in: ab, out: ba, done: make(chan struct{})}
	a.peer, b.peer = b, a
	return a, b
}

// PipeDevice is one end of a Pipe.
type PipeDevice struct {
	name string
	mtu  int
	in   <-chan []byte
	out  chan<- []byte
	peer *PipeDevice

	closeOnce sync.Once
	done      chan struct{}
	dropped   atomic.Uint64
}

var _ Device = (*PipeDevice)(nil)

// Name implements Device.
func (d *PipeDevice) Name() string { return d.name }

// MTU implements Device.
func (d *PipeDevice) MTU() int { return d.mtu }

// Read implements Device.
func (d *PipeDevice) Read(buf []byte) (int, error) {
	// Closed wins over queued packets: select picks at random among ready
	// cases, and a closed device must not keep delivering.
	select {
	case <-d.done:
		return 0, ErrClosed
	default:
	}
	select {
	case <-d.done:
		return 0, ErrClosed
	case p := <-d.in:
		return copy(buf, p), nil
	}
}

// Write implements Device. When the peer's queue is full the packet is
// dropped and counted (see Dropped), never blocked on: the stacks on both
// ends write while holding their own locks.
func (d *PipeDevice) Write(pkt []byte) (int, error) {
	select {
	case <-d.done:
		return 0, ErrClosed
	default:
	}
	if len(pkt) > d.mtu {
		return 0, fmt.Errorf("write %d bytes to %s: larger than MTU %d", len(pkt), d.name, d.mtu)
	}
	select {
	case <-d.peer.done:
		return len(pkt), nil // the other end is gone: the packet falls on the floor
	default:
	}
	p := make([]byte, len(pkt))
	copy(p, pkt)
	select {
	case d.out <- p:
	case <-d.peer.done:
		// The other end is gone: the packet falls on the floor, as on a wire.
	default:
		d.dropped.Add(1)
	}
	return len(pkt), nil
}

// Dropped reports how many packets this end could not queue to its peer.
func (d *PipeDevice) Dropped() uint64 { return d.dropped.Load() }

// Close implements Device.
func (d *PipeDevice) Close() error {
	d.closeOnce.Do(func() { close(d.done) })
	return nil
}
