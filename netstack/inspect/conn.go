package inspect

import (
	"fmt"
	"time"

	"github.com/tcp-upper/tcp-upper/netstack/trace"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// conn is the tracker's view of one connection. Only the tracker goroutine
// touches it. Its state and the numbers of its events are the stack's (the
// observe hook's); what it learns from the wire only annotates them and
// counts for ss -i.
type conn struct {
	id        ConnID
	state     State // as the stack last reported it
	stackSeen bool  // the stack reported a state change
	ep        *tcp.Endpoint

	iss, irs           uint32
	issKnown, irsKnown bool
	ourWS, peerWS      int8 // -1: option absent
	wsOn               bool // both sides sent the option
	peerMSS            uint16
	peerSyn            bool // the peer's SYN (or SYN-ACK) was seen on the wire
	ourSyn             bool // our SYN (or SYN-ACK) was seen on the wire

	// From the wire: the peer's latest ACK and window, the highest
	// sequence we sent, the ACK field of our latest segment.
	sndUna, sndMax, rcvNxt uint32
	sndWnd, rcvWnd         uint32

	peerFinSeq  uint32
	peerFinDone bool
	// peerMax is the highest sequence number the peer sent (end of its
	// data, SYN or FIN), seen on the wire.
	peerMax uint32

	twStart  time.Time
	lastSeen time.Time

	dupAcks int // duplicate ACKs in a row, counted on the wire
	// The sender's own duplicate-ACK count after the latest segment it
	// processed (the TCP probe's copy).
	stackDupAcks int
	zeroPeer     bool // the peer advertises a zero window (wire)
	zeroOurs     bool // we advertise a zero window (the stack's)
	rstIn        bool // the peer sent a RST (wire)
	rstOut       bool // we sent a RST (wire)
	newSyn       bool // a new SYN for this port pair arrived in TIME-WAIT (wire)

	// Consecutive retransmission timeouts: of the handshake, or at the
	// same snd.una.
	rtoCount int
	rtoUna   uint32
	rtoConn  bool // rtoCount counts the connection's timer, not the handshake's

	// The stack's latest numbers (observe hook or TCP probe).
	snap     snap
	haveSnap bool

	// Counters for ss -i (wire).
	bytesSent, bytesAcked, bytesRcvd uint64
	segsOut, segsIn, retrans         uint64
}

func (c *conn) scaleOurs() uint { // applied to windows we advertise
	if c.wsOn && c.ourWS > 0 {
		return uint(c.ourWS)
	}
	return 0
}

func (c *conn) scalePeer() uint { // applied to windows the peer advertises
	if c.wsOn && c.peerWS > 0 {
		return uint(c.peerWS)
	}
	return 0
}

// numbers are p's numbers relative to the ISNs; unknown if the stack had
// no sender and receiver.
func (c *conn) numbers(p *snap) Numbers {
	if !p.connected {
		return Numbers{}
	}
	return Numbers{
		Known:  true,
		SndUna: p.sndUna - c.iss, SndNxt: p.sndNxt - c.iss, RcvNxt: p.rcvNxt - c.irs,
		SndWnd: p.sndWnd, RcvWnd: p.rcvWnd,
		Cwnd: p.cwnd, Ssthresh: p.ssthresh, RTO: p.rto,
		SRTTKnown: p.srttKnown, SRTT: p.srtt, RTTVar: p.rttvar,
	}
}

// latest are the stack's latest numbers known to the tracker, for an
// annotation from the wire.
func (c *conn) latest() Numbers {
	if !c.haveSnap {
		return Numbers{}
	}
	return c.numbers(&c.snap)
}

// add completes ev with the connection's identity and ISNs and emits it.
func (c *conn) add(t *Tracker, ev Event) {
	ev.Conn = c.id
	ev.ISS, ev.ISSKnown = c.iss, c.issKnown
	ev.IRS, ev.IRSKnown = c.irs, c.irsKnown
	t.emit(ev)
}

// annotate emits what the wire shows, with the stack's latest numbers.
func (c *conn) annotate(t *Tracker, at time.Time, kind Kind, cause string) {
	c.add(t, Event{Time: at, Kind: kind, Cause: cause, N: c.latest()})
}

// onObserve takes an event the stack reported.
func (c *conn) onObserve(t *Tracker, at time.Time, o *snap) {
	if o.ep != nil {
		c.ep = o.ep
	}
	if o.haveISS {
		c.iss, c.issKnown = o.iss, true
	}
	if o.haveIRS {
		c.irs, c.irsKnown = o.irs, true
	}
	if o.connected {
		if o.kind == obsState && o.to == tcp.StateEstablished {
			// A SYN cookie's connection had no handshake object to
			// report the ISNs: the sender and receiver start from them.
			if !c.issKnown {
				c.iss, c.issKnown = o.sndUna-1, true
			}
			if !c.irsKnown {
				c.irs, c.irsKnown = o.rcvNxt-1, true
			}
		}
		c.snap, c.haveSnap = *o, true
	}
	ev := Event{Time: at, N: c.numbers(o)}
	switch o.kind {
	case obsState:
		c.onState(t, ev, o)
		return
	case obsRTO:
		ev.Kind, ev.Cause = KindRTO, c.rtoCause(o)
	case obsRecoveryEnter:
		ev.Kind = KindFastRetransmit
		ev.Cause = fmt.Sprintf("loss detected: %s; seq %d to be sent again (cwnd %d, ssthresh %d)", c.recoveryRule(t, o), o.recoveryFirst-c.iss, o.cwnd, o.ssthresh)
	case obsRecoveryLeave:
		ev.Kind, ev.Cause = KindRecovery, fmt.Sprintf("recovery over: cwnd back to ssthresh (%d)", o.ssthresh)
	case obsTailLossProbe:
		ev.Kind, ev.Cause = KindTailLossProbe, "tail loss probe sent: the probe timer fired with data unacknowledged"
	case obsZeroWindowProbe:
		ev.Kind, ev.Cause = KindWindow, "zero-window probe sent: the peer's window is zero and data waits"
	case obsRcvWindowClosed:
		c.zeroOurs = true
		ev.Kind, ev.Cause = KindWindow, "we advertise a zero window: our receive buffer is full (the application is not reading)"
	case obsRcvWindowOpened:
		c.zeroOurs = false
		ev.Kind, ev.Cause = KindWindow, fmt.Sprintf("our window reopened to %d bytes", o.rcvWnd)
	default:
		return
	}
	c.add(t, ev)
}

// recoveryRule says which rule started the stack's recovery, from the
// stack's own count: the ACK that started it is a duplicate one (gVisor
// enters recovery only on one), and the sender counted the ones before it
// as its TCP probe last reported. The sender then zeroes its count, so the
// observation itself cannot say.
func (c *conn) recoveryRule(t *Tracker, o *snap) string {
	n := c.stackDupAcks + 1
	switch {
	case n >= 3 && !o.sackOK:
		return fmt.Sprintf("fast retransmit (RFC 5681: duplicate ACK #%d reached the threshold of 3)", n)
	case n >= 3:
		return fmt.Sprintf("SACK recovery (RFC 5681/6675: duplicate ACK #%d reached the threshold of 3)", n)
	case t.opts.ClassicRecovery:
		return fmt.Sprintf("SACK recovery (RFC 6675: at duplicate ACK #%d the SACK scoreboard already counted the segment lost, with enough data SACKed above it)", n)
	}
	return fmt.Sprintf("SACK recovery (RACK, RFC 8985: the segment was judged lost by time, at duplicate ACK #%d)", n)
}

// rtoCause says which timer fired and how many times in a row.
func (c *conn) rtoCause(o *snap) string {
	if !o.connected {
		what := "SYN"
		if c.state == SynRcvd {
			what = "SYN-ACK"
		}
		if c.rtoConn {
			c.rtoCount, c.rtoConn = 0, false
		}
		c.rtoCount++
		return fmt.Sprintf("no answer: the handshake's retransmission timer fired, %s to be sent again (retransmission %d)", what, c.rtoCount)
	}
	if !c.rtoConn || o.sndUna != c.rtoUna {
		c.rtoCount, c.rtoUna, c.rtoConn = 0, o.sndUna, true
	}
	c.rtoCount++
	if o.sndWnd == 0 {
		return fmt.Sprintf("retransmission timer expired after %s with the peer's window zero: probing it (timeout %d in a row)", ms(o.rto, 0), c.rtoCount)
	}
	return fmt.Sprintf("retransmission timer expired after %s: seq %d to be sent again (timeout %d in a row)", ms(o.rto, 0), o.sndUna-c.iss, c.rtoCount)
}

// rfcState is gVisor's state as RFC 9293 names it; false for gVisor's own
// states before a connection starts (initial, bound, connecting).
func rfcState(s tcp.EndpointState) (State, bool) {
	switch s {
	case tcp.StateInitial, tcp.StateBound, tcp.StateConnecting:
		return Closed, false
	case tcp.StateError:
		return Closed, true
	}
	return FromGvisor(s), true
}

// onState reports a state change of the stack's.
func (c *conn) onState(t *Tracker, ev Event, o *snap) {
	c.stackSeen = true
	to, ok := rfcState(o.to)
	if !ok {
		return
	}
	from, ok := rfcState(o.from)
	if !ok {
		// The connection's first RFC state: a passive open comes from
		// the listener (SYN-RCVD, or ESTABLISHED for a SYN cookie), an
		// active one from CLOSED.
		from = Closed
		if to == SynRcvd || to == Established {
			from = Listen
		}
	}
	if from == to {
		return // ERROR -> CLOSED: the connection ended already
	}
	ev.Kind, ev.From, ev.To = KindState, from, to
	ev.Cause = c.stateCause(t, ev.Time, from, to, o)
	if from == TimeWait && !c.twStart.IsZero() {
		ev.Held = ev.Time.Sub(c.twStart)
		ev.Cause = fmt.Sprintf("%s after %.1fs in TIME-WAIT", ev.Cause, ev.Held.Seconds())
	}
	c.state = to
	if to == TimeWait {
		c.twStart = ev.Time
	}
	c.add(t, ev)
}

// stateCause says in words what a state change means; for an abort, the
// wire says whether a RST was received or sent.
func (c *conn) stateCause(t *Tracker, at time.Time, from, to State, o *snap) string {
	tw := fmt.Sprintf("TIME-WAIT holds for 2MSL (%v)", t.opts.TimeWait)
	switch {
	case from == Closed && to == SynSent:
		return fmt.Sprintf("connect: SYN to be sent, our ISN %d", c.iss)
	case from == Listen && to == SynRcvd:
		return fmt.Sprintf("received SYN, peer ISN %d; SYN-ACK to be sent, our ISN %d", c.irs, c.iss)
	case from == Listen && to == Established:
		return "received the ACK of our SYN-ACK (a SYN cookie's)"
	case from == SynSent && to == SynRcvd:
		return fmt.Sprintf("simultaneous open: received SYN, peer ISN %d", c.irs)
	case from == SynSent && to == Established:
		return fmt.Sprintf("received SYN-ACK, peer ISN %d; ACK to be sent", c.irs)
	case from == SynRcvd && to == Established:
		return "received the ACK of our SYN-ACK"
	case from == Established && to == FinWait1, from == SynRcvd && to == FinWait1:
		return "we closed: FIN to be sent"
	case from == CloseWait && to == LastAck:
		return "we closed too: FIN to be sent"
	case from == Established && to == CloseWait:
		return "received FIN: the peer closed its side; ACK delayed, to ride on our FIN"
	case from == FinWait1 && to == FinWait2:
		return "our FIN was acknowledged"
	case from == FinWait1 && to == Closing:
		return "received FIN before the ACK of ours (simultaneous close)"
	case from == FinWait1 && to == TimeWait:
		return "received FIN and the ACK of ours; " + tw
	case from == FinWait2 && to == TimeWait:
		return "received FIN; ACK sent; " + tw
	case from == Closing && to == TimeWait:
		return "our FIN was acknowledged; " + tw
	case from == LastAck && to == Closed:
		return "our FIN was acknowledged"
	case from == TimeWait && to == Closed && c.rstIn:
		return "RST received in TIME-WAIT"
	case from == TimeWait && to == Closed && c.newSyn:
		return "a new SYN reuses the port pair"
	case from == TimeWait && to == Closed && !c.twStart.IsZero() && at.Sub(c.twStart) >= t.opts.TimeWait:
		// The 2MSL timer is armed after the state change: it cannot
		// end TIME-WAIT sooner.
		return "2MSL timer expired"
	case from == TimeWait && to == Closed:
		return "TIME-WAIT cut short (the stack is closing)"
	case to == Closed && o.to == tcp.StateError && c.rstIn:
		return "connection reset by peer: RST received"
	case to == Closed && o.to == tcp.StateError && c.rstOut:
		return "we reset the connection: RST sent"
	case to == Closed && o.to == tcp.StateError:
		return "connection aborted (timeout or error)"
	case to == Closed:
		return "closed"
	}
	return "state changed"
}

// rx follows a segment the stack received.
func (c *conn) rx(t *Tracker, it *item) {
	s := &it.seg
	at := it.t
	c.segsIn++
	f := s.flags
	if f&header.TCPFlagRst != 0 {
		c.rstIn = true
		return
	}
	if f&header.TCPFlagSyn != 0 {
		if c.peerSyn && c.irsKnown && s.seq == c.irs {
			if f&header.TCPFlagAck == 0 {
				c.annotate(t, at, KindRetransmit, "the peer sent its SYN again (our SYN-ACK was lost?)")
			} else {
				c.annotate(t, at, KindRetransmit, "the peer sent its SYN-ACK again (our ACK was lost?)")
			}
			return
		}
		c.peerSyn = true
		c.irs, c.irsKnown, c.rcvNxt, c.peerMax = s.seq, true, s.seq+1, s.seq+1
		c.peerWS, c.peerMSS = s.wscale, s.mss
		c.sndWnd = uint32(s.win)
		if f&header.TCPFlagAck != 0 {
			c.wsOn = c.ourWS >= 0 && c.peerWS >= 0
			c.sndUna = s.ack
		}
		return
	}

	if f&header.TCPFlagAck != 0 {
		switch {
		case seqLess(c.sndUna, s.ack):
			if from := max32seq(c.sndUna, c.iss+1); seqLess(from, s.ack) {
				c.bytesAcked += uint64(s.ack - from) // the SYN is not a byte
			}
			c.sndUna, c.dupAcks = s.ack, 0
		case s.ack == c.sndUna && s.payload == 0 && f&header.TCPFlagFin == 0 && seqLess(c.sndUna, c.sndMax) && uint32(s.win)<<c.scalePeer() == c.sndWnd:
			c.dupAcks++
			if c.dupAcks == 3 {
				c.annotate(t, at, KindDupAck, fmt.Sprintf("third duplicate ACK for %d", s.ack-c.iss))
			}
		}
		c.sndWnd = uint32(s.win) << c.scalePeer()
		switch {
		case c.sndWnd == 0 && !c.zeroPeer && c.state >= Established:
			c.zeroPeer = true
			c.annotate(t, at, KindWindow, "the peer advertises a zero window: we must stop sending (and probe)")
		case c.sndWnd > 0 && c.zeroPeer:
			c.zeroPeer = false
			c.annotate(t, at, KindWindow, fmt.Sprintf("the peer's window reopened to %d bytes", c.sndWnd))
		}
	}
	end := s.seq + s.payload
	if f&header.TCPFlagFin != 0 {
		end++
	}
	if c.peerSyn && seqLess(c.peerMax, end) {
		c.peerMax = end
	}
	inOrder := s.seq == c.rcvNxt
	if s.payload > 0 {
		if inOrder {
			c.bytesRcvd += uint64(s.payload)
			c.rcvNxt += s.payload
		} else if seqLess(c.rcvNxt, s.seq+s.payload) && c.zeroOurs {
			c.annotate(t, at, KindWindow, "the peer probes our zero window")
		}
	}
	if f&header.TCPFlagFin != 0 {
		finSeq := s.seq + s.payload
		if c.state == TimeWait && c.peerFinDone && finSeq == c.peerFinSeq {
			c.annotate(t, at, KindRetransmit, "the peer sent its FIN again (our last ACK was lost?): we ACK it again from TIME-WAIT")
			return
		}
		if inOrder {
			c.peerFinSeq, c.peerFinDone = finSeq, true
			c.rcvNxt++
		}
	}
}

// tx follows a segment the stack sent.
func (c *conn) tx(t *Tracker, it *item) {
	s := &it.seg
	at := it.t
	c.segsOut++
	f := s.flags
	if f&header.TCPFlagRst != 0 {
		c.rstOut = true
		return
	}
	if f&header.TCPFlagSyn != 0 {
		if c.ourSyn && s.seq == c.iss {
			c.retrans++ // the stack reports its timer (rto)
			return
		}
		c.ourSyn = true
		c.iss, c.issKnown = s.seq, true
		c.sndUna, c.sndMax = s.seq, s.seq+1
		c.ourWS = s.wscale
		c.rcvWnd = uint32(s.win)
		if f&header.TCPFlagAck != 0 {
			c.wsOn = c.ourWS >= 0 && c.peerWS >= 0
		}
		return
	}

	fin := f&header.TCPFlagFin != 0
	if s.payload > 0 || fin {
		end := s.seq + s.payload
		if fin {
			end++
		}
		if !seqLess(c.sndMax, end) && c.issKnown {
			c.retrans++
			rng := fmt.Sprintf("seq %d:%d", s.seq-c.iss, end-c.iss)
			if fin && s.payload == 0 {
				rng = fmt.Sprintf("FIN seq %d", s.seq-c.iss)
			}
			c.annotate(t, at, KindRetransmit, rng+" sent again")
		} else {
			if s.payload > 0 && !seqLess(s.seq, c.sndMax) {
				c.bytesSent += uint64(s.payload)
			} else if s.payload > 0 {
				c.bytesSent += uint64(end - c.sndMax)
			}
			c.sndMax = end
		}
	}
	if f&header.TCPFlagAck != 0 {
		c.rcvNxt = s.ack // our ACK field is the stack's RCV.NXT
		c.rcvWnd = uint32(s.win) << c.scaleOurs()
	}
}

// segment emits the segment it.seg (already taken by rx or tx) to the
// subscribers that asked for segments. sentMax is the highest sequence
// number its sender had sent before it (sentAny: it had sent its SYN).
func (c *conn) segment(t *Tracker, it *item, sentMax uint32, sentAny bool) {
	s := &it.seg
	out := it.dir == trace.Out
	g := &Segment{Out: out, Flags: s.flags, Len: s.payload, RawWin: s.win, MSS: s.mss, WScale: s.wscale, SACKOK: s.sackOK}
	// The sender's and the receiver's ISNs.
	sndISN, sndKnown, rcvISN, rcvKnown := c.irs, c.irsKnown, c.iss, c.issKnown
	scale := c.scalePeer()
	if out {
		sndISN, sndKnown, rcvISN, rcvKnown = c.iss, c.issKnown, c.irs, c.irsKnown
		scale = c.scaleOurs()
	}
	ack := s.flags&header.TCPFlagAck != 0
	g.Absolute = !sndKnown || ack && !rcvKnown
	if g.Absolute {
		sndISN, rcvISN = 0, 0
	}
	g.Seq = s.seq - sndISN
	g.End = g.Seq + s.payload
	if ack {
		g.Ack = s.ack - rcvISN
	}
	g.Win = uint32(s.win)
	if s.flags&header.TCPFlagSyn == 0 {
		g.Win <<= scale
	}
	if s.nsack > 0 {
		g.SACK = make([][2]uint32, s.nsack)
		for i := range g.SACK {
			g.SACK[i] = [2]uint32{s.sack[i][0] - rcvISN, s.sack[i][1] - rcvISN}
		}
	}
	consumes := s.payload > 0 || s.flags&(header.TCPFlagSyn|header.TCPFlagFin) != 0
	g.Retransmit = consumes && sentAny && seqLess(s.seq, sentMax)
	c.add(t, Event{Time: it.t, Kind: KindSegment, Seg: g})
}

func max32seq(a, b uint32) uint32 {
	if seqLess(a, b) {
		return b
	}
	return a
}
