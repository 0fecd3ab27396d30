package main

import (
	"context"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/netstack/control"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
)

func TestFormatSS(t *testing.T) {
	rows := []control.Socket{
		{State: inspect.Listen, Local: netip.MustParseAddrPort("0.0.0.0:9999"), SendQ: 4096},
		{State: inspect.Established, Local: netip.MustParseAddrPort("10.0.2.2:9999"), Remote: netip.MustParseAddrPort("10.0.1.2:47762"), RecvQ: 12, SendQ: 3000,
			Info: &inspect.SocketInfo{RTO: 204 * time.Millisecond, RTT: 61 * time.Microsecond, RTTVar: 30 * time.Microsecond, MSS: 1448, Cwnd: 10, Ssthresh: 1 << 31, WScalePeer: 7, WScaleOurs: 7, SndUna: 1, SndNxt: 5, RcvNxt: 9}},
		{State: inspect.TimeWait, Local: netip.MustParseAddrPort("10.0.2.2:9999"), Remote: netip.MustParseAddrPort("10.0.1.2:47770"), TimeWaitLeft: 22100 * time.Millisecond},
	}
	want := `State     Recv-Q Send-Q Local Address:Port Peer Address:Port
LISTEN    0      4096         0.0.0.0:9999      0.0.0.0:*
ESTAB     12     3000        10.0.2.2:9999     10.0.1.2:47762
	 wscale:7,7 rto:204 rtt:0.061/0.03 mss:1448 cwnd:10 bytes_sent:0 bytes_acked:0 bytes_received:0 segs_out:0 segs_in:0 retrans:0 snd_wnd:0 rcv_wnd:0 snd.una:1 snd.nxt:5 rcv.nxt:9
TIME-WAIT 0      0           10.0.2.2:9999     10.0.1.2:47770 timer:(timewait,23sec)
`
	if got := FormatSS(rows, true); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	if got := FormatSS(rows, false); strings.Contains(got, "wscale") {
		t.Fatalf("-i detail without -i:\n%s", got)
	}
}

func TestParseSS(t *testing.T) {
	f, err := parseSS([]string{"-tani", "--control", "/x.sock"})
	if err != nil || !f.all || !f.info || f.listening || f.target.path != "/x.sock" {
		t.Fatalf("%+v %v", f, err)
	}
	if f, err := parseSS([]string{"-l", "--name=lab1", "--json"}); err != nil || !f.listening || !f.json || f.target.name != "lab1" {
		t.Fatalf("%+v %v", f, err)
	}
	for _, bad := range [][]string{{"-x"}, {"state", "established"}, {"--control"}} {
		if _, err := parseSS(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestEventsAndTraceAreOneCommand: events streams connection events, and
// trace, its first name, still runs the same command.
func TestEventsAndTraceAreOneCommand(t *testing.T) {
	for _, name := range []string{"events", "trace"} {
		var stdout, stderr strings.Builder
		if code := run(context.Background(), []string{name, "--format", "xml"}, &stdout, &stderr); code != 2 {
			t.Fatalf("%s --format xml: exit %d, want 2 (stderr %q)", name, code, stderr.String())
		}
		if !strings.Contains(stderr.String(), "bad --format") {
			t.Fatalf("%s --format xml: stderr %q, want the events command's bad --format", name, stderr.String())
		}
		stderr.Reset()
		if code := run(context.Background(), []string{name, "-h"}, &stdout, &stderr); code != 0 || !strings.Contains(stderr.String(), prog+" events [--format text|json]") {
			t.Fatalf("%s -h: exit %d, usage %q", name, code, stderr.String())
		}
	}
	var stderr strings.Builder
	run(context.Background(), []string{"help"}, io.Discard, &stderr)
	if !strings.Contains(stderr.String(), "events ") || !strings.Contains(stderr.String(), "trace ") {
		t.Fatalf("help lists no events or trace:\n%s", stderr.String())
	}
}
