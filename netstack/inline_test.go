package netstack_test

import (
	"bytes"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
)

// Patch 0010 (third_party/patches/gvisor): a received segment is processed
// in the goroutine that delivers it (the link's reader) when its endpoint
// is free, as Linux does in softirq; when the endpoint's lock is held, the
// processor goroutine takes it, as upstream always does. These tests
// deliver segments by hand to a bare gVisor stack and see which goroutine
// writes the answer.

// goid is the calling goroutine's id, from its stack header.
func goid() uint64 {
	var b [64]byte
	s := b[:runtime.Stack(b[:], false)]
	s = bytes.TrimPrefix(s, []byte("goroutine "))
	id, _ := strconv.ParseUint(string(s[:bytes.IndexByte(s, ' ')]), 10, 64)
	return id
}

// written is a segment the stack wrote and the goroutine that wrote it.
type written struct {
	seg rawtcp.Segment
	gid uint64
}

// handLink is a link endpoint driven by hand: deliver hands the stack a
// packet in the caller's goroutine, and every packet the stack writes goes
// to out with the id of the goroutine that wrote it.
type handLink struct {
	mu         sync.Mutex
	dispatcher stack.NetworkDispatcher
	out        chan written
}

func (l *handLink) MTU() uint32                                  { return 1500 }
func (l *handLink) SetMTU(uint32)                                {}
func (l *handLink) MaxHeaderLength() uint16                      { return 0 }
func (l *handLink) LinkAddress() tcpip.LinkAddress               { return "" }
func (l *handLink) SetLinkAddress(tcpip.LinkAddress)             {}
func (l *handLink) Capabilities() stack.LinkEndpointCapabilities { return 0 }
func (l *handLink) Attach(d stack.NetworkDispatcher) {
	l.mu.Lock()
	l.dispatcher = d
	l.mu.Unlock()
}
func (l *handLink) IsAttached() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dispatcher != nil
}
func (l *handLink) Wait()                                   {}
func (l *handLink) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }
func (l *handLink) AddHeader(*stack.PacketBuffer)           {}
func (l *handLink) ParseHeader(*stack.PacketBuffer) bool    { return true }
func (l *handLink) Close()                                  {}
func (l *handLink) SetOnCloseAction(func())                 {}
func (l *handLink) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	id := goid()
	n := 0
	for _, p := range pkts.AsSlice() {
		v := p.ToView()
		s, err := rawtcp.Parse(v.AsSlice())
		v.Release()
		if err == nil {
			l.out <- written{s, id}
		}
		n++
	}
	return n, nil
}

// deliver hands pkt to the stack in the calling goroutine.
func (l *handLink) deliver(pkt []byte) {
	p := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
	defer p.DecRef()
	l.mu.Lock()
	d := l.dispatcher
	l.mu.Unlock()
	d.DeliverNetworkPacket(ipv4.ProtocolNumber, p)
}

// handStack is a bare gVisor stack at 10.0.2.2 listening on 9999 behind
// a handLink; peer is the hand-driven client 10.0.2.3:40000.
type handStack struct {
	t      *testing.T
	link   *handLink
	ln     tcpip.Endpoint
	lnq    waiter.Queue
	me     netip.AddrPort
	sndNxt uint32
	rcvNxt uint32
}

func newHandStack(t *testing.T) *handStack {
	t.Helper()
	st := stack.New(stack.Options{NetworkProtocols: []stack.NetworkProtocolFactory{ipv4.NewProtocol}, TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol}})
	h := &handStack{t: t, link: &handLink{out: make(chan written, 64)}, me: netip.MustParseAddrPort("10.0.2.3:40000")}
	if err := st.CreateNIC(1, h.link); err != nil {
		t.Fatal(err)
	}
	addr := tcpip.AddrFrom4(rawServerAddr.Addr().As4())
	if err := st.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: addr.WithPrefix()}, stack.AddressProperties{}); err != nil {
		t.Fatal(err)
	}
	st.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}})
	ln, err := st.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &h.lnq)
	if err != nil {
		t.Fatal(err)
	}
	if err := ln.Bind(tcpip.FullAddress{Port: rawServerAddr.Port()}); err != nil {
		t.Fatal(err)
	}
	if err := ln.Listen(8); err != nil {
		t.Fatal(err)
	}
	h.ln = ln
	t.Cleanup(func() {
		ln.Close()
		st.Close()
		st.Wait()
	})
	return h
}

