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
	return newPipe(nameA, nameB, mtu, false)
}

// OffloadPipe is Pipe with offloads on both ends (see OffloadDevice): like
// two Linux TUNs with IFF_VNET_HDR, it carries TCP super-segments and
// partial checksums, each packet with its Offload, so tests run the
// offload data path without privileges.
func OffloadPipe(nameA, nameB string, mtu int) (*PipeDevice, *PipeDevice) {
	return newPipe(nameA, nameB, mtu, true)
}

func newPipe(nameA, nameB string, mtu int, offload bool) (*PipeDevice, *PipeDevice) {
	ab := make(chan pipePkt, PipeQueueLen)
	ba := make(chan pipePkt, PipeQueueLen)
	a := &PipeDevice{name: nameA, mtu: mtu, offload: offload, in: ba, out: ab, done: make(chan struct{})}
	b := &PipeDevice{name: nameB, mtu: mtu, offload: offload, in: ab, out: ba, done: make(chan struct{})}
	a.peer, b.peer = b, a
	return a, b
}

type pipePkt struct {
	data []byte
	o    Offload
}

// PipeDevice is one end of a Pipe.
type PipeDevice struct {
	name    string
	mtu     int
	offload bool
	in      <-chan pipePkt
	out     chan<- pipePkt
	peer    *PipeDevice

	closeOnce sync.Once
	done      chan struct{}
	dropped   atomic.Uint64
}

var (
	_ OffloadDevice = (*PipeDevice)(nil)
	_ TryReader     = (*PipeDevice)(nil)
)

// Name implements Device.
func (d *PipeDevice) Name() string { return d.name }

// MTU implements Device.
func (d *PipeDevice) MTU() int { return d.mtu }

// Read implements Device.
func (d *PipeDevice) Read(buf []byte) (int, error) {
	n, o, err := d.ReadOffload(buf)
	if err == nil && (o.GSO != GSONone || o.NeedsCsum) {
		return 0, fmt.Errorf("read %s: an offloaded packet reached Read: use ReadOffload", d.name)
	}
	return n, err
}

// Offloads implements OffloadDevice.
func (d *PipeDevice) Offloads() bool { return d.offload }

// ReadOffload implements OffloadDevice.
func (d *PipeDevice) ReadOffload(buf []byte) (int, Offload, error) {
	// Closed wins over queued packets: select picks at random among ready
	// cases, and a closed device must not keep delivering.
	select {
	case <-d.done:
		return 0, Offload{}, ErrClosed
	default:
	}
	select {
	case <-d.done:
		return 0, Offload{}, ErrClosed
	case p := <-d.in:
		return copy(buf, p.data), p.o, nil
	}
}

// TryRead implements TryReader.
func (d *PipeDevice) TryRead(buf []byte) (int, bool, error) {
	n, o, ok, err := d.TryReadOffload(buf)
	if err == nil && (o.GSO != GSONone || o.NeedsCsum) {
		return 0, false, fmt.Errorf("read %s: an offloaded packet reached TryRead: use TryReadOffload", d.name)
	}
	return n, ok, err
}

// TryReadOffload implements TryReader.
func (d *PipeDevice) TryReadOffload(buf []byte) (int, Offload, bool, error) {
	select {
	case <-d.done:
		return 0, Offload{}, false, ErrClosed
	default:
	}
	select {
	case p := <-d.in:
		return copy(buf, p.data), p.o, true, nil
	default:
		return 0, Offload{}, false, nil
	}
}

// Write implements Device. When the peer's queue is full the packet is
// dropped and counted (see Dropped), never blocked on: the stacks on both
// ends write while holding their own locks.
func (d *PipeDevice) Write(pkt []byte) (int, error) {
	return d.write([][]byte{pkt}, Offload{})
}

// WriteOffload implements OffloadDevice.
func (d *PipeDevice) WriteOffload(bufs [][]byte, o Offload) (int, error) {
	if !d.offload {
		return 0, fmt.Errorf("write to %s: it carries no offloads", d.name)
	}
	return d.write(bufs, o)
}

func (d *PipeDevice) write(bufs [][]byte, o Offload) (int, error) {
	select {
	case <-d.done:
		return 0, ErrClosed
	default:
	}
	size := 0
	for _, b := range bufs {
		size += len(b)
	}
	if limit := d.mtu; size > limit && (o.GSO == GSONone || size > MaxOffloadPacket) {
		return 0, fmt.Errorf("write %d bytes to %s: larger than MTU %d", size, d.name, d.mtu)
	}
	select {
	case <-d.peer.done:
		return size, nil // the other end is gone: the packet falls on the floor
	default:
	}
	p := make([]byte, 0, size)
	for _, b := range bufs {
		p = append(p, b...)
	}
	select {
	case d.out <- pipePkt{p, o}:
	case <-d.peer.done:
		// The other end is gone: the packet falls on the floor, as on a wire.
	default:
		d.dropped.Add(1)
	}
	return size, nil
}

// Dropped reports how many packets this end could not queue to its peer.
func (d *PipeDevice) Dropped() uint64 { return d.dropped.Load() }

// Close implements Device.
func (d *PipeDevice) Close() error {
	d.closeOnce.Do(func() { close(d.done) })
	return nil
}
