package netstack_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/internal/pkt"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/netstack/fault"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
	"github.com/tcp-upper/tcp-upper/netstack/pcap"
	"github.com/tcp-upper/tcp-upper/viz"
)

// wireSeg is a segment as the test compares it: direction, flags,
// relative numbers, length and the header's window.
type wireSeg struct {
	t                   time.Time // to the microsecond, as the capture has it
	out                 bool
	flags               string
	seq, end, ack, leng uint32
	rawWin              uint16
	sack                string
}

func (w wireSeg) String() string {
	return fmt.Sprintf("%s out=%v %s %d:%d(%d) ack %d win %d%s", w.t.Format("15:04:05.000000"), w.out, w.flags, w.seq, w.end, w.leng, w.ack, w.rawWin, w.sack)
}

// captured reads the capture's segments of the connection with server,
// numbered relative to each side's SYN, independently of the tracker.
func captured(t *testing.T, path string, server netip.AddrPort) []wireSeg {
	t.Helper()
	pkts, err := pcap.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var isn [2]uint32 // [0] the server's, [1] the client's
	var out []wireSeg
	for _, p := range pkts {
		ip := header.IPv4(p.Data)
		if ip.TransportProtocol() != header.TCPProtocolNumber {
			continue
		}
		tcp := header.TCP(ip.Payload())
		src := netip.AddrPortFrom(netip.AddrFrom4(ip.SourceAddress().As4()), tcp.SourcePort())
		dst := netip.AddrPortFrom(netip.AddrFrom4(ip.DestinationAddress().As4()), tcp.DestinationPort())
		if src != server && dst != server {
			continue
		}
		fromServer := src == server
		me, other := 1, 0
		if fromServer {
			me, other = 0, 1
		}
		if tcp.Flags()&header.TCPFlagSyn != 0 {
			isn[me] = tcp.SequenceNumber()
		}
		n := uint32(int(ip.TotalLength()) - int(ip.HeaderLength()) - int(tcp.DataOffset()))
		w := wireSeg{t: p.Time, out: fromServer, flags: pkt.FlagString(tcp.Flags()), seq: tcp.SequenceNumber() - isn[me], leng: n, rawWin: tcp.WindowSize()}
		w.end = w.seq + n
		if tcp.Flags()&header.TCPFlagAck != 0 {
			w.ack = tcp.AckNumber() - isn[other]
		}
		for _, b := range header.ParseTCPOptions(tcp.Options()).SACKBlocks {
			w.sack += fmt.Sprintf(" sack %d:%d", uint32(b.Start)-isn[other], uint32(b.End)-isn[other])
		}
		out = append(out, w)
	}
	return out
}

func fromEvents(evs []inspect.Event) []wireSeg {
	var out []wireSeg
	for _, ev := range evs {
		if ev.Kind != inspect.KindSegment {
			continue
		}
		g := ev.Seg
		w := wireSeg{t: ev.Time.Truncate(time.Microsecond), out: g.Out, flags: pkt.FlagString(g.Flags), seq: g.Seq, end: g.End, ack: g.Ack, leng: g.Len, rawWin: g.RawWin}
		for _, b := range g.SACK {
			w.sack += fmt.Sprintf(" sack %d:%d", b[0], b[1])
		}
		out = append(out, w)
	}
	return out
}

// byTime orders segments as the capture's clock does; the capture's
// records and the tracker's queue are filled from several goroutines, so
// segments with the same microsecond may come in either order.
func byTime(w []wireSeg) {
	sort.SliceStable(w, func(i, j int) bool {
		if !w[i].t.Equal(w[j].t) {
			return w[i].t.Before(w[j].t)
		}
		return w[i].String() < w[j].String()
	})
}

// TestSegmentEvents: a subscriber that asks for segments gets one segment
// event per segment of the seed's session, handshake, data and close, in
// order with the stack's state changes, numbered exactly as the capture of
// the same run shows them; a subscriber that did not ask gets none.
func TestSegmentEvents(t *testing.T) { forLinks(t, testSegmentEvents) }

