package inspect_test

import (
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
	"github.com/tcp-upper/tcp-upper/netstack/trace"
)

// BenchmarkObservePacket is what the tracker costs each packet on the
// packet path (--events): decoding the headers and queueing a summary.
//
//	go test ./netstack/inspect -run '^$' -bench ObservePacket
func BenchmarkObservePacket(b *testing.B) {
	cli := netip.MustParseAddrPort("10.0.1.2:47762")
	srv := netip.MustParseAddrPort("10.0.2.2:9999")
	seg := rawtcp.Segment{Src: cli, Dst: srv, Seq: 1001, Ack: 78, Flags: header.TCPFlagAck | header.TCPFlagPsh, Window: 502, Payload: make([]byte, 1400)}.Marshal()
	hdr := seg[:trace.HeaderSnap]
	tr := inspect.New(inspect.Options{QueueLen: 1 << 20}, nil)
	defer tr.Close()
	now := time.Now()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		tr.ObservePacket(now, trace.In, hdr, len(seg))
		if i%4096 == 4095 {
			tr.Sync() // keep the queue from filling: a full queue drops, which is cheaper
		}
	}
}
