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
		N: Numbers{Known: true, Missing: FieldRcvNxt | FieldRTO, SeqAbsolute: true,
			SndUna: 3735928559, SndNxt: 3735928560, SndWnd: 64256, RcvWnd: 65160, Cwnd: 10, Ssthresh: math.MaxInt32,
			SRTTKnown: true, SRTT: 250 * time.Microsecond},
	}
	text := ev.Text()
	for _, want := range []string{" ant/kernel 10.0.2.2:9999 FIN-WAIT-2 -> TIME-WAIT ", " snd.una=#3735928559 snd.nxt=#3735928560 rcv.nxt=- snd.wnd=64256 ", " ssthresh=inf srtt=0.250ms rto=-"} {
		if !strings.Contains(text, want) {
			t.Errorf("text %q lacks %q", text, want)
		}
	}
	b, err := json.Marshal(&ev)
	if err != nil {
		t.Fatal(err)
	}
	js := string(b)
	for _, want := range []string{`"stack":"kernel"`, `"host":"ant"`, `"rcv_nxt":null`, `"rto_ms":null`, `"snd_una":3735928559`, `"ssthresh":-1`, `"seq_absolute":true`} {
		if !strings.Contains(js, want) {
			t.Errorf("JSON %s lacks %s", js, want)
		}
	}
	var back Event
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Text() != text {
		t.Errorf("read back:\n got %s\nwant %s", back.Text(), text)
	}

	// Our stack's event: every number known, relative, no # and no
	// seq_absolute.
	ev.Stack, ev.Host, ev.N.Missing, ev.N.SeqAbsolute = StackNetstack, "apple", 0, false
	ev.N.SndUna, ev.N.SndNxt, ev.N.RcvNxt, ev.N.RTO = 5, 6, 6, 201*time.Millisecond
	if text := ev.Text(); !strings.Contains(text, " apple/netstack ") || !strings.Contains(text, " snd.una=5 snd.nxt=6 rcv.nxt=6 ") || !strings.HasSuffix(text, " rto=201ms") {
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
