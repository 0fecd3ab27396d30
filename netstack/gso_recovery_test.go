package netstack_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/netstack/fault"
)

// TestGSOSenderRecoversFromLoss guards our second gVisor patch
// (third_party/patches/gvisor/0002-...): a sender with GSO whose
// super-segments lose some of their wire segments must repair the holes
// from SACKs, as a plain sender does, not wait for retransmission timeouts.
// The client stack sends through an offloading link (no rules of its own,
// so it keeps GSO); the server's fault layer cuts its super-segments into
// wire segments and drops 15% of them. Upstream gVisor took 11-33 s and
// 40-60 RTOs for this; patched, about 1.5 s and a handful.
func TestGSOSenderRecoversFromLoss(t *testing.T) {
	r, err := fault.Parse("in data drop prob=0.15")
	if err != nil {
		t.Fatal(err)
	}
	srv, cli := pair(t, offloadLink, netstack.Options{Fault: fault.Options{Seed: 7, Rules: []*fault.Rule{r}}}, netstack.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn := echo(ctx, t, srv, cli, app.ServerOptions{})
	const total = 4 << 20
	res, err := app.Bulk(ctx, conn, app.BulkOptions{Total: total, Seed: 3, StallAfter: 30 * time.Second})
	if err != nil {
		t.Fatalf("bulk: %v", err)
	}
	c := counters(cli)
	t.Logf("4 MiB each way in %v: client %d retransmits, %d RTOs, %d super-segments sent; server dropped %d wire segments",
		res.Elapsed.Round(time.Millisecond), c["tcp.retransmits"], c["tcp.timeouts"], c["link.gso_out"], counters(srv)["fault.dropped"])
	if c["link.gso_out"] == 0 {
		t.Fatal("the client sent no super-segments: the test does not exercise GSO")
	}
	if c["tcp.retransmits"] == 0 {
		t.Fatal("no retransmissions: the faults did not bite")
	}
	if c["tcp.timeouts"] > 20 {
		t.Errorf("%d retransmission timeouts: holes in GSO segments were left to the RTO (upstream gVisor: 40-60)", c["tcp.timeouts"])
	}
}

// TestIdleRuleKeepsOffloads: a rule that cannot take a data segment (here
// RSTs on port 1) leaves the offloads alone, so it costs nothing at bulk
// speed: super-segments still cross the link both ways whole. A rule on
// outgoing data makes connections opened under it send wire segments.
func TestIdleRuleKeepsOffloads(t *testing.T) {
	for _, tc := range []struct {
		rule      string
		srvGSOOut bool // the server still sends super-segments
		srvGSOIn  bool // super-segments from the client reach the stack whole
	}{
		{"in rst drop port=1", true, true},
		{"out rst drop port=1", false, true},
		{"in data delay 1ms", true, false},
		// Small packets with partial checksums are judged as they are:
		// the rule takes the client's SYN (and the stack's SYN-ACK
		// answers the retransmission).
		{"in syn drop count=1", true, true},
	} {
		t.Run(tc.rule, func(t *testing.T) {
			r, err := fault.Parse(tc.rule)
			if err != nil {
				t.Fatal(err)
			}
			srv, cli := pair(t, offloadLink, netstack.Options{Fault: fault.Options{Rules: []*fault.Rule{r}}}, netstack.Options{})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			conn := echo(ctx, t, srv, cli, app.ServerOptions{})
			if _, err := app.Bulk(ctx, conn, app.BulkOptions{Total: 4 << 20, Seed: 1, StallAfter: 30 * time.Second}); err != nil {
				t.Fatal(err)
			}
			s, c := counters(srv), counters(cli)
			t.Logf("server: %d super-segments out, %d in (client sent %d); segments in %d", s["link.gso_out"], s["link.gso_in"], c["link.gso_out"], s["tcp.segments_in"])
			if strings.Contains(tc.rule, "drop") && strings.Contains(tc.rule, "syn") && s["fault.dropped"] != 1 {
				t.Errorf("fault.dropped %d, want the one SYN", s["fault.dropped"])
			}
			if got := s["link.gso_out"] > 0; got != tc.srvGSOOut {
				t.Errorf("server sent super-segments: %v, want %v", got, tc.srvGSOOut)
			}
			if c["link.gso_out"] == 0 {
				t.Fatal("the client sent no super-segments")
			}
			// Each packet the client sent reaches the server's stack as
			// one segment when the rules leave it whole; a cut
			// super-segment becomes two or more.
			whole := s["tcp.segments_in"] < c["link.packets_out"]+c["link.gso_out"]
			if whole != tc.srvGSOIn {
				t.Errorf("super-segments reached the stack whole: %v, want %v", whole, tc.srvGSOIn)
			}
		})
	}
}
