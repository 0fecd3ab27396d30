package netstack_test

import (
	"bytes"
	"io"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"

	"github.com/tcp-upper/tcp-upper/internal/leakcheck"
	"github.com/tcp-upper/tcp-upper/netstack"
)

// TestUnacceptableAckIsAnsweredAndDropped guards our patch
// third_party/patches/gvisor/0003-*.patch (RFC 9293 3.10.7.4 "fifth",
// RFC 5961 5.2: an ACK is acceptable only if SND.UNA - MAX.SND.WND <=
// SEG.ACK <= SND.NXT; any other segment MUST be answered with an ACK and
// discarded, its data included). A hand-driven client sends data, in
// window, whose ACK field acknowledges something the server never sent, or
// lies further behind SND.UNA than the largest window the client ever
// offered. The server must answer with an ACK that does not acknowledge the
// data, and its application must never read it. An ACK a little behind
// SND.UNA (an old duplicate, within MAX.SND.WND) stays acceptable.
//
// Upstream gVisor checks the ACK field only in the closing states: in
// ESTABLISHED it takes the data (and the window) of any such segment.
// scripts/unpatched.sh go test ./netstack -run TestUnacceptableAck shows it
// failing without the patch.
func TestUnacceptableAckIsAnsweredAndDropped(t *testing.T) {
	leakcheck.Check(t)
	srv := newRawServer(t, plainLink, netstack.Options{})
	const window = 65535 // the client's window, unscaled: MAX.SND.WND
	for i, tc := range []struct {
		name       string
		ack        func(sndUna seqnum.Value) seqnum.Value
		acceptable bool
	}{
		{"above SND.NXT", func(una seqnum.Value) seqnum.Value { return una + 1 }, false},
		{"far above SND.NXT", func(una seqnum.Value) seqnum.Value { return una + 1<<30 }, false},
		{"below SND.UNA-MAX.SND.WND", func(una seqnum.Value) seqnum.Value { return una - window - 1 }, false},
		{"below SND.UNA, within MAX.SND.WND", func(una seqnum.Value) seqnum.Value { return una - window }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := srv.dial(t, uint16(41000+i), 1000, 0)
			conn := srv.accept(t)
			// The server has sent nothing: SND.UNA = SND.NXT = its ISS+1.
			sndUna := c.rcvNxt

			bad := []byte("unacceptable ACK")
			s := c.segment(header.TCPFlagAck|header.TCPFlagPsh, bad)
			s.Ack = uint32(tc.ack(sndUna))
			c.send(s)
			r, ok := c.awaitAck()
			switch {
			case !ok:
				t.Fatalf("ACK %d (SND.UNA%+d): no ACK in reply within 2s", s.Ack, int32(s.Ack-uint32(sndUna)))
			case r.Seq != uint32(c.rcvNxt):
				t.Errorf("reply seq %d, want SND.NXT %d", r.Seq, c.rcvNxt)
			case !tc.acceptable && r.Ack != uint32(c.sndNxt):
				t.Errorf("ACK %d (SND.UNA%+d) is unacceptable, but the server took the data: it acknowledged %d bytes of it",
					s.Ack, int32(s.Ack-uint32(sndUna)), r.Ack-uint32(c.sndNxt))
			case tc.acceptable && r.Ack != uint32(c.sndNxt)+uint32(len(bad)):
				t.Errorf("ACK %d (SND.UNA%+d) is acceptable (an old duplicate), but the server did not take the data: ack %d, want %d",
					s.Ack, int32(s.Ack-uint32(sndUna)), r.Ack, c.sndNxt.Add(seqnum.Size(len(bad))))
			}
			want := bad
			if !tc.acceptable {
				// The same sequence numbers again, with a good ACK: the
				// application must read these bytes, not the dropped ones.
				want = []byte("acceptable ACK!!")
				c.next(header.TCPFlagAck|header.TCPFlagPsh, want)
			} else {
				c.sndNxt = c.sndNxt.Add(seqnum.Size(len(bad)))
			}
			conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			got := make([]byte, len(want))
			if _, err := io.ReadFull(conn, got); err != nil {
				t.Fatalf("the application read nothing: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("the application read %q, want %q", got, want)
			}
		})
	}
}
