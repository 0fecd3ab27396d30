package netstack_test

import (
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"

	"github.com/tcp-upper/tcp-upper/internal/leakcheck"
	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
	"github.com/tcp-upper/tcp-upper/netstack"
)

// TestTimeWaitAcceptsNewerSyn guards our patch
// third_party/patches/gvisor/0006-*.patch (RFC 6191, RFC 1122 4.2.2.13: a
// SYN for a connection in TIME-WAIT whose timestamp is newer than the old
// connection's TS.Recent, or, without timestamps, whose sequence number is
// above RCV.NXT, ends TIME-WAIT and opens a new connection; with
// timestamps, a SYN whose timestamp is older is an old duplicate and is
// dropped). The server closes first, so its side of each connection waits
// in TIME-WAIT (60 s); then the hand-driven client reconnects from the
// same port, as a client that reuses its port does.
//
// Upstream gVisor looks at the sequence number only: it drops the new SYN
// of a client whose initial sequence number is not above the old
// RCV.NXT, whatever its timestamp, so the reconnection hangs until
// TIME-WAIT ends; and it honours an old duplicate SYN whose sequence
// number happens to be above.
// scripts/unpatched.sh go test ./netstack -run TestTimeWaitAcceptsNewerSyn
// shows it failing without the patch.
func TestTimeWaitAcceptsNewerSyn(t *testing.T) {
	leakcheck.Check(t)
	srv := newRawServer(t, plainLink, netstack.Options{TimeWait: netstack.DefaultTimeWait})
	type syn struct {
		seq   seqnum.Value
		tsVal uint32 // 0: no timestamps
	}
	for i, tc := range []struct {
		name  string
		tsVal uint32 // the old connection's timestamps (0: none); its FIN carries tsVal+1000
		old   *syn   // a SYN the connection in TIME-WAIT must drop
		new   syn    // a SYN that must end TIME-WAIT and open a new connection
	}{
		// The old connection: ISS 5000, so RCV.NXT 5002 after its FIN,
		// and TS.Recent 2000 with timestamps.
		{"newer timestamp, lower sequence number", 1000, nil, syn{4000, 3000}},
		{"older timestamp, higher sequence number", 1000, &syn{6000, 1500}, syn{4000, 3000}},
		{"no timestamps", 0, &syn{4000, 0}, syn{6000, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := uint16(44000 + i)
			old := srv.dial(t, port, 5000, tc.tsVal)
			conn := srv.accept(t)
			conn.Close()
			fin, ok := old.await(2*time.Second, func(s rawtcp.Segment) bool { return s.Flags.Contains(header.TCPFlagFin) })
			if !ok {
				t.Fatal("no FIN from the server")
			}
			old.rcvNxt = seqnum.Value(fin.Seq) + 1
			if old.ts {
				old.tsVal += 1000
			}
			old.next(header.TCPFlagAck|header.TCPFlagFin, nil)
			if r, ok := old.awaitAck(); !ok || r.Ack != uint32(old.sndNxt) {
				t.Fatalf("the server did not acknowledge the FIN (got %+v): not in TIME-WAIT", r)
			}

			c := &rawClient{t: t, srv: srv, me: old.me}
			sendSyn := func(s syn) {
				c.send(rawtcp.Segment{Seq: uint32(s.seq), Flags: header.TCPFlagSyn, Window: 65535, Options: synOptions(s.tsVal)})
			}
			if tc.old != nil {
				// The old SYN, then an out-of-window ACK: TIME-WAIT
				// answers that with an ACK, once it has handled the SYN.
				sendSyn(*tc.old)
				probe := old.segment(header.TCPFlagAck, nil)
				probe.Seq += 1000
				if old.ts {
					probe.Options = tsOption(tc.old.tsVal, old.tsRecent)
				}
				old.send(probe)
				r, ok := c.await(2*time.Second, func(rawtcp.Segment) bool { return true })
				if !ok || r.Flags != header.TCPFlagAck || r.Ack != uint32(old.sndNxt) {
					t.Fatalf("the SYN with seq %d, TSval %d (RCV.NXT %d, TS.Recent %d) ended TIME-WAIT: an old duplicate was honoured (got %+v, want TIME-WAIT's ACK)",
						tc.old.seq, tc.old.tsVal, old.sndNxt, old.tsVal, r)
				}
			}
			sendSyn(tc.new)
			synack, ok := c.await(3*time.Second, func(s rawtcp.Segment) bool { return s.Flags.Contains(header.TCPFlagSyn) })
			if !ok {
				t.Fatalf("no SYN-ACK within 3s: the server dropped the SYN (seq %d, TSval %d) for a connection in TIME-WAIT (RCV.NXT %d, TS.Recent %d); the client waits until TIME-WAIT ends",
					tc.new.seq, tc.new.tsVal, old.sndNxt, old.tsVal)
			}
			if synack.Ack != uint32(tc.new.seq)+1 {
				t.Fatalf("the SYN-ACK acknowledges %d, want %d", synack.Ack, tc.new.seq+1)
			}
			c.sndNxt, c.rcvNxt = tc.new.seq+1, seqnum.Value(synack.Seq)+1
			c.ts = header.ParseSynOptions(synack.Options, true).TS
			c.tsVal = 4000
			c.next(header.TCPFlagAck, nil)
			srv.accept(t) // the new connection reached the application
		})
	}
}
