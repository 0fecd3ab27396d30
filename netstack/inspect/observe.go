//go:build !gvisor_unpatched

package inspect

import (
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// Observe is gVisor's observe hook (tcp.NewProtocolObserve, our patch
// 0009). gVisor calls it with the endpoint locked at each state change,
// retransmission timeout, entry to and exit from fast recovery, tail loss
// probe, zero-window probe and receive window closing or reopening: it
// copies the numbers we show and returns.
func (t *Tracker) Observe(o *tcp.TCPObservation) {
	if o.ID.RemotePort == 0 {
		return // a listener (or an endpoint not yet connecting): not a connection
	}
	it := item{kind: itemObserve, t: time.Now()}
	p := &it.snap
	p.id = connID(o.ID)
	p.ep = o.Endpoint
	switch o.Kind {
	case tcp.TCPObserveState:
		p.kind = obsState
	case tcp.TCPObserveRTO:
		p.kind = obsRTO
	case tcp.TCPObserveRecoveryEnter:
		p.kind = obsRecoveryEnter
	case tcp.TCPObserveRecoveryLeave:
		p.kind = obsRecoveryLeave
	case tcp.TCPObserveTailLossProbe:
		p.kind = obsTailLossProbe
	case tcp.TCPObserveZeroWindowProbe:
		p.kind = obsZeroWindowProbe
	case tcp.TCPObserveRcvWindowClosed:
		p.kind = obsRcvWindowClosed
	case tcp.TCPObserveRcvWindowOpened:
		p.kind = obsRcvWindowOpened
	default:
		return
	}
	p.from, p.to = o.From, o.To
	p.iss, p.haveISS = uint32(o.ISS), o.HaveISS
	p.irs, p.haveIRS = uint32(o.IRS), o.HaveIRS
	p.sackOK = o.Options.SACKPermitted
	if o.Connected {
		s := &o.Sender
		p.connected = true
		p.sndUna, p.sndNxt, p.sndWnd = uint32(s.SndUna), uint32(s.SndNxt), uint32(s.SndWnd)
		p.rcvNxt, p.rcvWnd = uint32(o.Receiver.RcvNxt), uint32(o.RcvWnd)
		p.cwnd, p.ssthresh, p.rto = s.SndCwnd, s.Ssthresh, s.RTO
		p.srtt, p.srttKnown, p.rttvar = s.RTTState.SRTT, s.RTTState.SRTTInited, s.RTTState.RTTVar
		p.mss = s.MaxPayloadSize
		p.recoveryFirst = uint32(s.FastRecovery.First)
	}
	t.enqueue(it)
}
