// Package tunlink is the bottom of our link pipeline: a gVisor
// stack.LinkEndpoint that carries packets to and from a tun.Device.
//
// One goroutine reads the device and delivers each packet up the pipeline;
// another writes what the stack sends, in order, from a bounded queue (a
// small packet that finds the queue empty is written by its sender). A
// write into a TUN does the kernel's side of the work in the writer's
// system call (forwarding, and often the receiver's TCP), so with its own
// goroutine the stack's TCP and the kernel's run side by side. What a
// delivery makes ready (a connection with data to read) can be run by the
// reader right after it (Soon), so a short request is answered without a
// goroutine to wake.
// The device carries bare IP packets, so there is no link header, no link
// address and no ARP: the stack reaches everything through a default route
// over this NIC.
//
// On a device with offloads (tun.OffloadDevice, a TUN opened with
// IFF_VNET_HDR) the endpoint offers gVisor host GSO: TCP hands it segments
// of up to 64 KiB and the kernel cuts them to the MSS; the kernel hands us
// what its local senders built, just as large, with partial checksums that
// it vouches for. A packet's Offload travels up the pipeline in its
// GSOOptions, so the layers above know a super-segment when they see one.
package tunlink

import (
	"errors"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/tcp-upper/tcp-upper/internal/pkt"
	"github.com/tcp-upper/tcp-upper/tun"
)

// Options configure an Endpoint.
type Options struct {
	// OnError is called once, from the read goroutine, when the device
	// fails for a reason other than Close (for example it was deleted). The
	// endpoint stops reading afterwards.
	OnError func(error)
	// Spin, if positive, makes the reader busy-poll an empty device for
	// up to this long before it sleeps in Go's netpoller, so that a
	// packet arriving meanwhile (the next request of an exchange, the ACK
	// of a reply) finds it awake instead of waking a thread. Between
	// polls it lets other goroutines run (runtime.Gosched): the handler
	// it just woke may be waiting for its thread. It costs CPU while the
	// link is idle between bursts. The device must be a tun.TryReader.
	// Zero: the reader sleeps as soon as the device is empty.
	Spin time.Duration
}

// Endpoint drives a tun.Device for a gVisor stack.
type Endpoint struct {
	dev     tun.Device
	odev    tun.OffloadDevice // dev, when it was opened with offloads
	log     *slog.Logger
	onError func(error)

	// try is dev when it can be polled and Options.Spin is positive; nil
	// means no spinning.
	try  tun.TryReader
	spin time.Duration

	mtu atomic.Uint32

	// dispatcher is read for every packet; Attach swaps it.
	dispatcher atomic.Pointer[dispatcherRef]

	// txq feeds the writer goroutine; txStop ends it (Close). Senders
	// hold txMu for reading while they queue, so that once txStopped is
	// set nothing more is queued.
	txq        chan *stack.PacketBuffer
	txStop     chan struct{}
	writerDone chan struct{}
	txMu       sync.RWMutex
	txStopped  bool
	// writeMu is held while writing to the device; pending counts packets
	// queued and not yet written. A small packet finding none pending and
	// the device free is written at once by its sender (see WritePackets).
	writeMu sync.Mutex
	pending atomic.Int64

	// soon holds what Soon was given while the reader delivers a packet;
	// delivering is true meanwhile. The reader runs it after the packet.
	soonMu     sync.Mutex
	delivering bool
	soon       []func()

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
	// RxChecksumErrors counts packets dropped for a bad transport checksum
	// by this endpoint: with offloads the stack trusts the link to check
	// what the kernel did not vouch for, as it trusts a NIC.
	RxChecksumErrors atomic.Uint64
	// RxFragmentsDropped counts IP fragments dropped with offloads: the
	// stack trusts the link with transport checksums, and the link cannot
	// check a fragment's (TCP sets DF; without offloads they pass).
	RxFragmentsDropped atomic.Uint64
	// RxGSO and TxGSO count super-segments (more than one wire segment)
	// received and sent.
	RxGSO, TxGSO atomic.Uint64
	// TxErrors counts packets the device refused.
	TxErrors atomic.Uint64
	// SoonAfterDelivery counts what Soon ran on the reader goroutine
	// right after a delivery; SoonOnGoroutine what it ran on a goroutine
	// of its own.
	SoonAfterDelivery, SoonOnGoroutine atomic.Uint64
	// RxSpins counts the times the reader found the device empty and
	// busy-polled it (Options.Spin); RxSpinParks those of them that ran
	// out without a packet, after which the reader slept in the
	// netpoller. The others each saved a sleep and a wake-up.
	RxSpins, RxSpinParks atomic.Uint64
}

