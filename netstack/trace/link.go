// Package trace is the link layer that shows every packet our stack sends
// or receives: tcpdump-style lines (--trace, --trace-x), a pcap file
// (--pcap), and packet summaries for the connection tracker
// (netstack/inspect).
//
// It wraps the layer below it as gVisor's link/sniffer does, but never
// formats or writes on the packet path: a packet is copied into a pooled
// record and handed to a recorder goroutine through a queue bounded by
// bytes (Options.QueueBytes). When the records waiting hold that much, a
// new one is dropped and counted (Stats.Dropped, the trace.dropped
// counter), never silently lost and never waited for.
package trace

import (
	"bufio"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/nested"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/tcp-upper/tcp-upper/internal/handoff"
	"github.com/tcp-upper/tcp-upper/internal/pkt"
	"github.com/tcp-upper/tcp-upper/netstack/pcap"
)

// Direction says which way a packet crossed the layer.
type Direction uint8

const (
	// In is a packet from the device to the stack (the stack receives it).
	In Direction = iota
	// Out is a packet from the stack to the device.
	Out
)

func (d Direction) String() string {
	if d == In {
		return "in"
	}
	return "out"
}

// HeaderSnap is how many bytes of a packet an Observer sees: enough for
// the longest IPv4 and TCP headers.
const HeaderSnap = pkt.MaxHeaders

// Observer is told about every packet, synchronously, on the packet path.
// It must copy what it needs from hdr (the packet's first bytes, at most
// HeaderSnap) and return at once.
type Observer interface {
	ObservePacket(t time.Time, dir Direction, hdr []byte, length int)
}

// Options configure a Link. A zero field disables its output.
type Options struct {
	// Out receives one tcpdump line per packet.
	Out io.Writer
	// HexDump adds tcpdump -X's hex lines to Out.
	HexDump bool
	// Pcap records every packet.
	Pcap *pcap.Writer
	// Observer sees every packet's headers (the connection tracker).
	Observer Observer
	// QueueBytes is how much memory the records waiting for the recorder
	// may hold (default DefaultQueueBytes). A record costs what it pins:
	// its buffer's capacity (at least 2 KiB, up to a whole 64 KiB segment
	// with --trace-x or --pcap) plus RecordOverhead.
	QueueBytes int
}

// DefaultQueueBytes is the default byte budget of the recorder's queue:
// 16,384 header-only records (a plain --trace), or 512 whole 64 KiB
// segments (--trace-x, --pcap) behind a slow terminal or disk.
const DefaultQueueBytes = 32 << 20

// RecordOverhead is what a queued record costs besides its buffer.
const RecordOverhead = 64

// minRecord is the least a queued record costs: the pool's buffers start
// at 2 KiB and only grow.
const minRecord = 2048 + RecordOverhead

// Stats counts what the layer saw and what it could not record.
type Stats struct {
	// Packets is how many packets crossed the layer.
	Packets atomic.Uint64
	// Dropped is how many packets were not printed or captured because the
	// recorder was behind (the records waiting held Options.QueueBytes).
	Dropped atomic.Uint64
}

// Link is the trace layer.
type Link struct {
	nested.Endpoint
	opts    Options
	log     *slog.Logger
	record  bool // print or capture: packets go to the recorder
	copyLen int

	queue *handoff.Queue[*record]
	pool  sync.Pool

	closed  atomic.Bool
	done    chan struct{}
	stopped chan struct{}
	flushes chan chan struct{} // Flush's requests to the recorder
	queued  atomic.Int64       // bytes pinned by records queued or being handled
	stats   Stats

	// Comments for outgoing packets the layer below (the fault layer)
	// acted on during a WritePackets call, by packet (see Mark).
	marksMu sync.Mutex
	marks   map[*stack.PacketBuffer]string
	nmarks  atomic.Int64
	printer *Printer
}

type record struct {
	t       time.Time
	dir     Direction
	data    []byte
	n       int    // original length
	note    string // a line of text instead of a packet (Note)
	comment string // the packet's comment in the capture (Mark)
	capOnly bool   // a packet the stack never received: in the capture only
	// busy: an outgoing packet's record queued (in order) while the
	// layers below still handle the packet; the recorder waits for them
	// to finish (and for its comment) before it writes the record.
	busy atomic.Bool
	cost int64 // bytes counted against Options.QueueBytes while queued
}

var _ stack.LinkEndpoint = (*Link)(nil)
var _ stack.NetworkDispatcher = (*Link)(nil)

