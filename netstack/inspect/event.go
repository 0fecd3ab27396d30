// Package inspect watches our stack's TCP connections: it reports every
// state change, retransmission timeout, fast recovery, loss probe and
// window event of every connection as the stack makes it, with the stack's
// numbers at that instant (from gVisor's observe hook, our patch 0009),
// annotates them with what the wire shows (duplicate ACKs, retransmitted
// segments, the peer's windows), and answers the questions ss answers
// about a kernel: which sockets, in which state, with what queues,
// windows, RTT and timers. A subscriber that asks (WithSegments) also gets
// every TCP segment of a tracked connection as a segment event, numbered
// as the ladder prints it, in order with the others. Its Event is also the
// schema of the kernel's side (internal/kevents: Stack "kernel").
package inspect

import (
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/tcp-upper/tcp-upper/internal/pkt"
)

// State is a TCP state, as RFC 9293 names it.
type State uint8

// The TCP states.
const (
	Closed State = iota
	Listen
	SynSent
	SynRcvd
	Established
	FinWait1
	FinWait2
	CloseWait
	Closing
	LastAck
	TimeWait
)

var stateNames = [...]string{"CLOSED", "LISTEN", "SYN-SENT", "SYN-RCVD", "ESTABLISHED", "FIN-WAIT-1", "FIN-WAIT-2", "CLOSE-WAIT", "CLOSING", "LAST-ACK", "TIME-WAIT"}

// ss spells them its own way.
var ssNames = [...]string{"CLOSE", "LISTEN", "SYN-SENT", "SYN-RECV", "ESTAB", "FIN-WAIT-1", "FIN-WAIT-2", "CLOSE-WAIT", "CLOSING", "LAST-ACK", "TIME-WAIT"}

// String is the RFC name (ESTABLISHED, SYN-RCVD, ...).
func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "UNKNOWN"
}

// SSName is the name ss prints (ESTAB, SYN-RECV, ...).
func (s State) SSName() string {
	if int(s) < len(ssNames) {
		return ssNames[s]
	}
	return "UNKNOWN"
}

// ParseState accepts either spelling.
func ParseState(name string) (State, bool) {
	for i := range stateNames {
		if stateNames[i] == name || ssNames[i] == name {
			return State(i), true
		}
	}
	return 0, false
}

// FromGvisor converts gVisor's endpoint state.
func FromGvisor(s tcp.EndpointState) State {
	switch s {
	case tcp.StateEstablished:
		return Established
	case tcp.StateSynSent:
		return SynSent
	case tcp.StateSynRecv:
		return SynRcvd
	case tcp.StateFinWait1:
		return FinWait1
	case tcp.StateFinWait2:
		return FinWait2
	case tcp.StateTimeWait:
		return TimeWait
	case tcp.StateClose:
		return Closed
	case tcp.StateCloseWait:
		return CloseWait
	case tcp.StateLastAck:
		return LastAck
	case tcp.StateListen:
		return Listen
	case tcp.StateClosing:
		return Closing
	}
	return Closed // initial, bound, connecting and error states
}

// Kind says what an event is about.
type Kind string

// Event kinds.
const (
	KindState          Kind = "state"           // a state transition (the stack's)
	KindRetransmit     Kind = "retransmit"      // a segment seen on the wire a second time, or the peer's SYN or FIN again
	KindRTO            Kind = "rto"             // the retransmission timer expired (the stack's)
	KindFastRetransmit Kind = "fast-retransmit" // the sender entered fast (SACK) recovery (the stack's)
	KindRecovery       Kind = "recovery"        // the sender left fast (SACK) recovery (the stack's)
	KindTailLossProbe  Kind = "tail-loss-probe" // the probe timer sent a tail loss probe (the stack's)
	KindDupAck         Kind = "dup-ack"         // the third duplicate ACK arrived (seen on the wire)
	KindWindow         Kind = "window"          // a window closed to zero or opened again, or a zero-window probe
	KindFault          Kind = "fault"           // a fault injected on the wire
	// KindSegment is one TCP segment of a tracked connection as it crossed
	// the trace layer (Event.Seg), sent only to subscribers that asked for
	// segments (WithSegments).
	KindSegment Kind = "segment"
)

