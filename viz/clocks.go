package viz

import (
	"fmt"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tcp-upper/tcp-upper/netstack/inspect"
)

// Lead is a kernel state change that its stack makes before it sends a
// segment, paired with our capture of that segment: Linux sets SYN-SENT
// before it sends the SYN, ESTABLISHED before the handshake's ACK,
// FIN-WAIT-1 and LAST-ACK before the FIN. The segment then crosses the
// lab (veth, forwarding, TUN) to our capture, so By, the capture's time
// minus the event's, is positive: tens of µs in the lab. The two times
// come from two clocks (the kernel's trace clock converted to wall time,
// and our time.Now), so a negative By says by how much they disagree.
type Lead struct {
	Ev  *inspect.Event
	Seg *Segment
	By  time.Duration
}

// Leads pairs each of the kernel's state changes in c that precede a
// segment of its own with the first captured segment from its side that
// carries it (a SYN without ACK for SYN-SENT, an ACK without SYN for
// ESTABLISHED after SYN-SENT, a FIN for FIN-WAIT-1 and LAST-ACK).
func Leads(c *Conn) []Lead {
	var out []Lead
	for i := range c.Events {
		ev := &c.Events[i]
		if ev.Stack != inspect.StackKernel || ev.Kind != inspect.KindState {
			continue
		}
		var want func(f header.TCPFlags) bool
		switch {
		case ev.From == inspect.Closed && ev.To == inspect.SynSent:
			want = func(f header.TCPFlags) bool { return f&header.TCPFlagSyn != 0 && f&header.TCPFlagAck == 0 }
		case ev.From == inspect.SynSent && ev.To == inspect.Established:
			want = func(f header.TCPFlags) bool { return f&header.TCPFlagAck != 0 && f&header.TCPFlagSyn == 0 }
		case ev.To == inspect.FinWait1 || ev.To == inspect.LastAck:
			want = func(f header.TCPFlags) bool { return f&header.TCPFlagFin != 0 }
		default:
			continue
		}
		side := c.SideOf(ev)
		for j := range c.Segs {
			s := &c.Segs[j]
			if s.From == side && s.Captured && want(s.Flags) {
				out = append(out, Lead{Ev: ev, Seg: s, By: s.Time.Sub(ev.Time)})
				break
			}
		}
	}
	return out
}

// clockNote says, for a ladder, where the kernel's times and our
// capture's disagree: a state change drawn after the segment it sent.
// Empty when every Lead is positive.
func clockNote(c *Conn) string {
	worst := Lead{}
	n := 0
	for _, l := range Leads(c) {
		if l.By < 0 {
			n++
			if worst.Ev == nil || l.By < worst.By {
				worst = l
			}
		}
	}
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("clocks: %d of the kernel's state changes are dated after our capture of the segment they sent (its %s, %s after our capture of its %s): Linux sets the state first, so the kernel's times (its trace clock, converted to wall time with an offset measured at the start) and ours (time.Now) disagree here by at least that much; the order drawn is the clocks', not the stacks'",
		n, worst.Ev.To, (-worst.By).Round(time.Microsecond), flagName(worst.Seg.Flags))
}

func flagName(f header.TCPFlags) string {
	switch {
	case f&header.TCPFlagSyn != 0:
		return "SYN"
	case f&header.TCPFlagFin != 0:
		return "FIN"
	}
	return "ACK"
}