// New wraps lower.
func New(lower stack.LinkEndpoint, opts Options, log *slog.Logger) *Link {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.QueueBytes <= 0 {
		opts.QueueBytes = DefaultQueueBytes
	}
	l := &Link{opts: opts, log: log, done: make(chan struct{}), stopped: make(chan struct{}), flushes: make(chan chan struct{})}
	l.Endpoint.Init(lower, l)
	l.record = opts.Out != nil || opts.Pcap != nil
	l.copyLen = HeaderSnap
	if opts.Pcap != nil {
		l.copyLen = opts.Pcap.SnapLen()
	}
	if opts.HexDump {
		l.copyLen = max(l.copyLen, 1<<16)
	}
	l.pool.New = func() any { return &record{data: make([]byte, 0, 2048)} }
	if l.record {
		// The byte budget binds first: no record costs less than minRecord.
		l.queue = handoff.New[*record](opts.QueueBytes/minRecord + 1)
		l.printer = NewPrinter()
		l.printer.HexDump = opts.HexDump
		go l.recorder()
	} else {
		close(l.stopped)
	}
	return l
}

// Stats returns the layer's counters.
func (l *Link) Stats() *Stats { return &l.stats }

// DeliverNetworkPacket implements stack.NetworkDispatcher: a packet on its
// way up to the stack.
func (l *Link) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	l.observe(In, pkt)
	l.Endpoint.DeliverNetworkPacket(proto, pkt)
}

// DeliverNoted implements fault.Noter: an incoming packet the fault layer
// changed, delayed, held back or copied goes up to the stack with note
// as its comment in the capture.
func (l *Link) DeliverNoted(proto tcpip.NetworkProtocolNumber, p *stack.PacketBuffer, note string) {
	if !l.record {
		l.observe(In, p)
	} else {
		r := l.capture(In, p)
		if l.opts.Pcap != nil {
			r.comment = note
		}
		l.push(r)
	}
	l.Endpoint.DeliverNetworkPacket(proto, p)
}

// WritePackets implements stack.LinkWriter: packets on their way down.
// Their records are queued first, in order with the packets coming in, and
// written once the layers below have taken the packets, so that what the
// fault layer did to one (Mark) is in its record.
func (l *Link) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	if !l.record {
		for _, pkt := range pkts.AsSlice() {
			l.observe(Out, pkt)
		}
		return l.Endpoint.WritePackets(pkts)
	}
	var small [8]*record
	recs := small[:0]
	for _, pkt := range pkts.AsSlice() {
		r := l.capture(Out, pkt)
		r.busy.Store(true)
		if !l.push(r) {
			r = nil
		}
		recs = append(recs, r)
	}
	n, err := l.Endpoint.WritePackets(pkts)
	if l.nmarks.Load() > 0 {
		l.marksMu.Lock()
		for i, pkt := range pkts.AsSlice() {
			if c, ok := l.marks[pkt]; ok {
				if recs[i] != nil {
					recs[i].comment = c
				}
				delete(l.marks, pkt)
				l.nmarks.Add(-1)
			}
		}
		l.marksMu.Unlock()
	}
	for _, r := range recs {
		if r != nil {
			r.busy.Store(false)
		}
	}
	return n, err
}

// Mark notes in the capture what the layer below (the fault layer) did to
// a packet, as the packet's comment ("dropped by rule 1: out ack drop"). It
// must be called while that layer handles p: going out, within the
// WritePackets call that handed p down, whose record then carries the
// comment; coming in, for a packet the stack will never receive (dropped
// below it), which is recorded now, in the capture only (not in the text
// trace, which shows what the stack received). An incoming packet that
// goes on up gets its comment through DeliverNoted instead. Without a
// capture it does nothing.
func (l *Link) Mark(t time.Time, dir Direction, p *stack.PacketBuffer, dropped bool, comment string) {
	if l.opts.Pcap == nil || l.closed.Load() {
		return
	}
	if dir == Out {
		l.marksMu.Lock()
		if l.marks == nil {
			l.marks = map[*stack.PacketBuffer]string{}
		}
		if old, ok := l.marks[p]; ok {
			comment = old + "; " + comment // one segment of a super-segment each
		} else {
			l.nmarks.Add(1)
		}
		l.marks[p] = comment
		l.marksMu.Unlock()
		return
	}
	if !dropped {
		return
	}
	r := l.newRecord(t, In, p)
	r.comment, r.capOnly = comment, true
	l.push(r)
}

func (l *Link) observe(dir Direction, p *stack.PacketBuffer) {
	if !l.record {
		now := time.Now()
		l.stats.Packets.Add(1)
		if l.opts.Observer != nil {
			// A buffer of the pool, not one on the stack: an array passed
			// through the interface call would be moved to the heap, an
			// allocation per packet.
			hdr := hdrPool.Get().(*[HeaderSnap]byte)
			n := pkt.Gather(hdr[:], p)
			l.opts.Observer.ObservePacket(now, dir, hdr[:n], p.Size())
			hdrPool.Put(hdr)
		}
		return
	}
	l.push(l.capture(dir, p))
}