type dispatcherRef struct{ d stack.NetworkDispatcher }

var _ stack.LinkEndpoint = (*Endpoint)(nil)
var _ stack.GSOEndpoint = (*Endpoint)(nil)

// GSOMaxSize is the largest TCP segment we hand a device with offloads:
// with up to 80 bytes of headers it stays a valid IPv4 datagram.
const GSOMaxSize = 65000

// New returns an endpoint for dev. It starts reading when a stack attaches.
func New(dev tun.Device, opts Options, log *slog.Logger) *Endpoint {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Endpoint{dev: dev, log: log, onError: opts.OnError, spin: opts.Spin}
	if od, ok := dev.(tun.OffloadDevice); ok && od.Offloads() {
		e.odev = od
	}
	if opts.Spin > 0 {
		if t, ok := dev.(tun.TryReader); ok {
			e.try = t
		} else {
			log.Warn("the device cannot be polled: its reader will not spin", "device", dev.Name())
		}
	}
	e.mtu.Store(uint32(dev.MTU()))
	e.txq = make(chan *stack.PacketBuffer, TxQueueLen)
	e.txStop = make(chan struct{})
	e.writerDone = make(chan struct{})
	go e.writer()
	return e
}

// TxQueueLen is how many packets may wait for the writer goroutine. The
// packets share their data with the stack's send buffers, so a full queue
// costs little memory; a sender that finds it full waits, as it would in a
// write system call.
const TxQueueLen = 256

// Offloads reports whether the endpoint uses the device's offloads.
func (e *Endpoint) Offloads() bool { return e.odev != nil }

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
	if e.odev != nil {
		e.readOffloads()
		return
	}
	mtu := int(e.mtu.Load())
	for {
		v := buffer.NewViewSize(mtu)
		n, _, err := e.read(v.AsSlice())
		if err != nil {
			v.Release()
			if errors.Is(err, tun.ErrClosed) {
				return
			}
			e.linkDown(err)
			return
		}
		v.CapLength(n)
		e.deliver(v, tun.Offload{})
	}
}

// linkDown reports a device failure once: to OnError, whose owner tells
// the user, or else to the log.
func (e *Endpoint) linkDown(err error) {
	if e.onError != nil {
		e.log.Debug("link down", "err", err)
		e.onError(err)
		return
	}
	e.log.Error("link down", "err", err)
}

// copyBelow: a packet read with offloads that is at most this long is
// copied out of the 64 KiB read buffer into one its size (the buffer is
// reused); a longer one takes the buffer with it.
const copyBelow = 16 << 10

func (e *Endpoint) readOffloads() {
	var big *buffer.View
	defer func() {
		if big != nil {
			big.Release()
		}
	}()
	for {
		if big == nil {
			big = buffer.NewViewSize(tun.MaxOffloadPacket)
		}
		n, o, err := e.read(big.AsSlice())
		if err != nil {
			if errors.Is(err, tun.ErrClosed) {
				return
			}
			e.linkDown(err)
			return
		}
		var v *buffer.View
		if n <= copyBelow {
			v = buffer.NewViewWithData(big.AsSlice()[:n])
		} else {
			v, big = big, nil
			v.CapLength(n)
		}
		e.deliver(v, o)
	}
}

// read reads one packet from the device, with its offloads if it has
// them, busy-polling an empty device first if the endpoint spins.
func (e *Endpoint) read(buf []byte) (int, tun.Offload, error) {
	if e.try != nil {
		if n, o, ok, err := e.spinRead(buf); ok || err != nil {
			return n, o, err
		}
	}
	if e.odev != nil {
		return e.odev.ReadOffload(buf)
	}
	n, err := e.dev.Read(buf)
	return n, tun.Offload{}, err
}

