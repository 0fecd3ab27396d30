package inspect

import (
	"encoding/json"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"
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
