package experiment

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/tcp-upper/tcp-upper/lab"
	"github.com/tcp-upper/tcp-upper/netstack/fault"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
)

func kinds(evs []inspect.Event, k inspect.Kind) []inspect.Event {
	var out []inspect.Event
	for _, ev := range evs {
		if ev.Kind == k {
			out = append(out, ev)
		}
	}
	return out
}

func transitions(evs []inspect.Event) string {
	var s []string
	for _, ev := range evs {
		if ev.Kind == inspect.KindState {
			s = append(s, ev.From.String()+"→"+ev.To.String())
		}
	}
	return strings.Join(s, " ")
}

// echo writes n bytes of text through c and checks the uppercased echo.
func echo(c io.ReadWriter, n int) error {
	data := bytes.Repeat([]byte("abcdefghijklmnopqrstuvwxyz0123456789\n"), n/37+1)[:n]
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		errc <- err
	}()
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if err := <-errc; err != nil {
		return err
	}
	if !bytes.Equal(got, bytes.ToUpper(data)) {
		return fmt.Errorf("the echo differs from what was sent")
	}
	return nil
}

// dialEcho connects from ant, echoes n bytes through the server within
// timeout, and records whether every byte came back, uppercased, as the
// expectation expect.
func (e *Env) dialEcho(n int, timeout time.Duration, expect string) error {
	c, _, err := e.Dial(5*time.Second, 0)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	err = echo(c, n)
	evidence := fmt.Sprintf("%d KiB echoed, checked byte by byte", n>>10)
	if err != nil {
		evidence = err.Error()
	}
	e.Expect(err == nil, expect, "%s", evidence)
	return nil
}

