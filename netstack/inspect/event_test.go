package inspect

import (
	"encoding/json"
	"math"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// A kernel event: tcp_probe's numbers, absolute sequence numbers, no
// rcv.nxt or RTO. Text and JSON say exactly that, and JSON reads back.
func TestEventPartialNumbers(t *testing.T) {
	ev := Event{
		Time: time.Date(2026, 11, 29, 8, 0, 0, 123456000, time.UTC), Kind: KindState,
		Stack: StackKernel, Host: "ant",
		Conn: ConnID{netip.MustParseAddrPort("10.0.1.2:40000"), netip.MustParseAddrPort("10.0.2.2:9999")},
		From: FinWait2, To: TimeWait, Cause: "tracepoint inet_sock_set_state",
		N: Numbers{Known: true, Missing: FieldRcvNxt | FieldRTO | FieldRTTVar, SeqAbsolute: true,
			SndUna: 3735928559, SndNxt: 3735928560, SndWnd: 64256, RcvWnd: 65160, Cwnd: 10, Ssthresh: math.MaxInt32,
			SRTTKnown: true, SRTT: 250 * time.Microsecond},
	}
	text := ev.Text()
	for _, want := range []string{" ant/kernel 10.0.2.2:9999 FIN-WAIT-2 -> TIME-WAIT ", " snd.una=#3735928559 snd.nxt=#3735928560 rcv.nxt=- snd.wnd=64256 ", " ssthresh=inf srtt=0.250ms rttvar=- rto=-"} {
		if !strings.Contains(text, want) {
			t.Errorf("text %q lacks %q", text, want)
		}
	}
	b, err := json.Marshal(&ev)
	if err != nil {
		t.Fatal(err)
	}
	js := string(b)
	for _, want := range []string{`"stack":"kernel"`, `"host":"ant"`, `"rcv_nxt":null`, `"rto_ms":null`, `"rttvar_ms":null`, `"snd_una":3735928559`, `"ssthresh":-1`, `"seq_absolute":true`} {
		if !strings.Contains(js, want) {
			t.Errorf("JSON %s lacks %s", js, want)
		}
	}
	var back Event
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Text() != text || back.N != ev.N {
		t.Errorf("read back:\n got %s %+v\nwant %s %+v", back.Text(), back.N, text, ev.N)
	}

	// Our stack's event: every number known, relative, no # and no
	// seq_absolute.
	ev.Stack, ev.Host, ev.N.Missing, ev.N.SeqAbsolute = StackNetstack, "apple", 0, false
	ev.N.SndUna, ev.N.SndNxt, ev.N.RcvNxt, ev.N.RTO, ev.N.RTTVar = 5, 6, 6, 201*time.Millisecond, 125*time.Microsecond
	if text := ev.Text(); !strings.Contains(text, " apple/netstack ") || !strings.Contains(text, " snd.una=5 snd.nxt=6 rcv.nxt=6 ") || !strings.HasSuffix(text, " srtt=0.250ms rttvar=0.125ms rto=201ms") {
		t.Errorf("netstack text %q", text)
	}
	b, _ = json.Marshal(&ev)
	if strings.Contains(string(b), "seq_absolute") || strings.Contains(strings.NewReplacer(`"iss":null`, "", `"irs":null`, "").Replace(string(b)), "null") {
		t.Errorf("netstack JSON %s: want every number, no seq_absolute", b)
	}
	// Nothing known: every number null, and no host/stack when unset.
	ev = Event{Time: ev.Time, Kind: KindState, Conn: ev.Conn, From: Closed, To: SynSent}
	b, _ = json.Marshal(&ev)
	if strings.Contains(string(b), `"stack"`) || !strings.Contains(string(b), `"cwnd":null`) {
		t.Errorf("unknown numbers JSON %s", b)
	}
	if err := json.Unmarshal(b, &back); err != nil || back.N.Known {
		t.Errorf("read back %+v, %v: want no numbers", back.N, err)
	}
}

// A segment event: its text is the ladder's label, its JSON carries every
// field and reads back to the same segment; a bad direction is refused.
func TestSegmentEventJSON(t *testing.T) {
	ev := Event{
		Time: time.Date(2026, 11, 29, 8, 0, 0, 123456000, time.UTC), Kind: KindSegment,
		Stack: StackNetstack, Host: "apple",
		Conn: ConnID{netip.MustParseAddrPort("10.0.2.2:9999"), netip.MustParseAddrPort("10.0.1.2:40000")},
		ISS:  1000, IRS: 5000, ISSKnown: true, IRSKnown: true,
		Seg: &Segment{Out: true, Flags: header.TCPFlagAck | header.TCPFlagPsh, Seq: 8, End: 22, Ack: 22, Len: 14,
			Win: 524288, RawWin: 4096, SACK: [][2]uint32{{30, 40}}, WScale: -1, Retransmit: true},
	}
	if got, want := ev.Text(), "08:00:00.123456 apple/netstack 10.0.1.2:40000 segment > P. 8:22(14) ack 22 win 524288 sack 30:40 retx"; got != want {
		t.Errorf("text %q\nwant %q", got, want)
	}
	b, err := json.Marshal(&ev)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"seg":{"dir":"out","flags":"P.","seq":8,"end":22,"ack":22,"len":14,"win":524288,"raw_win":4096,"sack":[[30,40]],"retransmit":true}`) {
		t.Errorf("JSON %s", b)
	}
	var back Event
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back.Seg, ev.Seg) || back.Kind != KindSegment || back.ISS != 1000 || back.IRS != 5000 {
		t.Errorf("read back %+v (seg %+v)", back, back.Seg)
	}
	syn := ev
	syn.Seg = &Segment{Flags: header.TCPFlagSyn, RawWin: 64240, Win: 64240, MSS: 1460, WScale: 7, SACKOK: true}
	b, _ = json.Marshal(&syn)
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back.Seg, syn.Seg) {
		t.Errorf("SYN %s read back %+v (%v)", b, back.Seg, err)
	}
	if !strings.Contains(syn.Text(), "segment < S 0 win 64240 mss 1460 ws 7 sackOK") {
		t.Errorf("SYN text %q", syn.Text())
	}
	bad := strings.Replace(string(b), `"dir":"in"`, `"dir":"sideways"`, 1)
	if err := json.Unmarshal([]byte(bad), &back); err == nil {
		t.Errorf("dir sideways accepted: %s", bad)
	}
}

// parseSACK takes the blocks out of real options (NOPs first, as Linux
// sends them) and no blocks out of malformed ones.
func TestParseSACK(t *testing.T) {
	opts := []byte{1, 1, 5, 18, 0, 0, 0, 10, 0, 0, 0, 20, 0, 0, 0, 30, 0, 0, 0, 40}
	var b [4][2]uint32
	if n := parseSACK(opts, &b); n != 2 || b[0] != [2]uint32{10, 20} || b[1] != [2]uint32{30, 40} {
		t.Errorf("%d blocks %v", n, b)
	}
	for _, bad := range [][]byte{{5}, {5, 1}, {5, 18, 0}, {8, 10, 0, 0}} {
		if n := parseSACK(bad, &b); n != 0 {
			t.Errorf("%v: %d blocks", bad, n)
		}
	}
}

// rttvar goes through JSON and back with srtt: a number once the stack
// measured a round trip, null before (our stack) and null always (a stack
// that does not report it: the kernel's tcp_probe), never 0.
func TestRTTVarRoundTrip(t *testing.T) {
	base := Event{
		Time: time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC), Kind: KindRTO, Stack: StackNetstack,
		Conn: ConnID{netip.MustParseAddrPort("10.0.2.2:9999"), netip.MustParseAddrPort("10.0.1.2:40000")},
		N:    Numbers{Known: true, SndUna: 1, SndNxt: 34, RcvNxt: 8, Cwnd: 10, Ssthresh: math.MaxInt32, RTO: 200 * time.Millisecond},
	}
	for _, c := range []struct {
		name     string
		edit     func(n *Numbers)
		json     string // what rttvar_ms must be
		text     string // what the text line must carry
		rttvarOK bool
	}{
		{"measured", func(n *Numbers) { n.SRTTKnown, n.SRTT, n.RTTVar = true, 1500*time.Microsecond, 750*time.Microsecond }, `"rttvar_ms":0.75`, " srtt=1.500ms rttvar=0.750ms ", true},
		{"not yet measured", func(n *Numbers) {}, `"rttvar_ms":null`, " srtt=- rttvar=- ", false},
		{"not reported", func(n *Numbers) {
			n.SRTTKnown, n.SRTT, n.Missing = true, 1500*time.Microsecond, FieldRTTVar
		}, `"rttvar_ms":null`, " srtt=1.500ms rttvar=- ", false},
	} {
		ev := base
		c.edit(&ev.N)
		b, err := json.Marshal(&ev)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), c.json) {
			t.Errorf("%s: JSON %s lacks %s", c.name, b, c.json)
		}
		if text := ev.Text(); !strings.Contains(text, c.text) {
			t.Errorf("%s: text %q lacks %q", c.name, text, c.text)
		}
		var back Event
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if back.N != ev.N || back.N.RTTVarKnown() != c.rttvarOK {
			t.Errorf("%s: read back %+v (rttvar known %v), want %+v (%v)", c.name, back.N, back.N.RTTVarKnown(), ev.N, c.rttvarOK)
		}
		again, _ := json.Marshal(&back)
		if string(again) != string(b) {
			t.Errorf("%s: JSON again\n %s\nwant %s", c.name, again, b)
		}
	}
}
