package inspect

import (
	"fmt"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// conn is the tracker's view of one connection. Only the tracker goroutine
// touches it.
type conn struct {
	id    ConnID
	state State
	ep    *tcp.Endpoint

	iss, irs           uint32
	issKnown, irsKnown bool
	ourWS, peerWS      int8 // -1: option absent
	wsOn               bool // both sides sent the option
	peerMSS            uint16

	sndUna, sndNxt, sndMax, rcvNxt uint32
	sndWnd, rcvWnd                 uint32

	ourFinSent, peerFin   bool
	ourFinSeq, peerFinSeq uint32
	peerFinDone           bool

	twStart  time.Time
	lastSeen time.Time

	// Retransmission classification.
	lastDataTx, lastAdvance time.Time
	dupAcks                 int
	lastRTOSeq              uint32
	rtoCount                int

	zeroOurs, zeroPeer bool

	probe     probeSnap
	haveProbe bool

	pending      []Event
	pendingSince time.Time
	mismatch     int

	// Counters for ss -i.
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

// numbers are the connection's numbers now: sequence variables from the
// wire (or from the probe, if fromProbe), congestion state from the latest
// probe.
func (c *conn) numbers(fromProbe bool) Numbers {
	n := Numbers{
		SndUna: c.sndUna - c.iss, SndNxt: c.sndNxt - c.iss, RcvNxt: c.rcvNxt - c.irs,
		SndWnd: c.sndWnd, RcvWnd: c.rcvWnd,
	}
	if c.haveProbe {
		p := &c.probe
		if fromProbe {
			n.SndUna, n.SndNxt, n.RcvNxt = p.sndUna-c.iss, p.sndNxt-c.iss, p.rcvNxt-c.irs
			n.SndWnd = p.sndWnd
			if seqLess(p.rcvNxt, p.rcvAcc) {
				n.RcvWnd = p.rcvAcc - p.rcvNxt
			} else {
				n.RcvWnd = 0
			}
		}
		n.Cwnd, n.Ssthresh, n.SRTT, n.RTO = p.cwnd, p.ssthresh, p.srtt, p.rto
	}
	return n
}

// add queues ev behind the connection's pending events, or emits it. An
// event caused by a received segment waits (up to 10ms) for the probe
// snapshot gVisor takes after processing that segment, so that it carries
// the stack's numbers after the segment.
func (c *conn) add(t *Tracker, ev Event, waitProbe bool) {
	ev.Conn, ev.ISS, ev.IRS = c.id, c.iss, c.irs
	if waitProbe || len(c.pending) > 0 {
		if len(c.pending) == 0 {
			c.pendingSince = time.Now()
		}
		if !waitProbe && ev.Kind != KindFault {
			ev.N = c.numbers(false)
		}
		c.pending = append(c.pending, ev)
		return
	}
	c.emit(t, ev)
}

// flush emits pending events with the numbers known now.
func (c *conn) flush(t *Tracker) {
	for _, ev := range c.pending {
		c.emit(t, ev)
	}
	c.pending = c.pending[:0]
}

// emit completes ev's numbers and sends it: the wire's sequence numbers if
// it has none yet, and the endpoint's own congestion numbers when no probe
// snapshot gave them or when our timer caused the event (nothing arrived,
// so the last snapshot is stale and the RTO has since backed off).
func (c *conn) emit(t *Tracker, ev Event) {
	if ev.Kind != KindFault {
		if ev.N == (Numbers{}) {
			ev.N = c.numbers(false)
		}
		if ev.N.Cwnd == 0 || ev.Kind == KindRTO {
			c.fillFromTCPInfo(t, &ev.N)
		}
	}
	t.emit(ev)
}

// fillFromTCPInfo takes the congestion numbers from the endpoint itself
// when no probe snapshot has them yet (the listener handled the handshake,
// so the new endpoint has not received a segment of its own). It runs on
// the tracker goroutine, never on the packet path.
func (c *conn) fillFromTCPInfo(t *Tracker, n *Numbers) {
	ep := t.endpoint(c)
	if ep == nil {
		return
	}
	var ti tcpip.TCPInfoOption
	if err := ep.GetSockOpt(&ti); err != nil {
		return
	}
	n.Cwnd, n.Ssthresh, n.SRTT, n.RTO = int(ti.SndCwnd), int(ti.SndSsthresh), ti.RTT, ti.RTO
}

func (c *conn) onProbe(t *Tracker, p *probeSnap) {
	c.probe, c.haveProbe = *p, true
	if len(c.pending) == 0 {
		return
	}
	for i := range c.pending {
		ev := &c.pending[i]
		if ev.N == (Numbers{}) && ev.Kind != KindFault {
			// A segment that ends the connection (the ACK of our FIN in
			// LAST-ACK) stops gVisor before its sender sees the ACK, so
			// the probe's sequence numbers are stale: take the wire's.
			final := ev.Kind == KindState && (ev.To == Closed || ev.To == TimeWait)
			ev.N = c.numbers(!final)
		}
	}
	c.flush(t)
}

func (c *conn) transition(t *Tracker, at time.Time, to State, cause string, waitProbe bool) {
	if to == c.state {
		return
	}
	ev := Event{Time: at, Kind: KindState, From: c.state, To: to, Cause: cause}
	if c.state == TimeWait && !c.twStart.IsZero() {
		ev.Held = at.Sub(c.twStart)
		ev.Cause = fmt.Sprintf("%s after %.1fs in TIME-WAIT", cause, ev.Held.Seconds())
	}
	c.state = to
	if to == TimeWait {
		c.twStart = at
	}
	c.mismatch = 0
	c.add(t, ev, waitProbe)
}

func (c *conn) event(t *Tracker, at time.Time, kind Kind, cause string, waitProbe bool) {
	c.add(t, Event{Time: at, Kind: kind, Cause: cause}, waitProbe)
}

// rx follows a segment the stack received.
func (c *conn) rx(t *Tracker, it *item) {
	s := &it.seg
	at := it.t
	c.segsIn++
	if len(c.pending) > 0 {
		// Another segment arrived before the probe of the last one (the
		// listener handled it, or the stack batched them): report what
		// is known now rather than numbers from after this one.
		c.flush(t)
	}
	f := s.flags
	if f&header.TCPFlagRst != 0 {
		switch c.state {
		case Closed, Listen:
			c.state = Closed
		case SynSent:
			c.transition(t, at, Closed, "connection refused: RST received", true)
		default:
			c.transition(t, at, Closed, "connection reset by peer: RST received", true)
		}
		return
	}
	if f&header.TCPFlagSyn != 0 {
		if f&header.TCPFlagAck == 0 {
			if c.irsKnown && s.seq == c.irs {
				c.event(t, at, KindRetransmit, "the peer sent its SYN again (our SYN-ACK was lost?)", false)
				return
			}
			c.irs, c.irsKnown, c.rcvNxt = s.seq, true, s.seq+1
			c.peerWS, c.peerMSS = s.wscale, s.mss
			c.sndWnd = uint32(s.win)
			return
		}
		// SYN-ACK.
		if c.state != SynSent {
			if c.irsKnown && s.seq == c.irs {
				c.event(t, at, KindRetransmit, "the peer sent its SYN-ACK again (our ACK was lost?)", false)
			}
			return
		}
		c.irs, c.irsKnown, c.rcvNxt = s.seq, true, s.seq+1
		c.peerWS, c.peerMSS = s.wscale, s.mss
		c.wsOn = c.ourWS >= 0 && c.peerWS >= 0
		c.sndUna, c.sndWnd = s.ack, uint32(s.win)
		c.lastAdvance = at
		c.transition(t, at, Established, fmt.Sprintf("received SYN-ACK, peer ISN %d; ACK sent", c.irs), true)
		return
	}

	if f&header.TCPFlagAck != 0 {
		switch {
		case seqLess(c.sndUna, s.ack):
			if from := max32seq(c.sndUna, c.iss+1); seqLess(from, s.ack) {
				c.bytesAcked += uint64(s.ack - from) // the SYN is not a byte
			}
			c.sndUna, c.dupAcks, c.lastAdvance = s.ack, 0, at
		case s.ack == c.sndUna && s.payload == 0 && f&header.TCPFlagFin == 0 && seqLess(c.sndUna, c.sndMax) && uint32(s.win)<<c.scalePeer() == c.sndWnd:
			c.dupAcks++
			if c.dupAcks == 3 {
				c.event(t, at, KindDupAck, fmt.Sprintf("third duplicate ACK for %d", s.ack-c.iss), true)
			}
		}
		c.sndWnd = uint32(s.win) << c.scalePeer()
		switch {
		case c.sndWnd == 0 && !c.zeroPeer && c.state >= Established:
			c.zeroPeer = true
			c.event(t, at, KindWindow, "the peer advertises a zero window: we must stop sending (and probe)", true)
		case c.sndWnd > 0 && c.zeroPeer:
			c.zeroPeer = false
			c.event(t, at, KindWindow, fmt.Sprintf("the peer's window reopened to %d bytes", c.sndWnd), true)
		}
	}
	inOrder := s.seq == c.rcvNxt
	if s.payload > 0 {
		if inOrder {
			c.bytesRcvd += uint64(s.payload)
			c.rcvNxt += s.payload
		} else if seqLess(c.rcvNxt, s.seq+s.payload) && c.zeroOurs {
			c.event(t, at, KindWindow, "the peer probes our zero window", false)
		}
	}

	if f&header.TCPFlagAck != 0 && c.ourFinSent && !seqLess(s.ack, c.ourFinSeq+1) {
		switch c.state {
		case FinWait1:
			c.transition(t, at, FinWait2, "our FIN was acknowledged", true)
		case Closing:
			c.transition(t, at, TimeWait, fmt.Sprintf("our FIN was acknowledged; TIME-WAIT holds for 2MSL (%v)", t.opts.TimeWait), true)
		case LastAck:
			c.transition(t, at, Closed, "our FIN was acknowledged", true)
			return
		}
	}
	if f&header.TCPFlagAck != 0 && c.state == SynRcvd && s.ack == c.iss+1 {
		c.transition(t, at, Established, "received the ACK of our SYN-ACK", true)
	}

	if f&header.TCPFlagFin != 0 {
		finSeq := s.seq + s.payload
		if c.state == TimeWait && c.peerFinDone && finSeq == c.peerFinSeq {
			c.event(t, at, KindRetransmit, "the peer sent its FIN again (our last ACK was lost?): we ACK it again from TIME-WAIT", false)
			return
		}
		c.peerFin, c.peerFinSeq = true, finSeq
		if inOrder {
			c.rcvNxt++
			c.finReceived(t, at, true)
		}
	}
}

// finReceived moves the state on once the stack has taken the peer's FIN.
func (c *conn) finReceived(t *Tracker, at time.Time, waitProbe bool) {
	if c.peerFinDone {
		return
	}
	c.peerFinDone = true
	switch c.state {
	case Established, SynRcvd:
		c.transition(t, at, CloseWait, "received FIN: the peer closed its side; ACK sent", waitProbe)
	case FinWait1:
		c.transition(t, at, Closing, "received FIN before the ACK of ours (simultaneous close)", waitProbe)
	case FinWait2:
		c.transition(t, at, TimeWait, fmt.Sprintf("received FIN; ACK sent; TIME-WAIT holds for 2MSL (%v)", t.opts.TimeWait), waitProbe)
	}
}

// tx follows a segment the stack sent.
func (c *conn) tx(t *Tracker, it *item) {
	s := &it.seg
	at := it.t
	c.segsOut++
	f := s.flags
	if f&header.TCPFlagRst != 0 {
		switch c.state {
		case Closed, Listen:
			c.state = Closed // a SYN refused: nothing to report per connection
		default:
			c.transition(t, at, Closed, "we reset the connection: RST sent", false)
		}
		return
	}
	if f&header.TCPFlagSyn != 0 {
		first := !c.issKnown
		if !first && s.seq == c.iss {
			what := "SYN"
			if f&header.TCPFlagAck != 0 {
				what = "SYN-ACK"
			}
			c.rtoCount++
			c.event(t, at, KindRTO, fmt.Sprintf("no answer: %s sent again (retransmission %d)", what, c.rtoCount), false)
			c.retrans++
			return
		}
		c.iss, c.issKnown = s.seq, true
		c.sndUna, c.sndNxt, c.sndMax = s.seq, s.seq+1, s.seq+1
		c.ourWS = s.wscale
		c.rcvWnd = uint32(s.win)
		c.lastDataTx = at
		if f&header.TCPFlagAck == 0 {
			c.transition(t, at, SynSent, fmt.Sprintf("connect: SYN sent, our ISN %d", c.iss), false)
			return
		}
		c.wsOn = c.ourWS >= 0 && c.peerWS >= 0
		c.transition(t, at, SynRcvd, fmt.Sprintf("received SYN, peer ISN %d; SYN-ACK sent, our ISN %d", c.irs, c.iss), false)
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
			c.retransmitted(t, it, end)
		} else {
			if s.payload > 0 && !seqLess(s.seq, c.sndMax) {
				c.bytesSent += uint64(s.payload)
			} else if s.payload > 0 {
				c.bytesSent += uint64(end - c.sndMax)
			}
			c.sndMax = end
		}
		if seqLess(c.sndNxt, end) {
			c.sndNxt = end
		}
		c.lastDataTx = at
		if c.zeroPeer && s.payload <= 1 && !fin {
			c.event(t, at, KindWindow, "zero-window probe sent", false)
		}
	}
	if f&header.TCPFlagAck != 0 {
		c.rcvNxt = s.ack // our ACK field is the stack's RCV.NXT
		c.rcvWnd = uint32(s.win) << c.scaleOurs()
		switch {
		case c.rcvWnd == 0 && !c.zeroOurs && c.state >= Established:
			c.zeroOurs = true
			c.event(t, at, KindWindow, "we advertise a zero window: our receive buffer is full (the application is not reading)", false)
		case c.rcvWnd > 0 && c.zeroOurs:
			c.zeroOurs = false
			c.event(t, at, KindWindow, fmt.Sprintf("our window reopened to %d bytes", c.rcvWnd), false)
		}
		if c.peerFin && !c.peerFinDone && !seqLess(s.ack, c.peerFinSeq+1) {
			c.finReceived(t, at, false)
		}
	}
	if fin && !c.ourFinSent {
		c.ourFinSent, c.ourFinSeq = true, s.seq+s.payload
		switch c.state {
		case Established, SynRcvd:
			c.transition(t, at, FinWait1, "we closed: FIN sent", false)
		case CloseWait:
			c.transition(t, at, LastAck, "we closed too: FIN sent", false)
		}
	}
}

// retransmitted classifies a segment sent again.
func (c *conn) retransmitted(t *Tracker, it *item, end uint32) {
	s := &it.seg
	at := it.t
	rng := fmt.Sprintf("seq %d:%d", s.seq-c.iss, end-c.iss)
	if s.flags&header.TCPFlagFin != 0 && s.payload == 0 {
		rng = fmt.Sprintf("FIN seq %d", s.seq-c.iss)
	}
	since := c.lastDataTx
	if c.lastAdvance.After(since) {
		since = c.lastAdvance
	}
	gap := at.Sub(since)
	rto := c.probe.rto
	switch {
	case c.dupAcks >= 3 && s.seq == c.sndUna:
		c.event(t, at, KindFastRetransmit, fmt.Sprintf("%s resent after %d duplicate ACKs", rng, c.dupAcks), false)
	case rto > 0 && gap >= rto*3/4:
		if s.seq == c.lastRTOSeq {
			c.rtoCount++
		} else {
			c.lastRTOSeq, c.rtoCount = s.seq, 1
		}
		c.event(t, at, KindRTO, fmt.Sprintf("retransmission timer fired after %s: %s resent (timeout %d for this segment)", ms(gap, 0), rng, c.rtoCount), false)
	default:
		c.event(t, at, KindRetransmit, fmt.Sprintf("%s resent (loss recovery: SACK/RACK or tail loss probe)", rng), false)
	}
}

func max32seq(a, b uint32) uint32 {
	if seqLess(a, b) {
		return b
	}
	return a
}