// ConnID names a connection from our side.
type ConnID struct {
	Local, Remote netip.AddrPort
}

// Numbers are a connection's sequence variables and the stack's congestion
// state at one moment, as the stack had them. Sequence numbers are
// relative to the initial sequence numbers (as tcpdump prints them)
// unless SeqAbsolute; windows in bytes.
type Numbers struct {
	// Known is false when the stack had none of these yet (before its
	// handshake completes an endpoint has no sender or receiver: no cwnd,
	// no snd.una) and for fault events: then every number is unknown
	// (null in JSON, - in text), not zero.
	Known bool
	// Missing are the numbers the stack does not report although Known
	// (the kernel's tcp_probe has no rcv.nxt, RTO or rttvar): unknown, null in
	// JSON and - in text.
	Missing Field
	// SeqAbsolute says SndUna and SndNxt are the stack's own sequence
	// numbers, not relative to its ISN: the kernel's tracepoints do not
	// report its ISN.
	SeqAbsolute            bool
	SndUna, SndNxt, RcvNxt uint32
	SndWnd                 uint32 // the peer's window, as the stack last took it
	RcvWnd                 uint32 // the window the stack last advertised
	Cwnd                   int    // segments
	Ssthresh               int    // segments; math.MaxInt32 or more means not yet set
	RTO                    time.Duration
	// SRTTKnown is false until the stack has measured a round trip.
	SRTTKnown bool
	SRTT      time.Duration
	// RTTVar is the round-trip time variation (RFC 6298 2), set with the
	// first measurement as SRTT is: known when SRTTKnown and not Missing
	// (the kernel's tcp_probe has no rttvar).
	RTTVar time.Duration
}

// Field names one of Numbers' numbers, for Numbers.Missing.
type Field uint16

// The numbers.
const (
	FieldSndUna Field = 1 << iota
	FieldSndNxt
	FieldRcvNxt
	FieldSndWnd
	FieldRcvWnd
	FieldCwnd
	FieldSsthresh
	FieldRTO
	FieldRTTVar
)

// has reports whether n has number f.
func (n *Numbers) has(f Field) bool { return n.Known && n.Missing&f == 0 }

// RTTVarKnown reports whether n has the stack's rttvar: once it measured a
// round trip, if it reports rttvar at all.
func (n *Numbers) RTTVarKnown() bool { return n.SRTTKnown && n.has(FieldRTTVar) }

// Whose TCP an event is about (Event.Stack).
const (
	StackNetstack = "netstack" // gVisor's netstack, ours (the tracker)
	StackKernel   = "kernel"   // the kernel's TCP (its tracepoints and sock_diag)
)

// Event is something that happened to a connection.
type Event struct {
	Time time.Time
	Kind Kind
	// Stack is whose TCP reported it (StackNetstack or StackKernel) and
	// Host where that stack runs (ant or apple in the lab; empty when not
	// known).
	Stack, Host string
	Conn        ConnID
	// From and To are set for state events.
	From, To State
	// Cause says why, in words.
	Cause string
	// N are the stack's numbers: for the stack's own events (state, rto,
	// fast-retransmit, recovery, tail-loss-probe, and the window events it
	// reports) at the instant of the event; for what the wire shows
	// (retransmit, dup-ack, the peer's window) as of the stack's latest
	// event or processed segment before the tracker saw that packet
	// (rcv.wnd then is the window on our latest segment).
	N Numbers
	// ISS and IRS are the initial sequence numbers (ours, the peer's),
	// when known (ISSKnown, IRSKnown): a connection in SYN-SENT does not
	// know the peer's yet.
	ISS, IRS           uint32
	ISSKnown, IRSKnown bool
	// Held is how long the connection stayed in From (set on leaving
	// TIME-WAIT).
	Held time.Duration
	// Rule is the fault rule id (fault events).
	Rule int
	// Seg is the segment (segment events only).
	Seg *Segment
}