// spinRead polls the device for a packet until one comes or e.spin has
// passed since it found the device empty; ok is false if none came.
func (e *Endpoint) spinRead(buf []byte) (n int, o tun.Offload, ok bool, err error) {
	var start time.Time
	for {
		if e.odev != nil {
			n, o, ok, err = e.try.TryReadOffload(buf)
		} else {
			n, ok, err = e.try.TryRead(buf)
		}
		if ok || err != nil {
			return n, o, ok, err
		}
		if start.IsZero() {
			start = time.Now()
			e.stats.RxSpins.Add(1)
		} else if time.Since(start) >= e.spin {
			e.stats.RxSpinParks.Add(1)
			return 0, tun.Offload{}, false, nil
		}
		// A goroutine this reader readied (a handler, when a request
		// is not answered on the reader) may wait in this P's run
		// queue: let it run.
		runtime.Gosched()
	}
}

func (e *Endpoint) deliver(v *buffer.View, o tun.Offload) {
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
	if e.odev != nil && !o.NeedsCsum && !o.DataValid {
		// The stack believes our checksum offload: check what the kernel
		// did not vouch for, as a NIC would.
		switch transportChecksum(b) {
		case checksumBad:
			e.stats.RxChecksumErrors.Add(1)
			v.Release()
			return
		case checksumUncheckable:
			e.stats.RxFragmentsDropped.Add(1)
			v.Release()
			return
		}
	}
	e.stats.RxPackets.Add(1)
	e.stats.RxBytes.Add(uint64(len(b)))
	d := e.currentDispatcher()
	if d == nil {
		v.Release()
		return
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: headersApart(v)})
	if o.NeedsCsum || o.GSO != tun.GSONone {
		pkt.GSOOptions = stack.GSO{
			Type:       stack.GSOTCPv4,
			NeedsCsum:  o.NeedsCsum,
			CsumOffset: o.CsumOffset,
			MSS:        o.GSOSize,
			L3HdrLen:   o.CsumStart,
		}
		if proto == header.IPv6ProtocolNumber {
			pkt.GSOOptions.Type = stack.GSOTCPv6
		}
		if o.GSO != tun.GSONone {
			e.stats.RxGSO.Add(1)
		}
	}
	e.soonMu.Lock()
	e.delivering = true
	e.soonMu.Unlock()
	d.DeliverNetworkPacket(proto, pkt)
	pkt.DecRef()
	e.runSoon()
}

// Soon runs f outside the stack's locks, as soon as it can: while the
// reader goroutine is delivering a packet (f is, say, a connection's
// readiness reported by the TCP processing of that packet), the reader
// runs f right after that packet and before reading the next one;
// otherwise f runs on a goroutine of its own. A readable connection can
// so be served by the goroutine that delivered its data, with no
// goroutine to wake. f must not block: the device is not read while it
// runs.
func (e *Endpoint) Soon(f func()) {
	e.soonMu.Lock()
	if e.delivering {
		e.soon = append(e.soon, f)
		e.soonMu.Unlock()
		return
	}
	e.soonMu.Unlock()
	e.stats.SoonOnGoroutine.Add(1)
	go f()
}

// runSoon runs what Soon was given during a delivery, and what that gives
// it in turn, then ends the delivery.
func (e *Endpoint) runSoon() {
	var fs []func()
	for {
		e.soonMu.Lock()
		if len(e.soon) == 0 {
			e.delivering = false
			if fs != nil {
				e.soon = fs[:0] // keep the larger array
			}
			e.soonMu.Unlock()
			return
		}
		fs, e.soon = e.soon, fs[:0]
		e.soonMu.Unlock()
		e.stats.SoonAfterDelivery.Add(uint64(len(fs)))
		for i, f := range fs {
			f()
			fs[i] = nil
		}
	}
}

