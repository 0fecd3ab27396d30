//go:build !gvisor_unpatched

package netstack_test

import (
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/internal/leakcheck"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
)

// TestTrackerEventsAreTheStacks: the connection tracker's state events
// come from the observe hook (patch 0009): each carries exactly the
// numbers the hook was given at that change (relative to the ISNs), and
// before the handshake completes, when the stack has no such numbers,
// they are unknown: "-" in text, null in JSON, not 0.
func TestTrackerEventsAreTheStacks(t *testing.T) {
	leakcheck.Check(t)
	srvLog := newObsLog()
	srv, cli := pair(t, plainLink, netstack.Options{Inspect: true, TimeWait: 300 * time.Millisecond, TCPObserve: srvLog.hook}, netstack.Options{})
	sub := srv.Tracker().Subscribe(1000)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn := echo(ctx, t, srv, cli, app.ServerOptions{})
	if err := app.Session(conn, app.NewPipeLines(strings.NewReader("abc\nhello\n")), io.Discard); err != nil {
		t.Fatal(err)
	}
	evs := states(t, sub, 5, 5*time.Second)
	if got, want := transitions(evs), "LISTEN -> SYN-RCVD -> ESTABLISHED -> CLOSE-WAIT -> LAST-ACK -> CLOSED"; got != want {
		t.Fatalf("tracker: %s, want %s", got, want)
	}
	obs := ofKind(ofConn(srvLog.wait(t, time.Second, "server CLOSED", reached(tcp.StateClose))), tcp.TCPObserveState)
	est := stateEvent(obs, tcp.StateSynRecv, tcp.StateEstablished)
	if est == nil {
		t.Fatal("the hook saw no SYN-RCVD -> ESTABLISHED")
	}
	iss, irs := uint32(est.Sender.SndUna-1), uint32(est.Receiver.RcvNxt-1)
	for _, ev := range evs {
		var o *tcp.TCPObservation
		for i := range obs {
			if obs[i].To != tcp.StateConnecting && inspect.FromGvisor(obs[i].To) == ev.To {
				o = &obs[i]
			}
		}
		if o == nil {
			t.Errorf("%s: no such change seen by the hook", ev.Text())
			continue
		}
		if !ev.ISSKnown || !ev.IRSKnown || ev.ISS != iss || ev.IRS != irs {
			t.Errorf("%s: ISS %d (known %v) IRS %d (known %v), want %d %d", ev.Text(), ev.ISS, ev.ISSKnown, ev.IRS, ev.IRSKnown, iss, irs)
		}
		if !o.Connected {
			if ev.N.Known || !strings.Contains(ev.Text(), " snd.una=- ") || !strings.Contains(ev.Text(), " cwnd=- ") {
				t.Errorf("%s: the stack had no numbers yet, want them unknown", ev.Text())
			}
			j, err := json.Marshal(&ev)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(j), `"snd_una":null`) || !strings.Contains(string(j), `"cwnd":null`) {
				t.Errorf("JSON %s: want null numbers", j)
			}
			var back inspect.Event
			if err := json.Unmarshal(j, &back); err != nil || back.N.Known {
				t.Errorf("JSON %s read back as %+v (%v): want unknown numbers", j, back.N, err)
			}
			continue
		}
		s := &o.Sender
		want := inspect.Numbers{Known: true,
			SndUna: uint32(s.SndUna) - iss, SndNxt: uint32(s.SndNxt) - iss, RcvNxt: uint32(o.Receiver.RcvNxt) - irs,
			SndWnd: uint32(s.SndWnd), RcvWnd: uint32(o.RcvWnd), Cwnd: s.SndCwnd, Ssthresh: s.Ssthresh,
			RTO: s.RTO, SRTTKnown: s.RTTState.SRTTInited, SRTT: s.RTTState.SRTT, RTTVar: s.RTTState.RTTVar}
		if ev.N != want {
			t.Errorf("%s\n numbers  %+v\n the hook %+v", ev.Text(), ev.N, want)
		}
	}
}