// Segment is one TCP segment of a tracked connection, as the trace layer
// saw it (the capture's point: above the fault layer), numbered as the
// ladder prints it.
type Segment struct {
	// Out: this stack sent it; else it received it.
	Out   bool
	Flags header.TCPFlags
	// Seq is relative to the sender's initial sequence number (ours, the
	// event's ISS, for a segment we sent; the peer's, IRS, for one we
	// received), End is Seq+Len, and Ack and the SACK blocks are relative
	// to the receiver's, as tcpdump prints them. Absolute says the tracker
	// did not know an ISN they need (a peer's RST answering our SYN): then
	// they are the wire's.
	Seq, End, Ack uint32
	Absolute      bool
	Len           uint32
	// Win is the advertised window in bytes (scaled once both SYNs offered
	// window scaling; a SYN's is never scaled), RawWin the header's field.
	Win    uint32
	RawWin uint16
	SACK   [][2]uint32
	// A SYN's options: MSS, window scale (-1: none), SACK permitted.
	MSS    uint16
	WScale int8
	SACKOK bool
	// Retransmit: its sequence space was on the wire before (a segment
	// that takes sequence space, data, SYN or FIN, starting below the
	// highest its sender had sent).
	Retransmit bool
}

// String is the segment as the ladder labels it (pkt.AppendLabel), after
// its direction: "> P. 1:8(7) ack 1 win 64512" (> sent, < received).
func (s *Segment) String() string {
	var b strings.Builder
	if s.Out {
		b.WriteString("> ")
	} else {
		b.WriteString("< ")
	}
	pkt.AppendLabel(&b, &pkt.Label{Flags: s.Flags, Seq: s.Seq, Ack: s.Ack, Len: s.Len, Win: s.Win,
		MSS: s.MSS, WScale: int(s.WScale), SACKOK: s.SACKOK, SACK: s.SACK, Retransmit: s.Retransmit})
	return b.String()
}

// Format is an event output format.
type Format string

// Formats.
const (
	Text Format = "text"
	JSON Format = "json"
)

// ParseFormat checks a --events-format value.
func ParseFormat(s string) (Format, error) {
	switch Format(s) {
	case Text, JSON:
		return Format(s), nil
	}
	return "", fmt.Errorf("bad events format %q: want text or json", s)
}