func testSegmentEvents(t *testing.T, l link) {
	o := newObserved(t, l, false, app.ServerOptions{})
	tr := o.srv.Tracker()
	segs := tr.Subscribe(4096, inspect.WithSegments())
	o.seedSession(t)
	if got := transitions(states(t, o.srvEvs, 5, 5*time.Second)); got != "LISTEN -> SYN-RCVD -> ESTABLISHED -> CLOSE-WAIT -> LAST-ACK -> CLOSED" {
		t.Fatalf("server: %s", got)
	}
	tr.Sync()
	o.srv.Trace().Flush()
	var evs []inspect.Event
	for n := len(segs.C()); n > 0; n-- {
		evs = append(evs, <-segs.C())
	}
	if segs.Dropped() != 0 {
		t.Fatalf("%d events dropped", segs.Dropped())
	}
	for n := len(o.srvEvs.C()); n > 0; n-- {
		if ev := <-o.srvEvs.C(); ev.Kind == inspect.KindSegment {
			t.Fatalf("a plain subscriber got a segment: %s", ev.Text())
		}
	}

	// In the stream's own order: each state change after the segment
	// that caused it (the ACK of the peer's FIN leaves before the stack
	// reports CLOSE-WAIT: gVisor acknowledges, then changes state).
	var seq []string
	for _, ev := range evs {
		switch ev.Kind {
		case inspect.KindSegment:
			dir := "<"
			if ev.Seg.Out {
				dir = ">"
			}
			s := dir + pkt.FlagString(ev.Seg.Flags)
			if ev.Seg.Len > 0 {
				s += fmt.Sprint(ev.Seg.Len)
			}
			seq = append(seq, s)
		case inspect.KindState:
			seq = append(seq, ev.To.String())
		}
	}
	got := strings.Join(seq, " ")
	t.Logf("stream: %s", got)
	for _, want := range []string{
		"<S SYN-RCVD >S. <. ESTABLISHED",
		"<P.4 ",
		// The ACK of the client's FIN rides on our FIN (patch 0014).
		"<F. CLOSE-WAIT LAST-ACK >F. <. CLOSED",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("stream lacks %q", want)
		}
	}
	if !strings.HasPrefix(got, "<S SYN-RCVD >S.") || !strings.HasSuffix(got, "<. CLOSED") {
		t.Errorf("stream does not start with the handshake and end with the last ACK")
	}
	for i, ev := range evs {
		if ev.Kind == inspect.KindSegment && (!ev.ISSKnown || !ev.IRSKnown || ev.Seg.Absolute) && i > 0 {
			t.Errorf("segment %d without both ISNs: %s", i, ev.Text())
		}
	}

	// Field for field what the capture shows.
	wire := captured(t, o.pcapPath, netip.MustParseAddrPort("10.0.2.2:9999"))
	mine := fromEvents(evs)
	byTime(wire)
	byTime(mine)
	if len(wire) < 10 {
		t.Fatalf("only %d segments in the capture", len(wire))
	}
	if len(mine) != len(wire) {
		t.Errorf("%d segment events, %d segments in the capture", len(mine), len(wire))
	}
	for i := range min(len(mine), len(wire)) {
		if mine[i] != wire[i] {
			t.Errorf("segment %d: event %v\n            capture %v", i, mine[i], wire[i])
		}
	}
	// The window is scaled as negotiated: after the SYNs, win = raw << ws.
	for _, ev := range evs {
		if g := ev.Seg; g != nil && g.Flags&header.TCPFlagSyn == 0 && g.Win < uint32(g.RawWin) {
			t.Errorf("window %d below the header's %d: %s", g.Win, g.RawWin, ev.Text())
		}
	}
}

// TestSegmentSubscriberDrops: a subscriber that never reads loses segment
// events, counted in its Dropped and the tracker's EventsDropped; the stack
// does not wait for it (the session completes), and a subscriber reading
// events only is not affected.
func TestSegmentSubscriberDrops(t *testing.T) {
	o := newObserved(t, plainLink, false, app.ServerOptions{})
	tr := o.srv.Tracker()
	before := tr.Stats().EventsDropped.Load()
	stuck := tr.Subscribe(2, inspect.WithSegments())
	defer stuck.Close()
	start := time.Now()
	o.seedSession(t)
	if got := transitions(states(t, o.srvEvs, 5, 5*time.Second)); got != "LISTEN -> SYN-RCVD -> ESTABLISHED -> CLOSE-WAIT -> LAST-ACK -> CLOSED" {
		t.Fatalf("server: %s", got)
	}
	t.Logf("session with a stuck subscriber: %v", time.Since(start))
	tr.Sync()
	if len(stuck.C()) != 2 {
		t.Errorf("stuck subscriber holds %d, want its 2", len(stuck.C()))
	}
	// 13 segments and 5 state changes at least, 2 delivered.
	if d := stuck.Dropped(); d < 16 {
		t.Errorf("stuck subscriber dropped %d, want at least 16", d)
	}
	if d := tr.Stats().EventsDropped.Load() - before; d != stuck.Dropped() {
		t.Errorf("tracker counted %d dropped, the subscriber %d", d, stuck.Dropped())
	}
	if o.srvEvs.Dropped() != 0 {
		t.Errorf("the events-only subscriber dropped %d", o.srvEvs.Dropped())
	}
	// With the stuck subscriber gone, no segment work is left.
	stuck.Close()
	if tr.Subscribers() != 1 {
		t.Errorf("%d subscribers after Close, want 1", tr.Subscribers())
	}
}