var catalogue = []*Experiment{
	{
		Name: "handshake", Summary: "the three-way handshake, seen from the server's stack",
		Run: func(e *Env) error {
			c, took, err := e.Dial(5*time.Second, 0)
			if err != nil {
				return err
			}
			defer c.Close()
			if err := Exchange(c, "abc\n", 5*time.Second); err != nil {
				return err
			}
			evs := e.Events()
			tr := transitions(evs)
			e.Expect(strings.HasPrefix(tr, "LISTEN→SYN-RCVD SYN-RCVD→ESTABLISHED"), "LISTEN → SYN-RCVD → ESTABLISHED", "transitions: %s", tr)
			var isn string
			for _, ev := range evs {
				if ev.To == inspect.SynRcvd {
					isn = ev.Cause
				}
			}
			e.Expect(strings.Contains(isn, "peer ISN") && strings.Contains(isn, "our ISN"), "the SYN-RCVD event names both ISNs", "%s", isn)
			e.Expect(took < 500*time.Millisecond, "connect completes in one round trip", "connect took %v", took.Round(time.Microsecond))
			e.Expect(e.Counter("tcp.passive_opens") == 1, "one passive open counted", "tcp.passive_opens=%d", e.Counter("tcp.passive_opens"))
			return nil
		},
	},
	{
		Name: "syn-loss", Summary: "the client's SYN is lost twice: its retransmissions back off 1s, then 2s",
		Faults: []string{"in syn drop count=2"},
		Run: func(e *Env) error {
			// Linux 6.7+ retries SYNs at linear 1s intervals first
			// (tcp_syn_linear_timeouts=4); the textbook backoff needs 0.
			if e.Sysctl(lab.Ant, "net.ipv4.tcp_syn_linear_timeouts", "0") {
				e.Step("set net.ipv4.tcp_syn_linear_timeouts=0 in ant (Linux 6.7+ starts with linear SYN retries) for the classic exponential backoff")
			}
			c, took, err := e.Dial(10*time.Second, 0)
			if err != nil {
				return err
			}
			defer c.Close()
			f := kinds(e.Events(), inspect.KindFault)
			e.Expect(len(f) == 2, "two SYNs dropped", "%d fault events", len(f))
			if len(f) == 2 {
				gap := f[1].Time.Sub(f[0].Time)
				e.Expect(gap > 800*time.Millisecond && gap < 1500*time.Millisecond, "the first SYN retransmission comes about 1s after the SYN", "gap %v", gap.Round(time.Millisecond))
			}
			e.Expect(took > 2500*time.Millisecond && took < 4500*time.Millisecond, "connect takes about 1s + 2s = 3s", "connect took %v", took.Round(time.Millisecond))
			return Exchange(c, "abc\n", 5*time.Second)
		},
	},
	{
		Name: "syn-ack-loss", Summary: "our SYN-ACK is lost: the server's stack sends it again",
		Faults: []string{"out syn-ack drop count=1"},
		Run: func(e *Env) error {
			c, took, err := e.Dial(10*time.Second, 0)
			if err != nil {
				return err
			}
			defer c.Close()
			evs := e.Events()
			var again []string
			for _, ev := range evs {
				if (ev.Kind == inspect.KindRTO || ev.Kind == inspect.KindRetransmit) && strings.Contains(ev.Cause, "SYN-ACK") {
					again = append(again, ev.Cause)
				}
			}
			e.Expect(len(kinds(evs, inspect.KindFault)) == 1, "one SYN-ACK dropped", "%d fault events", len(kinds(evs, inspect.KindFault)))
			e.Expect(len(again) >= 1, "the SYN-ACK is sent again", "%s", strings.Join(again, "; "))
			e.Expect(took > 800*time.Millisecond && took < 3*time.Second, "connect takes about one retransmission timeout (1s)", "connect took %v", took.Round(time.Millisecond))
			return Exchange(c, "abc\n", 5*time.Second)
		},
	},
	{
		Name: "data-loss-rto", Summary: "the last segment of a flight is lost: no duplicate ACKs can follow, so only the retransmission timer repairs it",
		Faults: []string{"out data drop count=1"}, Classic: true,
		Run: func(e *Env) error {
			c, _, err := e.Dial(5*time.Second, 0)
			if err != nil {
				return err
			}
			defer c.Close()
			start := time.Now()
			if err := Exchange(c, "one segment, alone in its flight\n", 10*time.Second); err != nil {
				return err
			}
			took := time.Since(start)
			evs := e.Events()
			rto := kinds(evs, inspect.KindRTO)
			e.Expect(len(kinds(evs, inspect.KindFault)) == 1, "our reply is dropped once", "%d fault events", len(kinds(evs, inspect.KindFault)))
			e.Expect(len(rto) >= 1 && e.Counter("tcp.timeouts") >= 1, "the retransmission timer fires", "%d rto events, tcp.timeouts=%d", len(rto), e.Counter("tcp.timeouts"))
			e.Expect(e.Counter("tcp.fast_retransmits") == 0, "no fast retransmit (nothing followed the lost segment)", "tcp.fast_retransmits=%d", e.Counter("tcp.fast_retransmits"))
			e.Expect(took >= 190*time.Millisecond, "the reply arrives after at least the minimum RTO (200ms)", "reply after %v", took.Round(time.Millisecond))
			return nil
		},
	},
	{
		Name: "fast-retransmit", Summary: "one segment lost mid-flight: the third duplicate ACK (RFC 5681; with SACK, RFC 6675's scoreboard) starts fast retransmit, which repairs it without waiting for the timer",
		Faults: []string{"out data drop nth=20"}, Classic: true,
		Run: func(e *Env) error {
			if err := e.dialEcho(256<<10, 20*time.Second, "256 KiB come back byte-exact"); err != nil {
				return err
			}
			evs := e.Events()
			fr := e.Counter("tcp.fast_retransmits") + e.Counter("tcp.sack_recovery")
			e.Expect(len(kinds(evs, inspect.KindFault)) == 1, "one of our data segments is dropped", "%d fault events", len(kinds(evs, inspect.KindFault)))
			frs := kinds(evs, inspect.KindFastRetransmit)
			e.Expect(fr >= 1 && len(frs) >= 1, "fast retransmit / SACK recovery repairs it", "tcp.fast_retransmits=%d tcp.sack_recovery=%d; the stack: %s", e.Counter("tcp.fast_retransmits"), e.Counter("tcp.sack_recovery"), causes(frs))
			e.Expect(e.Counter("tcp.timeouts") == 0, "without an RTO", "tcp.timeouts=%d", e.Counter("tcp.timeouts"))
			return nil
		},
	},
	{
		Name: "reorder", Summary: "a client segment overtaken by the next one: the stack buffers out-of-order data and delivers in order",
		Faults: []string{"in data reorder nth=5"},
		Run: func(e *Env) error {
			if err := e.dialEcho(128<<10, 20*time.Second, "the application receives the bytes in order"); err != nil {
				return err
			}
			e.Expect(e.Counter("fault.reordered") == 1, "one segment arrives after its successor", "fault.reordered=%d", e.Counter("fault.reordered"))
			e.Expect(e.Counter("tcp.timeouts") == 0, "no retransmission timeout on our side", "tcp.timeouts=%d", e.Counter("tcp.timeouts"))
			return nil
		},
	},
	{
		Name: "duplicate", Summary: "a client segment arrives twice: the stack acknowledges and discards the copy",
		Faults: []string{"in data dup nth=3"},
		Run: func(e *Env) error {
			if err := e.dialEcho(64<<10, 20*time.Second, "the copy never reaches the application (no byte twice)"); err != nil {
				return err
			}
			e.Expect(e.Counter("fault.duplicated") == 1, "one segment is duplicated", "fault.duplicated=%d", e.Counter("fault.duplicated"))
			return nil
		},
	},
	{
		Name: "corruption", Summary: "client segments with a flipped bit: checksum errors are counted, the segments dropped and retransmitted, nothing corrupt reaches the app",
		Faults: []string{"in data corrupt count=3"},
		Run: func(e *Env) error {
			if err := e.dialEcho(64<<10, 30*time.Second, "the client retransmits them and nothing corrupt reaches the app"); err != nil {
				return err
			}
			e.Expect(e.Counter("fault.corrupted") == 3, "three segments corrupted", "fault.corrupted=%d", e.Counter("fault.corrupted"))
			e.Expect(e.Counter("tcp.checksum_errors") == 3, "the stack counts three checksum errors", "tcp.checksum_errors=%d", e.Counter("tcp.checksum_errors"))
			return nil
		},
	},
	{
		Name: "blackhole", Summary: "the path swallows our data for 5s: the retransmission timer doubles each time, then the transfer resumes",
		Classic: true,
		Run: func(e *Env) error {
			c, _, err := e.Dial(5*time.Second, 0)
			if err != nil {
				return err
			}
			defer c.Close()
			if err := Exchange(c, "before\n", 5*time.Second); err != nil {
				return err
			}
			r, _ := fault.Parse("out data blackhole for=5s")
			e.Stack.Faults().Add(r)
			e.Step("added 'out data blackhole for=5s'; sending a line whose reply falls into it")
			start := time.Now()
			if err := Exchange(c, "into the hole\n", 30*time.Second); err != nil {
				return err
			}
			took := time.Since(start)
			rto := kinds(e.Events(), inspect.KindRTO)
			var rtos []string
			doubling := len(rto) >= 3
			for i, ev := range rto {
				rtos = append(rtos, ev.N.RTO.Round(time.Millisecond).String())
				if i > 0 && ev.N.RTO < rto[i-1].N.RTO*3/2 && ev.N.RTO < 60*time.Second {
					doubling = false
				}
			}
			e.Expect(doubling, "the RTO doubles at each expiry (exponential backoff)", "rto after each expiry: %s", strings.Join(rtos, ", "))
			e.Expect(took >= 5*time.Second && took < 20*time.Second, "the reply gets through after the path returns", "reply after %v", took.Round(time.Millisecond))
			return nil
		},
	},
	{
		Name: "zero-window", Summary: "the client stops reading: its window closes, our stack probes it, and the transfer resumes when it reads",
		Run: func(e *Env) error {
			c, _, err := e.Dial(5*time.Second, 8<<10)
			if err != nil {
				return err
			}
			defer c.Close()
			const total = 4 << 20
			data := bytes.Repeat([]byte("zero window "), total/12+1)[:total]
			werr := make(chan error, 1)
			go func() {
				c.SetWriteDeadline(time.Now().Add(60 * time.Second))
				_, err := c.Write(data)
				werr <- err
			}()
			e.Step("the client writes 4 MiB and reads nothing until its window closes")
			closed := e.Await(20*time.Second, func(evs []inspect.Event) bool {
				for _, ev := range kinds(evs, inspect.KindWindow) {
					if strings.Contains(ev.Cause, "peer advertises a zero window") {
						return true
					}
				}
				return false
			})
			e.Expect(closed, "the client's window closes to zero", "window events: %s", causes(kinds(e.Events(), inspect.KindWindow)))
			e.Step("the client reads everything")
			got := make([]byte, total)
			c.SetReadDeadline(time.Now().Add(60 * time.Second))
			if _, err := io.ReadFull(c, got); err != nil {
				return err
			}
			if err := <-werr; err != nil {
				return err
			}
			e.Expect(bytes.Equal(got, bytes.ToUpper(data)), "the transfer resumes and completes byte-exact", "%d bytes echoed", total)
			opened := false
			for _, ev := range kinds(e.Events(), inspect.KindWindow) {
				if strings.Contains(ev.Cause, "open") {
					opened = true
				}
			}
			e.Expect(opened, "the window opens again", "window events: %s", causes(kinds(e.Events(), inspect.KindWindow)))
			return nil
		},
	},
	{
		Name: "time-wait", Summary: "our stack closes first, holds TIME-WAIT for 2MSL and re-ACKs the peer's retransmitted FIN",
		TimeWait: 3 * time.Second, IdleClose: 500 * time.Millisecond,
		Run: func(e *Env) error {
			c, _, err := e.Dial(5*time.Second, 0)
			if err != nil {
				return err
			}
			defer c.Close()
			if err := Exchange(c, "abc\n", 5*time.Second); err != nil {
				return err
			}
			// Our reply carried the ACK of the line: the next pure ACK
			// our stack sends is the one for the client's FIN.
			r, _ := fault.Parse("out ack drop count=1")
			e.Stack.Faults().Add(r)
			e.Step("the server closes after 500ms idle; our last ACK of the client's FIN is dropped ('out ack drop count=1'), so the client sends its FIN again")
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				return fmt.Errorf("want the server's FIN (EOF), got %d bytes, %v", n, err)
			}
			// The client closes once its ACK of our FIN has arrived, so
			// our stack always goes FIN-WAIT-1 -> FIN-WAIT-2 -> TIME-WAIT
			// (a FIN that carried that ACK would take it from FIN-WAIT-1
			// straight to TIME-WAIT).
			if !e.Await(2*time.Second, reached(inspect.FinWait1, inspect.FinWait2)) {
				return fmt.Errorf("our stack did not reach FIN-WAIT-2 within 2s of its FIN: transitions %s", transitions(e.Events()))
			}
			c.Close()
			e.Await(3*time.Second+5*time.Second, reached(inspect.TimeWait, inspect.Closed))
			evs := e.Events()
			tr := transitions(evs)
			e.Expect(strings.Contains(tr, "ESTABLISHED→FIN-WAIT-1 FIN-WAIT-1→FIN-WAIT-2 FIN-WAIT-2→TIME-WAIT TIME-WAIT→CLOSED"), "we close first: FIN-WAIT-1 → FIN-WAIT-2 → TIME-WAIT → CLOSED", "transitions: %s", tr)
			var held time.Duration
			var twStart, reack time.Time
			for _, ev := range evs {
				switch {
				case ev.To == inspect.TimeWait:
					twStart = ev.Time
				case ev.From == inspect.TimeWait && ev.To == inspect.Closed:
					held = ev.Held
				case ev.Kind == inspect.KindRetransmit && strings.Contains(ev.Cause, "FIN again"):
					reack = ev.Time
				}
			}
			e.Expect(e.Counter("fault.dropped") == 1 && e.Counter("tcp.segments_in") > 0, "our first ACK of the FIN was lost", "fault.dropped=%d", e.Counter("fault.dropped"))
			reacked := !reack.IsZero() && !twStart.IsZero()
			e.Expect(reacked, "in TIME-WAIT the stack re-ACKs the retransmitted FIN", "events: %s", causes(evs[max(0, len(evs)-4):]))
			// RFC 9293 (3.10.7.4): a FIN received in TIME-WAIT is
			// acknowledged and the 2MSL timeout restarted.
			evidence := fmt.Sprintf("held %v, with no repeated FIN seen", held.Round(time.Millisecond))
			ok := false
			if reacked {
				in, after := reack.Sub(twStart), twStart.Add(held).Sub(reack)
				ok = after > 2900*time.Millisecond && after < 4*time.Second
				evidence = fmt.Sprintf("held %v in all: the repeated FIN came %v in, was re-ACKed and restarted the timer, which ran out %v later", held.Round(time.Millisecond), in.Round(time.Millisecond), after.Round(time.Millisecond))
			}
			e.Expect(ok, "TIME-WAIT lasts 2MSL (--time-wait 3s here) from the last FIN it ACKed", "%s", evidence)
			return nil
		},
	},
}

// causes lists the events' causes, each in quotes: a cause may itself
// hold a semicolon.
func causes(evs []inspect.Event) string {
	if len(evs) == 0 {
		return "none"
	}
	var s []string
	for _, ev := range evs {
		s = append(s, fmt.Sprintf("%q", ev.Cause))
	}
	return strings.Join(s, ", ")
}
