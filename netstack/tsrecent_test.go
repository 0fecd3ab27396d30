package netstack_test

import (
	"io"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tcp-upper/tcp-upper/internal/leakcheck"
	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
	"github.com/tcp-upper/tcp-upper/netstack"
)

// TestAckOfFinEchoesItsTimestamp guards our patch
// third_party/patches/gvisor/0005-*.patch (RFC 7323 4.3 and 5.3 R3: the
// TSval of an acceptable segment at or before Last.ACK.sent is recorded in
// TS.Recent before the segment is processed, so the ACK it elicits echoes
// it; a FIN is no exception). A hand-driven client with timestamps sends
// data at TSval 2000, pauses (its clock jumps to 5000), and closes: the
// server's ACK of the FIN must echo 5000. Echoing 2000 would hand the
// client an RTT sample as long as its pause. Both ways the server meets
// the FIN: in ESTABLISHED (the client closes first) and in FIN-WAIT-2 (the
// server closed first).
//
// Upstream gVisor updates TS.Recent only after the receiver has consumed
// the segment, and the receiver acknowledges a FIN at once: the ACK echoes
// the previous segment's TSval. scripts/unpatched.sh go test ./netstack
// -run TestAckOfFinEchoes shows it failing without the patch.
func TestAckOfFinEchoesItsTimestamp(t *testing.T) {
	leakcheck.Check(t)
	srv := newRawServer(t, plainLink, netstack.Options{})
	for i, serverClosesFirst := range []bool{false, true} {
		name := "client closes first"
		if serverClosesFirst {
			name = "server closes first"
		}
		t.Run(name, func(t *testing.T) {
			c := srv.dial(t, uint16(43000+i), 1000, 1000)
			conn := srv.accept(t)
			c.tsVal = 2000
			c.next(header.TCPFlagAck|header.TCPFlagPsh, []byte("some data"))
			if r, ok := c.awaitAck(); !ok || r.Ack != uint32(c.sndNxt) {
				t.Fatalf("the server did not acknowledge the data (got %+v)", r)
			}
			if serverClosesFirst {
				// Read the data first: closing with unread data resets.
				conn.SetReadDeadline(time.Now().Add(2 * time.Second))
				if _, err := io.ReadFull(conn, make([]byte, len("some data"))); err != nil {
					t.Fatal(err)
				}
				conn.Close()
				fin, ok := c.await(2*time.Second, func(s rawtcp.Segment) bool { return s.Flags.Contains(header.TCPFlagFin) })
				if !ok || fin.Seq != uint32(c.rcvNxt) {
					t.Fatalf("no FIN from the server (got %+v)", fin)
				}
				c.rcvNxt++
				c.tsVal = 3000
				c.next(header.TCPFlagAck, nil) // the server: FIN-WAIT-2
			}
			c.tsVal = 5000
			c.next(header.TCPFlagAck|header.TCPFlagFin, nil)
			r, ok := c.awaitAck()
			if !ok || r.Ack != uint32(c.sndNxt) {
				t.Fatalf("the server did not acknowledge the FIN (got %+v)", r)
			}
			if ecr, ok := tsEcr(r); !ok || ecr != 5000 {
				t.Errorf("the ACK of the FIN (TSval 5000) echoes TSval %d: TS.Recent was stale", ecr)
			}
		})
	}
}