// headersApart makes v a packet payload with the IP and TCP headers of a
// TCP segment in a small chunk of their own, ahead of the rest of v's.
//
// gVisor's IPv4 receive (ipv4.endpoint.HandlePacket) keeps a second
// reference to the chunk under the IP header while it pulls the header up
// again, and buffer.Buffer.PullUp copies a shared chunk whole before it
// hands out a piece of it: with the headers in the read buffer, every
// segment cost a clear and a copy of that buffer (64 KiB with offloads),
// 3-5% of the server's CPU under bulk. A header chunk is all it copies
// now. Anything but a well-formed, unfragmented TCP segment with payload
// stays in one piece: the stack pulls up no more than the IP header and
// the TCP header (data offset) of a segment, so the payload is never
// pulled up across the two.
func headersApart(v *buffer.View) buffer.Buffer {
	var d pkt.Parsed
	b := v.AsSlice()
	d.Decode(b)
	n := d.IPHdrLen + d.TCPHdrLen
	if !d.IsTCP() || d.More || n >= len(b) {
		return buffer.MakeWithView(v)
	}
	h := buffer.MakeWithView(buffer.NewViewWithData(b[:n]))
	v.TrimFront(n)
	rest := buffer.MakeWithView(v)
	h.Merge(&rest)
	return h
}

type checksumVerdict int

const (
	checksumOK checksumVerdict = iota
	checksumBad
	checksumUncheckable // a fragment: its transport checksum covers the whole datagram
)

// transportChecksum checks the TCP, UDP or ICMP checksum of an IPv4 packet
// with a complete checksum. Anything it cannot parse passes: the stack's
// own parsing rejects and counts it.
func transportChecksum(b []byte) checksumVerdict {
	var d pkt.Parsed
	d.Decode(b)
	if !d.Complete() {
		return checksumOK
	}
	if d.More || d.FragOff != 0 {
		return checksumUncheckable
	}
	t := b[d.IPHdrLen:d.IPLen]
	var x uint16
	switch d.Proto {
	case header.TCPProtocolNumber, header.UDPProtocolNumber:
		if d.Proto == header.UDPProtocolNumber && len(t) >= header.UDPMinimumSize && header.UDP(t).Checksum() == 0 {
			return checksumOK // UDP without a checksum
		}
		ip := header.IPv4(b)
		x = header.PseudoHeaderChecksum(d.Proto, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(t)))
	case header.ICMPv4ProtocolNumber:
	default:
		return checksumOK
	}
	if checksum.Checksum(t, x) != 0xffff {
		return checksumBad
	}
	return checksumOK
}

// WritePackets implements stack.LinkWriter: it queues the packets for the
// writer goroutine, waiting while the queue is full, except a small packet
// that finds nothing queued, which it writes itself.
func (e *Endpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	e.txMu.RLock()
	defer e.txMu.RUnlock()
	if e.txStopped {
		return 0, &tcpip.ErrClosedForSend{}
	}
	n := 0
	for _, pkt := range pkts.AsSlice() {
		n++
		// A lone small packet (an ACK, a short reply) goes out at once:
		// a hand-off to the writer would add a goroutine wake-up to
		// every request/response. Nothing queued may be overtaken.
		if pkt.Size() <= inlineMax && e.pending.Load() == 0 && e.writeMu.TryLock() {
			if e.pending.Load() == 0 {
				e.write1(pkt)
				e.writeMu.Unlock()
				continue
			}
			e.writeMu.Unlock()
		}
		e.pending.Add(1)
		pkt.IncRef()
		e.txq <- pkt
	}
	return n, nil
}

// inlineMax is the largest packet a sender writes itself when nothing is
// queued: one wire segment.
const inlineMax = 1500

