package viz

import (
	"fmt"
	"strings"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tcp-upper/tcp-upper/netstack/inspect"
)

// DifferencesDoc is where our stack's departures from Linux are listed.
const DifferencesDoc = "docs/DIFFERENCES.md"

// Rule is why something happened: the clause that asks for it, in our own
// words, and the row of docs/DIFFERENCES.md when our stack departs from
// Linux there (0: none).
type Rule struct {
	Cite string
	Text string
	Diff int
}

// String is "RFC 9293 3.5: text (differs from Linux: docs/DIFFERENCES.md #7)".
func (r Rule) String() string {
	s := r.Cite + ": " + r.Text
	if r.Diff > 0 {
		s += fmt.Sprintf(" (ours differs from Linux here: %s #%d)", DifferencesDoc, r.Diff)
	}
	return s
}

// ExplainEvent gives the rule behind a stack event, ok false for events
// that need none.
func ExplainEvent(ev *inspect.Event) (Rule, bool) {
	switch ev.Kind {
	case inspect.KindState:
		return explainState(ev)
	case inspect.KindRTO:
		return Rule{"RFC 6298 5.4-5.6, RFC 5681 3.1", "the retransmission timer ran out before the oldest unacknowledged segment was acknowledged: send it again, double the RTO (back off), restart the timer; the loss also cuts ssthresh to half the flight and cwnd to one segment", 0}, true
	case inspect.KindTailLossProbe:
		return Rule{"RFC 8985 7", "nothing was acknowledged for about two smoothed RTTs after the last segment of a flight: a tail loss probe sends a segment so that the receiver's ACK (or SACK) reveals a lost tail without waiting for the RTO", 0}, true
	case inspect.KindFastRetransmit:
		return Rule{"RFC 5681 3.2, RFC 6675, RFC 8985 6", "duplicate ACKs with SACK blocks (or RACK's time-based rule) show a hole: resend the missing segment now, without waiting for the timer, and enter recovery with ssthresh and cwnd cut", 0}, true
	case inspect.KindRecovery:
		return Rule{"RFC 5681 3.2 step 6, RFC 6675 5", "everything outstanding when recovery began is acknowledged: recovery ends and cwnd is set to ssthresh (congestion avoidance from there)", 0}, true
	case inspect.KindDupAck:
		return Rule{"RFC 5681 2, 3.2", "a third duplicate ACK (same acknowledgment number, no data, no window change): the receiver keeps asking for the same byte, a sign that a segment was lost while later ones arrived", 0}, true
	case inspect.KindWindow:
		if strings.Contains(ev.Cause, "probe") {
			return Rule{"RFC 9293 3.8.6.1, RFC 1122 4.2.2.17", "the peer's window is zero: the sender MUST keep probing it, with exponential backoff, so that a lost window update cannot deadlock the connection", 2}, true
		}
		return Rule{"RFC 9293 3.8.6", "the receive window closes when the application does not read: the sender may not send beyond it; it reopens as the application reads", 0}, true
	case inspect.KindRetransmit:
		if ev.Stack != inspect.StackKernel {
			return Rule{}, false // the wire's: its arrow is explained
		}
		return Rule{"RFC 9293 3.8.1, RFC 6298 5.4 / RFC 5681 3.2 / RFC 8985", "the kernel sent a segment again (tracepoint tcp_retransmit_skb): its retransmission timer ran out (doubling the RTO), or fast retransmit or a loss probe sent it; the tracepoint does not say which", 0}, true
	case inspect.KindFault:
		return Rule{"fault layer", "injected by a rule of ours, not by TCP: " + ev.Cause, 0}, true
	}
	return Rule{}, false
}

