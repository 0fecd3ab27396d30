// Copyright 2026 The tcp-upper Authors.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

// tcp-upper patch 0009: the observe hook. Upstream has only the TCP probe,
// which runs once per received segment; this hook runs at the moment an
// endpoint changes state or one of its timers or loss-recovery mechanisms
// acts, with a copy of the endpoint's numbers at that moment. It observes
// only: it changes nothing in the endpoint.

package tcp

import (
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TCPObserveKind says what happened to an endpoint.
type TCPObserveKind uint8

// The moments the observe hook reports.
const (
	// TCPObserveState: the endpoint's state changed from From to To
	// (Endpoint.setEndpointState, every change, gVisor's internal states
	// such as StateInitial, StateBound and StateConnecting included).
	TCPObserveState TCPObserveKind = iota + 1
	// TCPObserveRTO: a retransmission timer expired: the connection's
	// (Sender.RTO is the timeout that expired, before it backs off),
	// or during a handshake the SYN's or SYN-ACK's (Connected is false).
	// The timer also paces zero-window probes, so a probe is preceded by
	// this event.
	TCPObserveRTO
	// TCPObserveRecoveryEnter: the sender entered fast recovery (SACK
	// recovery when Options.SACKPermitted), after setting its cwnd.
	TCPObserveRecoveryEnter
	// TCPObserveRecoveryLeave: the sender left fast or SACK recovery,
	// after deflating its cwnd. When an ACK ends recovery, gVisor leaves it
	// before it moves snd.una to that ACK: Sender.SndUna is still the
	// earlier one. An RTO also ends recovery (after its TCPObserveRTO), and
	// when an ACK shows that a tail loss probe repaired a loss (RFC 8985
	// 7.6.3) gVisor enters and leaves recovery at once, to reduce cwnd.
	TCPObserveRecoveryLeave
	// TCPObserveTailLossProbe: the probe timer sent a tail loss probe (new
	// data if the window allowed, else the highest segment sent again).
	TCPObserveTailLossProbe
	// TCPObserveZeroWindowProbe: a zero-window probe was sent.
	TCPObserveZeroWindowProbe
	// TCPObserveRcvWindowClosed: the endpoint is about to advertise a zero
	// receive window (RcvWnd is 0), having advertised a non-zero one.
	TCPObserveRcvWindowClosed
	// TCPObserveRcvWindowOpened: the endpoint is about to advertise a
	// non-zero receive window (RcvWnd) after a zero one.
	TCPObserveRcvWindowOpened
)

var observeKindNames = [...]string{"", "state", "rto", "recovery-enter", "recovery-leave", "tail-loss-probe", "zero-window-probe", "rcv-window-closed", "rcv-window-opened"}

// String names the kind.
func (k TCPObserveKind) String() string {
	if int(k) < len(observeKindNames) && k != 0 {
		return observeKindNames[k]
	}
	return "unknown"
}

// TCPObservation is what the observe hook is given: what happened and a
// copy of the endpoint's numbers at that instant.
type TCPObservation struct {
	Kind TCPObserveKind

	// Endpoint is the endpoint observed, for a hook that keeps it to
	// query later. Its lock is held during the call: the hook must not
	// call its methods then.
	Endpoint *Endpoint

	// From and To are the old and new state for TCPObserveState; for the
	// other kinds both are the endpoint's current state.
	From, To EndpointState

	// ISS and IRS are the initial sequence numbers (ours and the peer's),
	// valid when HaveISS and HaveIRS: they are known from the endpoint's
	// handshake (ISS from SYN-SENT or SYN-RCVD on, IRS once the peer's SYN
	// arrived). A connection a SYN cookie completed had no handshake
	// object: then both are false, and at its ESTABLISHED event
	// Sender.SndUna-1 and Receiver.RcvNxt-1 are the ISNs.
	ISS, IRS         seqnum.Value
	HaveISS, HaveIRS bool

	// ID is the endpoint's four-tuple; Time is when the observation was
	// made (the stack's monotonic clock).
	ID   TCPEndpointID
	Time tcpip.MonotonicTime

	// Options are the negotiated options (SACK permitted, timestamps).
	Options TCPEndpointStateInner

	// Connected is true once the handshake has built the endpoint's sender
	// and receiver (its ESTABLISHED transition on): only then do Sender,
	// Receiver and RcvWnd hold the endpoint's numbers. Before, they are
	// zero and mean "none yet" (a SYN-SENT endpoint has no cwnd), not zero.
	Connected bool

	// Sender and Receiver are copies of the endpoint's sender and receiver
	// state, as the TCP probe copies them into its TCPEndpointState
	// (Sender.RTTState, RACKState, Cubic included). The probe's send and
	// receive buffer states and SACK blocks are not copied: the hook can
	// run with their locks held (a shutdown changes the state under the
	// send queue's lock), and copying SACK blocks would allocate.
	Sender   TCPSenderState
	Receiver TCPReceiverState

	// RcvWnd is the receive window the endpoint last advertised (or, for
	// the receive-window kinds, is about to advertise), in bytes, as the
	// peer reads it: the window field shifted left by the window scale.
	RcvWnd seqnum.Size
}

// TCPObserveFunc is the observe hook. gVisor calls it with the endpoint's
// lock held, on whatever goroutine caused the event (a TCP processor, a
// timer, or the application's in a call such as Close or Shutdown): it
// must copy what it needs and return, without calling into the endpoint or
// the stack. o is only valid during the call.
type TCPObserveFunc func(o *TCPObservation)

// NewProtocolObserve returns a TCP transport protocol with Reno congestion
// control (as NewProtocolProbe), the given probe (may be nil) and the given
// observe hook (may be nil), which is called at every moment listed under
// TCPObserveKind. Without a hook the endpoints pay a nil check at those
// moments and nothing else.
func NewProtocolObserve(probe TCPProbeFunc, observe TCPObserveFunc) func(*stack.Stack) stack.TransportProtocol {
	return func(s *stack.Stack) stack.TransportProtocol {
		p := newProtocol(s, ccReno, probe).(*protocol)
		p.observe = observe
		return p
	}
}

// observeLocked calls the observe hook, if there is one. It is small
// enough to be inlined: without a hook it costs a nil check.
//
// +checklocks:e.mu
func (e *Endpoint) observeLocked(kind TCPObserveKind, from, to EndpointState) {
	if fn := e.observe; fn != nil {
		e.observeSlowLocked(fn, kind, from, to)
	}
}

// observeSlowLocked copies the endpoint's numbers and calls fn.
//
// +checklocks:e.mu
// +checklocksexclude:e.snd.rtt.rttMutex
func (e *Endpoint) observeSlowLocked(fn TCPObserveFunc, kind TCPObserveKind, from, to EndpointState) {
	o := TCPObservation{Kind: kind, Endpoint: e, From: from, To: to}
	o.ID = TCPEndpointID(e.TransportEndpointInfo.ID)
	o.Time = e.stack.Clock().NowMonotonic()
	o.Options = e.TCPEndpointStateInner
	if h := e.h; h != nil {
		o.ISS, o.HaveISS = h.iss, true
		if h.flags.Contains(header.TCPFlagAck) {
			o.IRS, o.HaveIRS = h.ackNum-1, true
		}
	}
	if e.snd != nil && e.rcv != nil {
		o.Connected = true
		o.RcvWnd = e.rcv.rcvWnd >> e.rcv.RcvWndScale << e.rcv.RcvWndScale
		o.Receiver = e.rcv.TCPReceiverState
		s := &o.Sender
		*s = e.snd.TCPSenderState
		e.snd.rtt.Lock()
		s.RTTState = e.snd.rtt.TCPRTTState
		e.snd.rtt.Unlock()
		if cubic, ok := e.snd.cc.(*cubicState); ok {
			s.Cubic = cubic.TCPCubicState
			s.Cubic.TimeSinceLastCongestion = o.Time.Sub(s.Cubic.T)
		}
		s.RACKState = e.snd.rc.TCPRACKState
		s.RetransmitTS = e.snd.retransmitTS
		s.SpuriousRecovery = e.snd.spuriousRecovery
	}
	fn(&o)
}

// observeNowLocked reports kind, with the endpoint's current state as From
// and To. Like observeLocked, it is inlined.
//
// +checklocks:e.mu
func (e *Endpoint) observeNowLocked(kind TCPObserveKind) {
	if e.observe != nil {
		e.observeCurrentLocked(kind)
	}
}

// observeCurrentLocked is observeNowLocked's slow path (not inlined, so
// that observeNowLocked is).
//
// +checklocks:e.mu
//
//go:noinline
func (e *Endpoint) observeCurrentLocked(kind TCPObserveKind) {
	st := e.EndpointState()
	e.observeSlowLocked(e.observe, kind, st, st)
}

// observeRcvWindowLocked reports a receive window about to be advertised
// if it closes (wasZero false, isZero true) or opens again.
//
// +checklocks:e.mu
func (e *Endpoint) observeRcvWindowLocked(wasZero, isZero bool) {
	switch {
	case isZero && !wasZero:
		e.observeNowLocked(TCPObserveRcvWindowClosed)
	case wasZero && !isZero:
		e.observeNowLocked(TCPObserveRcvWindowOpened)
	}
}