// writer writes the queued packets in order, as many as are waiting at
// each wake-up, until Close.
func (e *Endpoint) writer() {
	defer close(e.writerDone)
	batch := make([]*stack.PacketBuffer, 0, 64)
	for {
		select {
		case <-e.txStop:
			// Nothing more is queued: write what is (the last FINs
			// and RSTs of a closing stack) and stop.
			for {
				select {
				case p := <-e.txq:
					e.writeMu.Lock()
					e.write1(p)
					e.writeMu.Unlock()
					e.pending.Add(-1)
					p.DecRef()
				default:
					return
				}
			}
		case p := <-e.txq:
			batch = append(batch[:0], p)
		}
	more:
		for len(batch) < cap(batch) {
			select {
			case p := <-e.txq:
				batch = append(batch, p)
			default:
				break more
			}
		}
		e.writeMu.Lock()
		for _, p := range batch {
			e.write1(p)
		}
		e.writeMu.Unlock()
		e.pending.Add(-int64(len(batch)))
		for i, p := range batch {
			p.DecRef()
			batch[i] = nil
		}
	}
}

// write1 writes pkt to the device, counting a refusal. e.writeMu is held.
func (e *Endpoint) write1(pkt *stack.PacketBuffer) {
	var err error
	size := pkt.Size()
	if e.odev != nil {
		_, err = e.odev.WriteOffload(pkt.AsSlices(), e.offloadOf(pkt))
	} else {
		v := pkt.ToView()
		_, err = e.dev.Write(v.AsSlice())
		v.Release()
	}
	if err != nil {
		e.stats.TxErrors.Add(1)
		if !errors.Is(err, tun.ErrClosed) {
			e.log.Debug("write to the device", "err", err)
		}
		return
	}
	e.stats.TxPackets.Add(1)
	e.stats.TxBytes.Add(uint64(size))
}

// offloadOf describes pkt to the kernel: where its partial checksum is and,
// for a super-segment, how to cut it (Linux's virtio_net_hdr_to_skb).
func (e *Endpoint) offloadOf(pkt *stack.PacketBuffer) tun.Offload {
	g := pkt.GSOOptions
	if g.Type == stack.GSONone {
		return tun.Offload{}
	}
	var o tun.Offload
	if g.NeedsCsum {
		o.NeedsCsum = true
		o.CsumStart = uint16(pkt.NetworkHeader().View().Size())
		o.CsumOffset = g.CsumOffset
	}
	if g.MSS > 0 && pkt.Data().Size() > int(g.MSS) {
		o.GSO = tun.GSOTCPv4
		if g.Type == stack.GSOTCPv6 {
			o.GSO = tun.GSOTCPv6
		}
		o.GSOSize = g.MSS
		o.HdrLen = uint16(pkt.HeaderSize())
		e.stats.TxGSO.Add(1)
	}
	return o
}

// GSOMaxSize implements stack.GSOEndpoint.
func (e *Endpoint) GSOMaxSize() uint32 {
	if e.odev == nil {
		return 0
	}
	return GSOMaxSize
}

// SupportedGSO implements stack.GSOEndpoint: host GSO on a device with
// offloads, none on a plain one.
func (e *Endpoint) SupportedGSO() stack.SupportedGSO {
	if e.odev == nil {
		return stack.GSONotSupported
	}
	return stack.HostGSOSupported
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
// offloads: the stack computes and verifies every checksum itself. With
// offloads the kernel vouches for the checksums of what it hands us (its
// local senders' partial checksums, or ones it verified) and this endpoint
// checks the rest, so the stack need not: receive checksum offload. It
// still computes transmit checksums for everything it does not send as
// GSO.
func (e *Endpoint) Capabilities() stack.LinkEndpointCapabilities {
	if e.odev == nil {
		return 0
	}
	return stack.CapabilityRXChecksumOffload
}

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
	e.stopWriter()
	if err := e.dev.Close(); err != nil {
		e.log.Warn("close device", "err", err)
	}
	if onClose != nil {
		onClose()
	}
}

// stopWriter lets the writer goroutine write what is queued, then ends it
// and waits for it.
func (e *Endpoint) stopWriter() {
	e.txMu.Lock() // senders blocked on a full queue finish first
	stopped := e.txStopped
	e.txStopped = true
	e.txMu.Unlock()
	if !stopped {
		close(e.txStop)
	}
	<-e.writerDone
}

// SetOnCloseAction implements stack.NetworkLinkEndpoint.
func (e *Endpoint) SetOnCloseAction(f func()) {
	e.mu.Lock()
	e.onClose = f
	e.mu.Unlock()
}