func explainState(ev *inspect.Event) (Rule, bool) {
	f, t := ev.From, ev.To
	if ev.Stack == inspect.StackKernel {
		// The same clauses, said of Linux: a difference row compares
		// our stack with it, so none applies to its own rows.
		switch {
		case (f == inspect.FinWait2 || f == inspect.Closing) && t == inspect.TimeWait:
			return Rule{"RFC 9293 3.6, 3.10.7.4 (FIN bit)", "both FINs are acknowledged: the kernel waits in TIME-WAIT (2 MSL in the RFC; a fixed 60 s on Linux) so that a lost last ACK can be sent again and old duplicates die out", 0}, true
		case f == inspect.TimeWait && t == inspect.Closed:
			return Rule{"RFC 9293 3.6, RFC 6191, RFC 1337", fmt.Sprintf("TIME-WAIT ended after %s: the 4-tuple is free again (Linux ends it early on a RST unless tcp_rfc1337 is set, or when a new connection takes the port pair with a higher sequence number or timestamp, RFC 6191)", ev.Held.Round(1e6)), 0}, true
		}
		r, ok := explainState(&inspect.Event{Kind: ev.Kind, From: f, To: t, Cause: ev.Cause, Held: ev.Held})
		r.Diff = 0
		return r, ok
	}
	switch {
	case f == inspect.Listen && t == inspect.SynRcvd:
		return Rule{"RFC 9293 3.5, 3.10.7.2", "a SYN reached the listening socket: the peer's ISN becomes IRS, we pick our ISN and answer SYN-ACK", 0}, true
	case f == inspect.SynSent && t == inspect.Established:
		return Rule{"RFC 9293 3.5, 3.10.7.3", "the SYN-ACK acknowledged our SYN: we acknowledge the peer's SYN and are synchronized", 0}, true
	case f == inspect.SynRcvd && t == inspect.Established:
		return Rule{"RFC 9293 3.5, 3.10.7.4", "the ACK of our SYN-ACK arrived: the three-way handshake is complete", 0}, true
	case t == inspect.SynSent:
		return Rule{"RFC 9293 3.5", "the application connects: a SYN with our ISN goes out", 0}, true
	case f == inspect.Established && t == inspect.FinWait1:
		return Rule{"RFC 9293 3.6 case 1", "our application closed first: we send a FIN (the active close)", 0}, true
	case f == inspect.FinWait1 && t == inspect.FinWait2:
		return Rule{"RFC 9293 3.10.7.4 (FIN-WAIT-1)", "the peer acknowledged our FIN; its own FIN has not come yet", 0}, true
	case f == inspect.FinWait1 && t == inspect.TimeWait:
		return Rule{"RFC 9293 3.6, 3.10.7.4 (FIN bit)", "the peer's FIN arrived carrying the ACK of ours: straight to TIME-WAIT, skipping FIN-WAIT-2", 0}, true
	case f == inspect.FinWait1 && t == inspect.Closing:
		return Rule{"RFC 9293 3.6 case 3", "the peer's FIN arrived before the ACK of ours: a simultaneous close", 0}, true
	case (f == inspect.FinWait2 || f == inspect.Closing) && t == inspect.TimeWait:
		return Rule{"RFC 9293 3.6, 3.10.7.4 (FIN bit)", "both FINs are acknowledged: we wait 2 MSL in TIME-WAIT so that a lost last ACK can be sent again and old duplicates die out", 7}, true
	case f == inspect.Established && t == inspect.CloseWait:
		return Rule{"RFC 9293 3.6 case 2, 3.10.7.4 (FIN bit)", "the peer's FIN arrived: it will send no more; we may still send until our application closes", 0}, true
	case f == inspect.CloseWait && t == inspect.LastAck:
		return Rule{"RFC 9293 3.6 case 2", "our application closed after the peer: we send our FIN and wait for its ACK", 0}, true
	case f == inspect.LastAck && t == inspect.Closed:
		return Rule{"RFC 9293 3.10.7.4 (LAST-ACK)", "the ACK of our FIN arrived: the connection is gone, no TIME-WAIT on this side", 0}, true
	case f == inspect.TimeWait && t == inspect.Closed:
		return Rule{"RFC 9293 3.6, RFC 6191, RFC 1337", fmt.Sprintf("TIME-WAIT expired after %s (2 MSL): the 4-tuple is free again. While it lasts our stack ignores a RST (RFC 1337; Linux lets one end it: %s #4)", ev.Held.Round(1e6), DifferencesDoc), 7}, true
	case t == inspect.Closed && strings.Contains(ev.Cause, "we reset"):
		return Rule{"RFC 9293 3.10.4 (ABORT), RFC 1122 4.2.2.13", "our side aborted: a RST goes out and the connection is dropped at once, without TIME-WAIT (here the server shut down before the close finished, or closed with data unread)", 0}, true
	case t == inspect.Closed && strings.Contains(strings.ToLower(ev.Cause), "reset"):
		return Rule{"RFC 9293 3.10.7.4 (RST bit)", "a reset in the window aborts the connection at once", 0}, true
	case t == inspect.Closed:
		return Rule{"RFC 9293 3.10.4", "the connection is gone: " + ev.Cause, 0}, true
	}
	return Rule{"RFC 9293 3.3.2", ev.From.String() + " to " + ev.To.String() + ": " + ev.Cause, 0}, true
}

