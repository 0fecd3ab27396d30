package tunlink

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/header/parse"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/tcp-upper/tcp-upper/tun"
)

// segment builds an IPv4 packet of protocol proto: a 20-byte IP header, a
// TCP header of tcpHdr bytes (for TCP) and payload bytes 0, 1, 2, ...
func segment(proto tcpip.TransportProtocolNumber, flagsFrag uint16, tcpHdr, payload int) []byte {
	n := header.IPv4MinimumSize + tcpHdr + payload
	b := make([]byte, n)
	header.IPv4(b).Encode(&header.IPv4Fields{
		TotalLength: uint16(n),
		TTL:         64,
		Protocol:    uint8(proto),
		SrcAddr:     tcpip.AddrFrom4([4]byte{10, 0, 1, 2}),
		DstAddr:     tcpip.AddrFrom4([4]byte{10, 0, 2, 2}),
	})
	if flagsFrag != 0 {
		b[6], b[7] = byte(flagsFrag>>8), byte(flagsFrag)
	}
	if proto == header.TCPProtocolNumber {
		header.TCP(b[header.IPv4MinimumSize:]).Encode(&header.TCPFields{
			SrcPort: 40000, DstPort: 9999, SeqNum: 1, AckNum: 1,
			DataOffset: uint8(tcpHdr), Flags: header.TCPFlagAck, WindowSize: 1000,
		})
	}
	for i := range payload {
		b[n-payload+i] = byte(i)
	}
	return b
}

// inReadBuffer is b in a view of the size the offload reader reads into.
func inReadBuffer(b []byte) *buffer.View {
	v := buffer.NewViewSize(65535)
	copy(v.AsSlice(), b)
	v.CapLength(len(b))
	return v
}

// TestHeadersApartPayloadStaysPut replays what gVisor's IPv4 receive does to
// the headers of a segment (ipv4.endpoint.HandlePacket: parseAndValidate
// consumes the IP header and keeps a View of it, a second reference to its
// chunk, until the end; with HandleLocal the header is pulled up again
// meanwhile) and checks that the payload is still where the TUN read put
// it. With the headers in the read buffer that second pull-up copied the
// whole 64 KiB chunk.
func TestHeadersApartPayloadStaysPut(t *testing.T) {
	const payload = 40000
	b := segment(header.TCPProtocolNumber, 0, 32, payload)
	v := inReadBuffer(b)
	start := &v.AsSlice()[len(b)-payload]
	p := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: headersApart(v)})
	defer p.DecRef()

	if _, ok := p.NetworkHeader().Consume(header.IPv4MinimumSize); !ok {
		t.Fatal("consume the IP header")
	}
	held := p.NetworkHeader().View()
	if src := header.IPv4(p.NetworkHeader().Slice()).SourceAddress(); src != tcpip.AddrFrom4([4]byte{10, 0, 1, 2}) {
		t.Fatalf("source address %v", src)
	}
	held.Release()
	if !parse.TCP(p) {
		t.Fatal("parse the TCP header")
	}
	if got := len(p.TransportHeader().Slice()); got != 32 {
		t.Fatalf("TCP header of %d bytes, want 32", got)
	}
	data, ok := p.Data().PullUp(payload)
	if !ok || len(data) != payload {
		t.Fatalf("payload: %d bytes, ok %v", len(data), ok)
	}
	if !bytes.Equal(data, b[len(b)-payload:]) {
		t.Fatal("payload bytes changed")
	}
	if &data[0] != start {
		t.Error("the payload was copied out of the read buffer when the IP header was pulled up")
	}
}

// TestHeadersApart: a TCP segment with payload is split after its TCP
// header (options included); everything else stays one view; the bytes
// are the packet's either way.
func TestHeadersApart(t *testing.T) {
	for _, tc := range []struct {
		name  string
		b     []byte
		first int // length of the first view
	}{
		{"tcp with options and payload", segment(header.TCPProtocolNumber, 0, 32, 1000), 52},
		{"tcp without options", segment(header.TCPProtocolNumber, 0, 20, 1), 40},
		{"pure ack", segment(header.TCPProtocolNumber, 0, 32, 0), 52},
		{"udp", segment(header.UDPProtocolNumber, 0, 0, 100), 120},
		{"first fragment", segment(header.TCPProtocolNumber, 0x2000, 20, 100), 140},
		{"bad data offset", segment(header.TCPProtocolNumber, 0, 16, 100), 136},
		{"truncated tcp header", segment(header.TCPProtocolNumber, 0, 20, 0)[:30], 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buf := headersApart(inReadBuffer(tc.b))
			defer buf.Release()
			var sizes []int
			buf.Apply(func(v *buffer.View) { sizes = append(sizes, v.Size()) })
			if sizes[0] != tc.first {
				t.Errorf("views %v, want the first of %d bytes", sizes, tc.first)
			}
			if len(sizes) > 2 {
				t.Errorf("views %v, want at most two", sizes)
			}
			if got := buf.Flatten(); !bytes.Equal(got, tc.b) {
				t.Errorf("bytes differ")
			}
		})
	}
}

// soonDispatcher calls Soon from its deliveries and logs the order of
// deliveries and of what Soon ran.
type soonDispatcher struct {
	e   *Endpoint
	mu  sync.Mutex
	log []string
	n   int
	ran chan struct{}
}

func (d *soonDispatcher) add(s string) {
	d.mu.Lock()
	d.log = append(d.log, s)
	d.mu.Unlock()
}

func (d *soonDispatcher) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, _ *stack.PacketBuffer) {
	d.mu.Lock()
	d.n++
	i := d.n
	d.mu.Unlock()
	d.add(fmt.Sprintf("deliver %d", i))
	d.e.Soon(func() {
		d.add(fmt.Sprintf("soon %d", i))
		// What Soon is given meanwhile runs in the same round.
		d.e.Soon(func() { d.add(fmt.Sprintf("soon %d again", i)); d.ran <- struct{}{} })
	})
	d.add(fmt.Sprintf("delivered %d", i))
}

func (*soonDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// TestSoonRunsAfterTheDelivery: what a delivery gives Soon runs on the
// reader right after that delivery and before the next packet; outside a
// delivery Soon starts a goroutine.
func TestSoonRunsAfterTheDelivery(t *testing.T) {
	a, b := tun.Pipe("soon0", "soon1", 1500)
	defer b.Close()
	e := New(a, Options{}, nil)
	defer e.Close()
	d := &soonDispatcher{e: e, ran: make(chan struct{}, 2)}
	e.Attach(d)
	pkt := segment(header.TCPProtocolNumber, 0, 20, 10)
	for range 2 {
		if _, err := b.Write(pkt); err != nil {
			t.Fatal(err)
		}
	}
	<-d.ran
	<-d.ran
	d.mu.Lock()
	got := strings.Join(d.log, ", ")
	d.mu.Unlock()
	want := "deliver 1, delivered 1, soon 1, soon 1 again, deliver 2, delivered 2, soon 2, soon 2 again"
	if got != want {
		t.Errorf("order:\n got %s\nwant %s", got, want)
	}
	if n := e.Stats().SoonAfterDelivery.Load(); n != 4 {
		t.Errorf("SoonAfterDelivery %d, want 4", n)
	}

	done := make(chan struct{})
	e.Soon(func() { close(done) })
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Soon outside a delivery did not run")
	}
	if n := e.Stats().SoonOnGoroutine.Load(); n != 1 {
		t.Errorf("SoonOnGoroutine %d, want 1", n)
	}
}