// hdrPool holds the buffers in which observe hands a packet's headers to
// the Observer (which copies what it needs before it returns).
var hdrPool = sync.Pool{New: func() any { return new([HeaderSnap]byte) }}

// capture copies p into a record for the recorder and tells the observer.
func (l *Link) capture(dir Direction, p *stack.PacketBuffer) *record {
	now := time.Now()
	l.stats.Packets.Add(1)
	r := l.newRecord(now, dir, p)
	if l.opts.Observer != nil {
		l.opts.Observer.ObservePacket(now, dir, r.data[:min(len(r.data), HeaderSnap)], r.n)
	}
	return r
}

func (l *Link) newRecord(t time.Time, dir Direction, p *stack.PacketBuffer) *record {
	r := l.pool.Get().(*record)
	size := p.Size()
	want := min(size, l.copyLen)
	if cap(r.data) < want {
		r.data = make([]byte, want)
	}
	r.data = r.data[:want]
	pkt.Gather(r.data, p)
	r.t, r.dir, r.n = t, dir, size
	return r
}

// push hands r to the recorder and reports true, or drops and counts it
// (and returns it to the pool) if the records already waiting hold the
// byte budget.
func (l *Link) push(r *record) bool {
	r.cost = int64(cap(r.data)) + RecordOverhead
	if l.queued.Add(r.cost) > int64(l.opts.QueueBytes) || !l.queue.Push(r) {
		l.queued.Add(-r.cost)
		l.stats.Dropped.Add(1)
		r.busy.Store(false)
		r.comment, r.capOnly = "", false
		l.pool.Put(r)
		return false
	}
	return true
}

func (l *Link) recorder() {
	defer close(l.stopped)
	var out *bufio.Writer
	if l.opts.Out != nil {
		out = bufio.NewWriterSize(l.opts.Out, 64<<10)
		defer out.Flush()
	}
	var line []byte
	batch := func() {
		rs := l.queue.Take()
		for _, r := range rs {
			for r.busy.Load() {
				runtime.Gosched() // the layers below are still at it: microseconds
			}
			if r.note != "" {
				if out != nil {
					line = r.t.AppendFormat(line[:0], "15:04:05.000000")
					line = append(line, ' ')
					line = append(line, r.note...)
					line = append(line, '\n')
					out.Write(line)
				}
				r.note = ""
				l.done1(r)
				continue
			}
			if l.opts.Pcap != nil {
				// An error is reported once by the writer and counted there.
				l.opts.Pcap.WritePacketComment(r.t, r.data, r.n, r.comment)
			}
			if out != nil && !r.capOnly {
				line = l.printer.AppendFormat(line[:0], r.t, r.data)
				line = append(line, '\n')
				out.Write(line)
			}
			r.comment, r.capOnly = "", false
			l.done1(r)
		}
		// Caught up: make the output current (an interactive trace, a pcap
		// someone reads while we run).
		if out != nil {
			out.Flush()
		}
		if l.opts.Pcap != nil {
			l.opts.Pcap.Flush()
		}
	}
	for {
		select {
		case <-l.queue.Ready():
			// Let a batch gather: one wake-up per batch, not per packet.
			time.Sleep(handoff.Linger)
			batch()
		case done := <-l.flushes:
			batch()
			close(done)
		case <-l.done:
			batch()
			return
		}
	}
}

// done1 releases a handled record's bytes and returns it to the pool.
func (l *Link) done1(r *record) {
	l.queued.Add(-r.cost)
	l.pool.Put(r)
}

// QueuedBytes is how many bytes the records waiting for the recorder (or
// being handled) hold; it stays within Options.QueueBytes.
func (l *Link) QueuedBytes() int64 { return l.queued.Load() }

// Note puts a line of text in the trace, in order with the packets (the
// fault layer marks what it injected). It does nothing without a text
// output.
func (l *Link) Note(t time.Time, text string) {
	if l.opts.Out == nil || l.closed.Load() {
		return
	}
	r := l.pool.Get().(*record)
	r.t, r.note, r.data = t, text, r.data[:0]
	l.push(r)
}

// Flush returns once every packet that crossed the layer before the call
// (and every Note) has been printed and captured, and the outputs flushed.
// After Close it returns at once: Close has written everything.
func (l *Link) Flush() {
	if !l.record {
		return
	}
	done := make(chan struct{})
	select {
	case l.flushes <- done:
		<-done
	case <-l.stopped:
	}
}

// Close implements stack.LinkEndpoint: it closes the layers below, then
// lets the recorder finish what is queued.
//
// gVisor may call Close again from inside the first call (the device's
// close action removes the NIC, which closes its link): the second call
// returns at once.
func (l *Link) Close() {
	if !l.closed.CompareAndSwap(false, true) {
		return
	}
	l.Endpoint.Close()
	close(l.done)
	<-l.stopped
}