// ExplainSegment gives the rule behind a notable segment (SYN, SYN-ACK,
// FIN, RST, a retransmission, a drop, SACK blocks, a zero window); ok is
// false for ordinary data and ACKs. prev is the previous segment from the
// same side (nil if none).
func ExplainSegment(c *Conn, s, prev *Segment) (Rule, bool) {
	syn, ack := s.Flags&header.TCPFlagSyn != 0, s.Flags&header.TCPFlagAck != 0
	switch {
	case s.Dropped && syn && !ack && !s.Captured:
		return Rule{"fault layer; RFC 6298 5.5, RFC 9293 3.8.1", "dropped by " + s.DropRule + " on its way into our stack (the capture never saw it): the client's SYN timer will send it again, doubling the timeout", 0}, true
	case s.Dropped && (s.Fate == "corrupted" || s.Fate == "truncated"):
		return Rule{"fault layer; RFC 9293 3.1, RFC 1122 4.2.2.7", s.Fate + " by " + s.DropRule + ": its TCP checksum fails, so the receiver MUST discard it without a word; to the sender it is lost", 0}, true
	case s.ByComment():
		return Rule{"capture comment", s.DropCause(), 0}, true
	case s.Dropped:
		where := "on its way into our stack: the capture (taken inside the fault layer) never saw it"
		switch {
		case s.Captured:
			where = "after the capture saw it leave our stack: the peer never gets it"
		case c.Reported[s.From] == inspect.StackNetstack:
			where = "as it left our stack: the peer never gets it"
		}
		return Rule{"fault layer", "dropped by " + s.DropRule + ", " + where, 0}, true
	case syn && s.Retransmit:
		return Rule{"RFC 6298 5.5, RFC 9293 3.8.1", "the SYN (or SYN-ACK) was not answered within the RTO (1 s at first): sent again, the timer doubled", 0}, true
	case s.Retransmit && s.Flags&header.TCPFlagFin != 0 && s.Len == 0:
		return Rule{"RFC 9293 3.6, 3.10.7.4", "the FIN again: its ACK did not come in time (or the peer's FIN came again, and TIME-WAIT re-acknowledges it)", 0}, true
	case s.Retransmit:
		return Rule{"RFC 9293 3.8.1, RFC 6298 / RFC 5681 / RFC 8985", "this sequence space was sent before: a retransmission (by the timer, fast retransmit or a loss probe; a mark of the sender's stack beside it may say which)", 0}, true
	case syn && !ack:
		return Rule{"RFC 9293 3.5, 3.7.1, RFC 7323 2.2, RFC 2018 2", fmt.Sprintf("SYN: the client's ISN, its MSS (%d) and what it offers (window scale %s, timestamps, SACK)", s.MSS, wsString(s.WScale)), 0}, true
	case syn:
		return Rule{"RFC 9293 3.5, RFC 7323 2.2", fmt.Sprintf("SYN-ACK: the server's ISN, the ACK of the client's SYN, MSS %d, window scale %s (scaling is on only if both SYNs carry it; the SYN's window itself is never scaled)", s.MSS, wsString(s.WScale)), 5}, true
	case s.Flags&header.TCPFlagRst != 0:
		return Rule{"RFC 9293 3.10.7, RFC 1122 4.2.2.13", "reset: the connection is aborted (a close with data unread, or a segment for a connection that no longer exists)", 0}, true
	case s.Flags&header.TCPFlagFin != 0:
		return Rule{"RFC 9293 3.6", "FIN: this side will send no more data; the FIN takes one sequence number", 0}, true
	case len(s.SACK) > 0:
		return Rule{"RFC 2018 3-4", "SACK blocks: the receiver holds these bytes above a hole, so the sender resends only what is missing", 0}, true
	case s.Win == 0 && ack:
		return Rule{"RFC 9293 3.8.6", "zero window: the receiver's buffer is full; the sender must stop and probe", 0}, true
	case s.Len == 0 && ack && prev != nil && prev.Len == 0 && prev.Ack == s.Ack && prev.Win == s.Win && s.Flags&(header.TCPFlagFin|header.TCPFlagSyn) == 0 && hasDataAhead(c, s):
		return Rule{"RFC 5681 2", "duplicate ACK: the same acknowledgment again, no data, same window", 0}, true
	}
	return Rule{}, false
}

// hasDataAhead: the other side had sent data beyond s.Ack (so a repeated
// ACK means something is missing, not just idleness).
func hasDataAhead(c *Conn, s *Segment) bool {
	for i := range c.Segs {
		o := &c.Segs[i]
		if o.From != s.From && o.Time.Before(s.Time) && o.Len > 0 && int32(o.Seq+uint32(o.Len)-s.Ack) > 0 {
			return true
		}
	}
	return false
}

func wsString(ws int) string {
	if ws < 0 {
		return "none"
	}
	return fmt.Sprint(ws)
}
