// Package tunlink is the bottom of our link pipeline: a gVisor
// stack.LinkEndpoint that carries packets to and from a tun.Device.
//
// One goroutine reads the device and delivers each packet up the pipeline;
// the stack's writes go straight to the device from the calling goroutine.
// The device carries bare IP packets, so there is no link header, no link
// address and no ARP: the stack reaches everything through a default route
// over this NIC.
package tunlink

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/tcp-upper/tcp-upper/tun"
)

// Options configure an Endpoint.
type Options struct {
	// OnError is called once, from the read goroutine, when the device
	// fails for a reason other than Close (for example it was deleted). The
	// endpoint stops reading afterwards.
	OnError func(error)
}

// Endpoint drives a tun.Device for a gVisor stack.
type Endpoint struct {
	dev     tun.Device
	log     *slog.Logger
	onError func(error)

	mtu atomic.Uint32

	// dispatcher is read for every packet; Attach swaps it.
	dispatcher atomic.Pointer[dispatcherRef]

	mu         sync.Mutex
	readerDone chan struct{}
	closed     bool
	onClose    func()

	stats Stats
}

// Stats counts what crossed the device.
type Stats struct {
	RxPackets, RxBytes, TxPackets, TxBytes atomic.Uint64
	// RxErrors counts packets that were not IP (bad version nibble, empty).
	RxErrors atomic.Uint64
	// TxErrors counts packets the device refused.
	TxErrors atomic.Uint64
}

type dispatcherRef struct{ d stack.NetworkDispatcher }

var _ stack.LinkEndpoint = (*Endpoint)(nil)

// New returns an endpoint for dev. It starts reading when a stack attaches.
func New(dev tun.Device, opts Options, log *slog.Logger) *Endpoint {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Endpoint{dev: dev, log: log, onError: opts.OnError}
	e.mtu.Store(uint32(dev.MTU()))
	return e
}

// Stats returns the endpoint's counters.
func (e *Endpoint) Stats() *Stats { return &e.stats }

// Attach implements stack.NetworkLinkEndpoint. Attaching a dispatcher starts
// the read goroutine; Attach(nil) leaves it to Close to stop.
func (e *Endpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if d == nil {
		e.dispatcher.Store(nil)
	} else {
		e.dispatcher.Store(&dispatcherRef{d})
	}
	if d != nil && e.readerDone == nil && !e.closed {
		e.readerDone = make(chan struct{})
		go e.readLoop(e.readerDone)
	}
}

func (e *Endpoint) currentDispatcher() stack.NetworkDispatcher {
	if r := e.dispatcher.Load(); r != nil {
		return r.d
	}
	return nil
}

func (e *Endpoint) readLoop(done chan struct{}) {
	defer close(done)
	mtu := int(e.mtu.Load())
	for {
		v := buffer.NewViewSize(mtu)
		n, err := e.dev.Read(v.AsSlice())
		if err != nil {
			v.Release()
			if errors.Is(err, tun.ErrClosed) {
				return
			}
			e.log.Error("link down", "err", err)
			if e.onError != nil {
				e.onError(err)
			}
			return
		}
		v.CapLength(n)
		e.deliver(v)
	}
}

func (e *Endpoint) deliver(v *buffer.View) {
	var proto tcpip.NetworkProtocolNumber
	b := v.AsSlice()
	if len(b) == 0 {
		e.stats.RxErrors.Add(1)
		v.Release()
		return
	}
	switch header.IPVersion(b) {
	case header.IPv4Version:
		proto = header.IPv4ProtocolNumber
	case header.IPv6Version:
		proto = header.IPv6ProtocolNumber
	default:
		e.stats.RxErrors.Add(1)
		v.Release()
		return
	}
	e.stats.RxPackets.Add(1)
	e.stats.RxBytes.Add(uint64(len(b)))
	d := e.currentDispatcher()
	if d == nil {
		v.Release()
		return
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithView(v)})
	d.DeliverNetworkPacket(proto, pkt)
	pkt.DecRef()
}

// WritePackets implements stack.LinkWriter.
func (e *Endpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		v := pkt.ToView()
		_, err := e.dev.Write(v.AsSlice())
		size := v.Size()
		v.Release()
		if err != nil {
			e.stats.TxErrors.Add(1)
			if n == 0 {
				if errors.Is(err, tun.ErrClosed) {
					return 0, &tcpip.ErrClosedForSend{}
				}
				return 0, &tcpip.ErrAborted{}
			}
			break
		}
		e.stats.TxPackets.Add(1)
		e.stats.TxBytes.Add(uint64(size))
		n++
	}
	return n, nil
}

// MTU implements stack.NetworkLinkEndpoint.
func (e *Endpoint) MTU() uint32 { return e.mtu.Load() }

// SetMTU implements stack.NetworkLinkEndpoint. The device's MTU is fixed
// when it is opened; the stack may only lower its view of it.
func (e *Endpoint) SetMTU(mtu uint32) {
	if mtu <= uint32(e.dev.MTU()) {
		e.mtu.Store(mtu)
	}
}

// MaxHeaderLength implements stack.NetworkLinkEndpoint: no link header.
func (*Endpoint) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.NetworkLinkEndpoint: a TUN has none.
func (*Endpoint) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.NetworkLinkEndpoint.
func (*Endpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.NetworkLinkEndpoint. A plain TUN offers no
// offloads: the stack computes and verifies every checksum itself.
func (*Endpoint) Capabilities() stack.LinkEndpointCapabilities { return 0 }

// IsAttached implements stack.NetworkLinkEndpoint.
func (e *Endpoint) IsAttached() bool { return e.currentDispatcher() != nil }

// Wait implements stack.NetworkLinkEndpoint: it returns once the read
// goroutine has stopped (after Close).
func (e *Endpoint) Wait() {
	e.mu.Lock()
	done := e.readerDone
	e.mu.Unlock()
	if done != nil {
		<-done
	}
}

// ARPHardwareType implements stack.NetworkLinkEndpoint.
func (*Endpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.NetworkLinkEndpoint: no link header.
func (*Endpoint) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.NetworkLinkEndpoint: no link header.
func (*Endpoint) ParseHeader(*stack.PacketBuffer) bool { return true }

// Close implements stack.NetworkLinkEndpoint: it closes the device, which
// stops the read goroutine.
func (e *Endpoint) Close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	onClose := e.onClose
	e.mu.Unlock()
	if err := e.dev.Close(); err != nil {
		e.log.Warn("close device", "err", err)
	}
	if onClose != nil {
		onClose()
	}
}

// SetOnCloseAction implements stack.NetworkLinkEndpoint.
func (e *Endpoint) SetOnCloseAction(f func()) {
	e.mu.Lock()
	e.onClose = f
	e.mu.Unlock()
}