// Text renders the event as one line, with its host and stack:
//
//	18:52:19.613971 apple/netstack 10.0.1.2:47762 SYN-RCVD -> ESTABLISHED (received the ACK of our SYN-ACK) snd.una=1 snd.nxt=1 rcv.nxt=1 snd.wnd=64256 rcv.wnd=64256 cwnd=10 ssthresh=inf srtt=0.210ms rttvar=0.105ms rto=201ms
//
// The kernel's sequence numbers are absolute (its ISN is not reported):
// they are printed with a # (snd.una=#3735928559).
func (e *Event) Text() string {
	var b strings.Builder
	b.WriteString(e.Time.Format("15:04:05.000000"))
	b.WriteByte(' ')
	if who := e.Who(); who != "" {
		b.WriteString(who)
		b.WriteByte(' ')
	}
	b.WriteString(e.Conn.Remote.String())
	b.WriteByte(' ')
	switch e.Kind {
	case KindState:
		b.WriteString(e.From.String())
		b.WriteString(" -> ")
		b.WriteString(e.To.String())
	case KindSegment:
		if e.Seg != nil {
			b.WriteString("segment ")
			b.WriteString(e.Seg.String())
			return b.String() // the wire's numbers, not the stack's
		}
		b.WriteString(string(e.Kind))
	default:
		b.WriteString(string(e.Kind))
	}
	if e.Cause != "" {
		b.WriteString(" (")
		b.WriteString(e.Cause)
		b.WriteString(")")
	}
	if e.Kind == KindFault {
		return b.String()
	}
	n := &e.N
	if !n.Known {
		// The stack has no sender or receiver yet.
		b.WriteString(" snd.una=- snd.nxt=- rcv.nxt=- snd.wnd=- rcv.wnd=- cwnd=- ssthresh=- srtt=- rttvar=- rto=-")
		return b.String()
	}
	seq := "%d"
	if n.SeqAbsolute {
		seq = "#%d"
	}
	num := func(name string, f Field, format string, v any) {
		b.WriteString(" " + name + "=")
		if !n.has(f) {
			b.WriteByte('-')
			return
		}
		fmt.Fprintf(&b, format, v)
	}
	num("snd.una", FieldSndUna, seq, n.SndUna)
	num("snd.nxt", FieldSndNxt, seq, n.SndNxt)
	num("rcv.nxt", FieldRcvNxt, "%d", n.RcvNxt)
	num("snd.wnd", FieldSndWnd, "%d", n.SndWnd)
	num("rcv.wnd", FieldRcvWnd, "%d", n.RcvWnd)
	num("cwnd", FieldCwnd, "%d", n.Cwnd)
	num("ssthresh", FieldSsthresh, "%s", ssthreshString(n.Ssthresh))
	if n.SRTTKnown {
		b.WriteString(" srtt=" + ms(n.SRTT, 3))
	} else {
		b.WriteString(" srtt=-")
	}
	if n.RTTVarKnown() {
		b.WriteString(" rttvar=" + ms(n.RTTVar, 3))
	} else {
		b.WriteString(" rttvar=-")
	}
	num("rto", FieldRTO, "%s", ms(n.RTO, 0))
	return b.String()
}

// Who is the event's host and stack as text lines show them
// (apple/netstack, ant/kernel; just the stack when the host is not known).
func (e *Event) Who() string {
	switch {
	case e.Host != "" && e.Stack != "":
		return e.Host + "/" + e.Stack
	case e.Stack != "":
		return e.Stack
	}
	return e.Host
}

func ssthreshString(v int) string {
	if v <= 0 || v >= math.MaxInt32 {
		return "inf"
	}
	return strconv.Itoa(v)
}

// ms prints a duration in milliseconds with prec decimals.
func ms(d time.Duration, prec int) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', prec, 64) + "ms"
}

// jsonEvent is the JSON shape of an Event. A number the stack did not
// have is null.
type jsonEvent struct {
	Time     string   `json:"time"`
	Kind     Kind     `json:"kind"`
	Stack    string   `json:"stack,omitempty"`
	Host     string   `json:"host,omitempty"`
	Local    string   `json:"local"`
	Remote   string   `json:"remote"`
	From     string   `json:"from,omitempty"`
	To       string   `json:"to,omitempty"`
	Cause    string   `json:"cause,omitempty"`
	SndUna   *uint32  `json:"snd_una"`
	SndNxt   *uint32  `json:"snd_nxt"`
	RcvNxt   *uint32  `json:"rcv_nxt"`
	SndWnd   *uint32  `json:"snd_wnd"`
	RcvWnd   *uint32  `json:"rcv_wnd"`
	Cwnd     *int     `json:"cwnd"`
	Ssthresh *int     `json:"ssthresh"` // -1: not yet set (infinite)
	SRTTms   *float64 `json:"srtt_ms"`
	RTTVarms *float64 `json:"rttvar_ms"`
	RTOms    *float64 `json:"rto_ms"`
	ISS      *uint32  `json:"iss"`
	IRS      *uint32  `json:"irs"`
	// SeqAbsolute: snd_una and snd_nxt are the stack's own sequence
	// numbers (the kernel's ISN is not reported).
	SeqAbsolute bool     `json:"seq_absolute,omitempty"`
	HeldS       float64  `json:"held_s,omitempty"`
	Rule        int      `json:"rule,omitempty"`
	Seg         *jsonSeg `json:"seg,omitempty"`
}

