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
	pending atomic.Int64 // queued or being handled
	queued  atomic.Int64 // bytes pinned by records queued or being handled
	stats   Stats
	printer *Printer
}

type record struct {
	t    time.Time
	dir  Direction
	data []byte
	n    int    // original length
	note string // a line of text instead of a packet (Note)
	cost int64  // bytes counted against Options.QueueBytes while queued
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
	l := &Link{opts: opts, log: log, done: make(chan struct{}), stopped: make(chan struct{})}
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

// WritePackets implements stack.LinkWriter: packets on their way down.
func (l *Link) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	for _, pkt := range pkts.AsSlice() {
		l.observe(Out, pkt)
	}
	return l.Endpoint.WritePackets(pkts)
}

func (l *Link) observe(dir Direction, p *stack.PacketBuffer) {
	now := time.Now()
	l.stats.Packets.Add(1)
	size := p.Size()
	if !l.record {
		if l.opts.Observer != nil {
			var hdr [HeaderSnap]byte
			n := pkt.Gather(hdr[:], p)
			l.opts.Observer.ObservePacket(now, dir, hdr[:n], size)
		}
		return
	}
	r := l.pool.Get().(*record)
	want := min(size, l.copyLen)
	if cap(r.data) < want {
		r.data = make([]byte, want)
	}
	r.data = r.data[:want]
	pkt.Gather(r.data, p)
	if l.opts.Observer != nil {
		l.opts.Observer.ObservePacket(now, dir, r.data[:min(len(r.data), HeaderSnap)], size)
	}
	r.t, r.dir, r.n = now, dir, size
	l.push(r)
}

// push hands r to the recorder, or drops and counts it if the records
// already waiting hold the byte budget.
func (l *Link) push(r *record) {
	r.cost = int64(cap(r.data)) + RecordOverhead
	l.pending.Add(1)
	if l.queued.Add(r.cost) > int64(l.opts.QueueBytes) || !l.queue.Push(r) {
		l.queued.Add(-r.cost)
		l.pending.Add(-1)
		l.stats.Dropped.Add(1)
		l.pool.Put(r)
	}
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
				l.opts.Pcap.WritePacket(r.t, r.data, r.n)
			}
			if out != nil {
				line = l.printer.AppendFormat(line[:0], r.t, r.data)
				line = append(line, '\n')
				out.Write(line)
			}
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
		l.pending.Add(-int64(len(rs)))
	}
	for {
		select {
		case <-l.queue.Ready():
			// Let a batch gather: one wake-up per batch, not per packet.
			time.Sleep(handoff.Linger)
			batch()
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

// Flush waits (up to a second) until every packet queued so far has been
// printed and captured.
func (l *Link) Flush() {
	for i := 0; i < 500 && l.pending.Load() > 0; i++ {
		time.Sleep(2 * time.Millisecond)
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