// send delivers the client's segment in the calling goroutine.
func (h *handStack) send(flags header.TCPFlags, payload []byte) {
	s := rawtcp.Segment{Src: h.me, Dst: rawServerAddr, Seq: h.sndNxt, Ack: h.rcvNxt, Flags: flags, Window: 65535, Payload: payload}
	if flags.Contains(header.TCPFlagSyn) {
		s.Options = rawtcp.SynOptions(1460, -1, false)
	}
	h.link.deliver(s.Marshal())
	h.sndNxt += uint32(len(payload))
	if flags.Contains(header.TCPFlagSyn) {
		h.sndNxt++
	}
}

// next is the next segment the stack wrote, waiting up to 2 s.
func (h *handStack) next() written {
	h.t.Helper()
	select {
	case w := <-h.link.out:
		return w
	case <-time.After(2 * time.Second):
		h.t.Fatal("the stack wrote nothing within 2s")
		return written{}
	}
}

// connect makes the handshake from the calling goroutine and returns the
// accepted endpoint and the SYN-ACK as written.
func (h *handStack) connect() (*tcp.Endpoint, written) {
	h.t.Helper()
	h.sndNxt = 1000
	h.send(header.TCPFlagSyn, nil)
	synack := h.next()
	if synack.seg.Flags != header.TCPFlagSyn|header.TCPFlagAck {
		h.t.Fatalf("want a SYN-ACK, got %+v", synack.seg)
	}
	h.rcvNxt = synack.seg.Seq + 1
	h.send(header.TCPFlagAck, nil)
	deadline := time.Now().Add(2 * time.Second)
	for {
		ep, _, err := h.ln.Accept(nil)
		if err == nil {
			h.t.Cleanup(ep.Close)
			return ep.(*tcp.Endpoint), synack
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("no connection to accept within 2s: %v", err)
		}
		runtime.Gosched()
	}
}

// written now is what the stack has written by the time the delivery
// returned, without waiting.
func (h *handStack) writtenNow() (written, bool) {
	select {
	case w := <-h.link.out:
		return w, true
	default:
		return written{}, false
	}
}

// A free endpoint's segments are processed in the goroutine that delivers
// them: the SYN-ACK and the ACK of data are written from it before the
// delivery returns, and the data is readable then.
func TestSegmentsProcessedInline(t *testing.T) {
	h := newHandStack(t)
	me := goid()
	ep, synack := h.connect()
	if synack.gid != me {
		t.Errorf("SYN-ACK written by goroutine %d, not by the one that delivered the SYN (%d)", synack.gid, me)
	}
	h.send(header.TCPFlagAck|header.TCPFlagPsh, []byte("ping"))
	w, ok := h.writtenNow()
	if !ok {
		t.Fatal("no ACK when the delivery of the data returned: processed elsewhere")
	}
	if w.gid != me || w.seg.Ack != h.sndNxt {
		t.Errorf("after data: %+v written by goroutine %d (delivering goroutine %d), want the ACK of %d from it", w.seg, w.gid, me, h.sndNxt)
	}
	var b bytes.Buffer
	if _, err := ep.Read(&b, tcpip.ReadOptions{}); err != nil || b.String() != "ping" {
		t.Errorf("read %q, %v right after the delivery; want ping", b.String(), err)
	}
}

// An endpoint whose lock is taken is left to the processor goroutine:
// held by the application (LockUser), the segment waits for UnlockUser;
// held otherwise (a timer, a processor: StopWork takes the lock the same
// way), the processor takes it once the lock is free. Either way the
// delivery returns at once and the ACK comes from another goroutine.
func TestSegmentsOfABusyEndpointGoToTheProcessor(t *testing.T) {
	for _, tc := range []struct {
		name         string
		lock, unlock func(*tcp.Endpoint)
	}{
		{"owned by the application", (*tcp.Endpoint).LockUser, (*tcp.Endpoint).UnlockUser},
		{"locked", (*tcp.Endpoint).StopWork, (*tcp.Endpoint).ResumeWork},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHandStack(t)
			me := goid()
			ep, _ := h.connect()
			tc.lock(ep)
			h.send(header.TCPFlagAck|header.TCPFlagPsh, []byte("ping"))
			if w, ok := h.writtenNow(); ok {
				tc.unlock(ep)
				t.Fatalf("%+v written while the endpoint was locked", w.seg)
			}
			tc.unlock(ep)
			w := h.next()
			if w.gid == me || w.seg.Ack != h.sndNxt {
				t.Errorf("%+v written by goroutine %d (delivering goroutine %d): want the ACK of %d from the processor", w.seg, w.gid, me, h.sndNxt)
			}
		})
	}
}