// jsonSeg is the JSON shape of a Segment.
type jsonSeg struct {
	Dir        string      `json:"dir"` // "out" (sent) or "in" (received)
	Flags      string      `json:"flags"`
	Seq        uint32      `json:"seq"`
	End        uint32      `json:"end"`
	Ack        uint32      `json:"ack"`
	Absolute   bool        `json:"absolute,omitempty"`
	Len        uint32      `json:"len"`
	Win        uint32      `json:"win"`
	RawWin     uint16      `json:"raw_win"`
	SACK       [][2]uint32 `json:"sack,omitempty"`
	MSS        uint16      `json:"mss,omitempty"`
	WScale     *int8       `json:"wscale,omitempty"`
	SACKOK     bool        `json:"sack_ok,omitempty"`
	Retransmit bool        `json:"retransmit,omitempty"`
}

func ptr[T any](v T) *T { return &v }

// ptrIf is ptr(v) if ok, else nil (null in JSON).
func ptrIf[T any](ok bool, v T) *T {
	if !ok {
		return nil
	}
	return &v
}

// MarshalJSON renders the event as one JSON object.
func (e *Event) MarshalJSON() ([]byte, error) {
	j := jsonEvent{
		Time: e.Time.UTC().Format(time.RFC3339Nano), Kind: e.Kind,
		Stack: e.Stack, Host: e.Host,
		Local: e.Conn.Local.String(), Remote: e.Conn.Remote.String(),
		Cause: e.Cause, HeldS: e.Held.Seconds(), Rule: e.Rule,
	}
	if n := &e.N; n.Known {
		j.SeqAbsolute = n.SeqAbsolute
		j.SndUna = ptrIf(n.has(FieldSndUna), n.SndUna)
		j.SndNxt = ptrIf(n.has(FieldSndNxt), n.SndNxt)
		j.RcvNxt = ptrIf(n.has(FieldRcvNxt), n.RcvNxt)
		j.SndWnd = ptrIf(n.has(FieldSndWnd), n.SndWnd)
		j.RcvWnd = ptrIf(n.has(FieldRcvWnd), n.RcvWnd)
		j.Cwnd = ptrIf(n.has(FieldCwnd), n.Cwnd)
		ss := n.Ssthresh
		if ss >= math.MaxInt32 {
			ss = -1
		}
		j.Ssthresh = ptrIf(n.has(FieldSsthresh), ss)
		j.RTOms = ptrIf(n.has(FieldRTO), float64(n.RTO)/1e6)
		if n.SRTTKnown {
			j.SRTTms = ptr(float64(n.SRTT) / 1e6)
		}
		j.RTTVarms = ptrIf(n.RTTVarKnown(), float64(n.RTTVar)/1e6)
	}
	if e.ISSKnown {
		j.ISS = ptr(e.ISS)
	}
	if e.IRSKnown {
		j.IRS = ptr(e.IRS)
	}
	if e.Kind == KindState {
		j.From, j.To = e.From.String(), e.To.String()
	}
	if g := e.Seg; g != nil {
		js := &jsonSeg{Dir: "in", Flags: pkt.FlagString(g.Flags), Seq: g.Seq, End: g.End, Ack: g.Ack, Absolute: g.Absolute,
			Len: g.Len, Win: g.Win, RawWin: g.RawWin, SACK: g.SACK, MSS: g.MSS, SACKOK: g.SACKOK, Retransmit: g.Retransmit}
		if g.Out {
			js.Dir = "out"
		}
		if g.WScale >= 0 && g.Flags&header.TCPFlagSyn != 0 {
			js.WScale = ptr(g.WScale)
		}
		j.Seg = js
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads what MarshalJSON wrote (for tools and tests).
func (e *Event) UnmarshalJSON(b []byte) error {
	var j jsonEvent
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	t, err := time.Parse(time.RFC3339Nano, j.Time)
	if err != nil {
		return err
	}
	local, err := netip.ParseAddrPort(j.Local)
	if err != nil {
		return err
	}
	remote, err := netip.ParseAddrPort(j.Remote)
	if err != nil {
		return err
	}
	*e = Event{Time: t, Kind: j.Kind, Stack: j.Stack, Host: j.Host, Conn: ConnID{local, remote}, Cause: j.Cause,
		Held: time.Duration(j.HeldS * float64(time.Second)), Rule: j.Rule}
	n := &e.N
	take := func(f Field, known bool) {
		if known {
			n.Known = true
		} else {
			n.Missing |= f
		}
	}
	take(FieldSndUna, j.SndUna != nil)
	take(FieldSndNxt, j.SndNxt != nil)
	take(FieldRcvNxt, j.RcvNxt != nil)
	take(FieldSndWnd, j.SndWnd != nil)
	take(FieldRcvWnd, j.RcvWnd != nil)
	take(FieldCwnd, j.Cwnd != nil)
	take(FieldSsthresh, j.Ssthresh != nil)
	take(FieldRTO, j.RTOms != nil)
	if j.SRTTms != nil {
		n.Known, n.SRTTKnown, n.SRTT = true, true, time.Duration(*j.SRTTms*1e6)
		// rttvar comes with srtt; a stack that has srtt and no rttvar
		// does not report it.
		take(FieldRTTVar, j.RTTVarms != nil)
	}
	if !n.Known {
		n.Missing = 0
	} else {
		n.SeqAbsolute = j.SeqAbsolute
		set := func(dst *uint32, v *uint32) {
			if v != nil {
				*dst = *v
			}
		}
		set(&n.SndUna, j.SndUna)
		set(&n.SndNxt, j.SndNxt)
		set(&n.RcvNxt, j.RcvNxt)
		set(&n.SndWnd, j.SndWnd)
		set(&n.RcvWnd, j.RcvWnd)
		if j.Cwnd != nil {
			n.Cwnd = *j.Cwnd
		}
		if j.Ssthresh != nil {
			n.Ssthresh = *j.Ssthresh
			if n.Ssthresh < 0 {
				n.Ssthresh = math.MaxInt32
			}
		}
		if j.RTOms != nil {
			n.RTO = time.Duration(*j.RTOms * 1e6)
		}
		if j.RTTVarms != nil {
			n.RTTVar = time.Duration(*j.RTTVarms * 1e6)
		}
	}
	if j.ISS != nil {
		e.ISS, e.ISSKnown = *j.ISS, true
	}
	if j.IRS != nil {
		e.IRS, e.IRSKnown = *j.IRS, true
	}
	if j.From != "" {
		e.From, _ = ParseState(j.From)
		e.To, _ = ParseState(j.To)
	}
	if js := j.Seg; js != nil {
		if js.Dir != "in" && js.Dir != "out" {
			return fmt.Errorf("segment dir %q: want in or out", js.Dir)
		}
		g := &Segment{Out: js.Dir == "out", Flags: pkt.ParseFlags(js.Flags), Seq: js.Seq, End: js.End, Ack: js.Ack, Absolute: js.Absolute,
			Len: js.Len, Win: js.Win, RawWin: js.RawWin, SACK: js.SACK, MSS: js.MSS, WScale: -1, SACKOK: js.SACKOK, Retransmit: js.Retransmit}
		if js.WScale != nil {
			g.WScale = *js.WScale
		}
		e.Seg = g
	}
	return nil
}

// MarshalText spells the state as the RFC does, for JSON.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText accepts the RFC's or ss's spelling.
func (s *State) UnmarshalText(b []byte) error {
	v, ok := ParseState(string(b))
	if !ok {
		return fmt.Errorf("unknown TCP state %q", b)
	}
	*s = v
	return nil
}