// TestLiveLadderSegments: the live ladder fed the segment stream of a
// session in which the fault layer drops the client's first data segment
// on its way in and our first reply on its way out draws one arrow per
// segment in order, the stack's states at their heights between them, the
// two dropped segments ending in a cross, and their retransmissions
// marked.
func TestLiveLadderSegments(t *testing.T) {
	var rules []*fault.Rule
	for _, r := range []string{"in data drop count=1", "out data drop count=1"} {
		rule, err := fault.Parse(r)
		if err != nil {
			t.Fatal(err)
		}
		rules = append(rules, rule)
	}
	srv, cli := pair(t, plainLink, netstack.Options{Inspect: true, TimeWait: time.Second, Fault: fault.Options{Rules: rules}},
		netstack.Options{TimeWait: time.Second})
	sub := srv.Tracker().Subscribe(4096, inspect.WithSegments())
	plain := srv.Tracker().Subscribe(100)
	ln, err := srv.Listen(9999)
	if err != nil {
		t.Fatal(err)
	}
	server := app.NewServer(ln, app.ServerOptions{}, nil)
	go server.Serve()
	t.Cleanup(func() { server.Shutdown(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := cli.Dial(ctx, netip.MustParseAddrPort("10.0.2.2:9999"))
	if err != nil {
		t.Fatal(err)
	}
	if err := app.Session(c, app.NewPipeLines(strings.NewReader("abc\n")), io.Discard); err != nil {
		t.Fatal(err)
	}
	if got := transitions(states(t, plain, 5, 5*time.Second)); got != "LISTEN -> SYN-RCVD -> ESTABLISHED -> CLOSE-WAIT -> LAST-ACK -> CLOSED" {
		t.Fatalf("server: %s", got)
	}
	srv.Tracker().Sync()
	var out bytes.Buffer
	live, err := viz.NewLive(&out, viz.LadderOptions{Width: 100})
	if err != nil {
		t.Fatal(err)
	}
	live.Header("this stack 10.0.2.2")
	var retx []string
	for n := len(sub.C()); n > 0; n-- {
		ev := <-sub.C()
		if ev.Kind == inspect.KindSegment && ev.Seg.Retransmit {
			retx = append(retx, ev.Seg.String())
		}
		live.Add(ev)
	}
	live.Flush()
	// The tracker marks a retransmission of what it saw: our reply, which
	// left the stack and was dropped below; not the client's segment, whose
	// first copy the fault layer dropped before the tracker.
	ours := len(retx) > 0
	for _, r := range retx {
		ours = ours && strings.HasPrefix(r, "> P. 1:5(4) ack 5 ")
	}
	if !ours {
		t.Errorf("segment events marked retransmit: %q, want our reply's later copies only", retx)
	}
	t.Logf("live ladder:\n%s", out.String())

	// Each row reduced to what it shows: an arrow (direction, label, a
	// cross) or a state.
	arrow := regexp.MustCompile(`^\S+ +#1 \|(.*)\|(?: (\S+))?$`)
	var rows []string
	for _, ln := range strings.Split(out.String(), "\n") {
		m := arrow.FindStringSubmatch(ln)
		if m == nil {
			continue
		}
		body := m[1]
		var words []string
		for _, w := range strings.Fields(body) {
			if w != "dropped" && strings.Trim(w, "-<>X") != "" {
				words = append(words, w)
			}
		}
		label := strings.Join(words, " ")
		switch {
		case m[2] != "":
			rows = append(rows, m[2])
		case strings.Contains(body, "X"):
			rows = append(rows, "X "+label)
		case strings.Contains(body, ">"):
			rows = append(rows, "> "+label)
		case strings.Contains(body, "<"):
			rows = append(rows, "< "+label)
		}
	}
	got := strings.Join(rows, "\n")
	re := regexp.MustCompile(`(?s)^> S 0 win \d+ mss \d+ ws \d+
SYN-RCVD
< S\. 0 ack 1 win \d+ mss \d+ ws \d+
> \. ack 1 win \d+
ESTABLISHED
X P\. 1:5\(4\) ack 1
> P\. 1:5\(4\) ack 1 win \d+ retx
.*X P\. 1:5\(4\) ack 5 win \d+
.*< P\. 1:5\(4\) ack 5 win \d+ retx
.*> F\. 5 ack 5 win \d+
.*CLOSE-WAIT
LAST-ACK
< F\. 5 ack 6 win \d+
> \. ack 6 win \d+
CLOSED$`)
	if !re.MatchString(got) {
		t.Errorf("rows:\n%s\nwant them to match\n%s", got, re)
	}
}
