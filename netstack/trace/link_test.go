package trace

import (
	"bytes"
	"encoding/binary"
	"strings"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/tcp-upper/tcp-upper/internal/pkt"
)

// nullLower is the layer below: it only needs to be closed.
type nullLower struct{ stack.LinkEndpoint }

func (nullLower) Close() {}

// WritePackets takes every packet, as a NIC would.
func (nullLower) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	return pkts.Len(), nil
}

// stuckWriter is a slow terminal: every Write waits until it is let go.
type stuckWriter struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func (w *stuckWriter) Write(b []byte) (int, error) {
	w.once.Do(func() { close(w.entered) })
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(b)
}

// segment60k is an IPv4/TCP packet of 60,000 bytes (a GSO-sized segment).
func segment60k() []byte {
	b := make([]byte, 60000)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4([4]byte{10, 0, 1, 2}), DstAddr: tcpip.AddrFrom4([4]byte{10, 0, 2, 2})})
	t := header.TCP(b[header.IPv4MinimumSize:])
	t.Encode(&header.TCPFields{SrcPort: 40000, DstPort: 9999, SeqNum: 1, AckNum: 1, DataOffset: header.TCPMinimumSize,
		Flags: header.TCPFlagAck | header.TCPFlagPsh, WindowSize: 512})
	binary.BigEndian.PutUint32(b[100:], 0xdeadbeef)
	return b
}

// TestQueueBoundedByBytes: with --trace-x behind a terminal that does not
// read, the records waiting hold at most the byte budget; the rest are
// dropped and counted, and everything accepted is printed once the
// terminal reads again.
func TestQueueBoundedByBytes(t *testing.T) {
	t.Run("in", func(t *testing.T) {
		testQueueBoundedByBytes(t, func(l *Link, p *stack.PacketBuffer) { l.DeliverNetworkPacket(header.IPv4ProtocolNumber, p) })
	})
	t.Run("out", func(t *testing.T) {
		testQueueBoundedByBytes(t, func(l *Link, p *stack.PacketBuffer) {
			var pkts stack.PacketBufferList
			pkts.PushBack(p.IncRef())
			l.WritePackets(pkts)
			pkts.Reset()
		})
	})
}

func testQueueBoundedByBytes(t *testing.T, cross func(*Link, *stack.PacketBuffer)) {
	const budget = 1 << 20
	const sent = 200
	w := &stuckWriter{entered: make(chan struct{}), release: make(chan struct{})}
	l := New(nullLower{}, Options{Out: w, HexDump: true, QueueBytes: budget}, nil)
	seg := segment60k()
	for i := 0; i < sent; i++ {
		p := pkt.New(append([]byte(nil), seg...))
		cross(l, p)
		p.DecRef()
		if q := l.QueuedBytes(); q > budget {
			t.Fatalf("after packet %d the queue holds %d bytes, budget %d", i+1, q, budget)
		}
	}
	select {
	case <-w.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the recorder never started writing")
	}
	st := l.Stats()
	perRecord := int64(len(seg)) + RecordOverhead
	accepted := int64(sent) - int64(st.Dropped.Load())
	if st.Packets.Load() != sent {
		t.Fatalf("Packets = %d, want %d", st.Packets.Load(), sent)
	}
	if st.Dropped.Load() == 0 || accepted > budget/perRecord || accepted < 1 {
		t.Fatalf("accepted %d of %d 60 KB records (dropped %d), want 1..%d within a %d-byte budget",
			accepted, sent, st.Dropped.Load(), budget/perRecord, budget)
	}
	close(w.release)
	l.Close()
	if q := l.QueuedBytes(); q != 0 {
		t.Fatalf("after Close the queue still counts %d bytes", q)
	}
	lines := 0
	for _, ln := range strings.Split(w.buf.String(), "\n") {
		if ln != "" && !strings.HasPrefix(ln, "\t") {
			lines++
		}
	}
	if int64(lines) != accepted {
		t.Fatalf("printed %d packet lines, accepted %d", lines, accepted)
	}
}
