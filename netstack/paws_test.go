package netstack_test

import (
	"io"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tcp-upper/tcp-upper/internal/leakcheck"
	"github.com/tcp-upper/tcp-upper/netstack"
)

// TestPAWSDropsOldTimestamp guards our patch
// third_party/patches/gvisor/0004-*.patch (RFC 7323 5.3 R1, PAWS: with
// timestamps negotiated, a segment without RST whose TSval is older than
// TS.Recent is not acceptable: it is answered with an ACK and dropped). A
// hand-driven client with timestamps sends data at TSval 2000, then in-window
// data whose TSval 1500 says it is an old duplicate (as from an earlier
// wrap of the sequence space). The server must answer with an ACK that
// echoes TS.Recent and does not acknowledge the data, and its application
// must read the fresh copy the client sends next, not the old one.
//
// Upstream gVisor has no PAWS and takes the old segment's data.
// scripts/unpatched.sh go test ./netstack -run TestPAWS shows it failing
// without the patch.
func TestPAWSDropsOldTimestamp(t *testing.T) {
	leakcheck.Check(t)
	srv := newRawServer(t, plainLink, netstack.Options{})
	c := srv.dial(t, 42000, 1000, 1000)
	conn := srv.accept(t)

	first := []byte("first segment")
	c.tsVal = 2000
	c.next(header.TCPFlagAck|header.TCPFlagPsh, first)
	r, ok := c.awaitAck()
	if !ok || r.Ack != uint32(c.sndNxt) {
		t.Fatalf("the server did not acknowledge the first segment (got %+v)", r)
	}
	if ecr, _ := tsEcr(r); ecr != 2000 {
		t.Fatalf("its ACK echoes TSval %d, want 2000", ecr)
	}

	old := []byte("OLD DUPLICATE")
	s := c.segment(header.TCPFlagAck|header.TCPFlagPsh, old)
	s.Options = tsOption(1500, c.tsRecent)
	c.send(s)
	r, ok = c.awaitAck()
	if !ok {
		t.Fatal("no ACK in reply to the segment with an old timestamp within 2s")
	}
	if r.Ack != uint32(c.sndNxt) {
		t.Errorf("the server took the data of a segment with TSval 1500 < TS.Recent 2000: it acknowledged %d bytes of it", r.Ack-uint32(c.sndNxt))
	}
	if ecr, _ := tsEcr(r); ecr != 2000 {
		t.Errorf("the reply echoes TSval %d, want TS.Recent 2000", ecr)
	}

	fresh := []byte("fresh segment")
	c.tsVal = 2001
	c.next(header.TCPFlagAck|header.TCPFlagPsh, fresh)
	want := string(first) + string(fresh)
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(conn, got); err != nil {
		t.Fatalf("the application read %q: %v", got, err)
	}
	if string(got) != want {
		t.Errorf("the application read %q, want %q", got, want)
	}
}
