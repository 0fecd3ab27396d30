
// TestTrackerEventsAreTheStacks: the connection tracker's state events
// come from the observe hook: each carries exactly the numbers the hook
// was given at that change (relative to the ISNs), and before the
// handshake completes, when the stack has no such numbers, they are
// unknown: "-" in text, null in JSON, not 0.
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
	iss, irs := est.Sender.SndUna-1, est.Receiver.RcvNxt-1
	for _, ev := range evs {
		var o *tcp.TCPObservation
		for i := range obs {
			if to, _ := inspect.ParseState(strings.ReplaceAll(obs[i].To.String(), "WAIT", "WAIT")); obs[i].To != tcp.StateConnecting && to == ev.To && (ev.To != inspect.Closed || obs[i].To == tcp.StateClose) {
				o = &obs[i]
			}
		}
		if o == nil {
			t.Errorf("%s: no such change seen by the hook", ev.Text())
			continue
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
			continue
		}
		want := inspect.Numbers{Known: true,
			SndUna: uint32(o.Sender.SndUna - iss), SndNxt: uint32(o.Sender.SndNxt - iss), RcvNxt: uint32(o.Receiver.RcvNxt - irs),
			SndWnd: uint32(o.Sender.SndWnd), RcvWnd: uint32(o.RcvWnd), Cwnd: o.Sender.SndCwnd, Ssthresh: o.Sender.Ssthresh,
			RTO: o.Sender.RTO, SRTTKnown: o.Sender.RTTState.SRTTInited, SRTT: o.Sender.RTTState.SRTT}
		if ev.N != want {
			t.Errorf("%s\n numbers %+v\n the hook's %+v", ev.Text(), ev.N, want)
		}
		if uint32(ev.ISS) != uint32(iss) || uint32(ev.IRS) != uint32(irs) || !ev.ISSKnown || !ev.IRSKnown {
			t.Errorf("%s: ISS %d IRS %d, want %d %d", ev.Text(), ev.ISS, ev.IRS, iss, irs)
		}
	}
}
