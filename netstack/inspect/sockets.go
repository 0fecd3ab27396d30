package inspect

import (
	"net/netip"
	"sort"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// Socket is one row of the socket table, as ss shows it.
type Socket struct {
	State         State
	Local, Remote netip.AddrPort
	// RecvQ is bytes received and not yet read by the application (for a
	// listener: connections waiting to be accepted); SendQ is bytes not yet
	// acknowledged (for a listener: the backlog).
	RecvQ, SendQ int
	// TimeWaitLeft is the time left in TIME-WAIT; negative if unknown.
	TimeWaitLeft time.Duration
	// Info is ss -i's detail; Known is false for listeners and for
	// connections the tracker has not seen.
	Info SocketInfo
}

// SocketInfo is ss -i's detail line.
type SocketInfo struct {
	Known         bool          `json:"-"`
	RTT           time.Duration `json:"rtt"`
	RTTVar        time.Duration `json:"rttvar"`
	RTO           time.Duration `json:"rto"`
	Cwnd          int           `json:"cwnd"`
	Ssthresh      int           `json:"ssthresh"`
	MSS           int           `json:"mss"`
	WScalePeer    int           `json:"wscale_peer"` // -1: window scaling off
	WScaleOurs    int           `json:"wscale_ours"`
	SndUna        uint32        `json:"snd_una"` // relative to the ISNs
	SndNxt        uint32        `json:"snd_nxt"`
	RcvNxt        uint32        `json:"rcv_nxt"`
	SndWnd        uint32        `json:"snd_wnd"`
	RcvWnd        uint32        `json:"rcv_wnd"`
	BytesSent     uint64        `json:"bytes_sent"`
	BytesAcked    uint64        `json:"bytes_acked"`
	BytesReceived uint64        `json:"bytes_received"`
	SegsOut       uint64        `json:"segs_out"`
	SegsIn        uint64        `json:"segs_in"`
	Retransmits   uint64        `json:"retrans"`
}

// NoteListener tells the tracker a listener's backlog (gVisor does not
// report it), for ss's Send-Q column.
func (t *Tracker) NoteListener(port uint16, backlog int) {
	t.do(func() {
		if t.backlogs == nil {
			t.backlogs = map[uint16]int{}
		}
		t.backlogs[port] = backlog
	})
}

// Sockets lists the stack's TCP sockets (listening, connected and in
// TIME-WAIT), sorted by state then address.
func (t *Tracker) Sockets() []Socket {
	var out []Socket
	t.do(func() {
		s := t.st.Load()
		if s == nil {
			return
		}
		now := time.Now()
		for _, te := range s.RegisteredEndpoints() {
			ep, ok := te.(*tcp.Endpoint)
			if !ok {
				continue
			}
			gs := tcp.EndpointState(ep.State())
			switch gs {
			case tcp.StateListen, tcp.StateSynSent, tcp.StateSynRecv, tcp.StateEstablished,
				tcp.StateFinWait1, tcp.StateFinWait2, tcp.StateTimeWait, tcp.StateCloseWait,
				tcp.StateLastAck, tcp.StateClosing:
			default:
				continue // not bound to a connection: ss does not list it either
			}
			id, ok := endpointID(ep)
			if !ok {
				continue
			}
			so := Socket{State: FromGvisor(gs), Local: id.Local, Remote: id.Remote, TimeWaitLeft: -1}
			if so.State == Listen {
				so.SendQ = t.backlogs[id.Local.Port()]
				if n, err := ep.GetSockOptInt(tcpip.ReceiveQueueSizeOption); err == nil {
					so.RecvQ = n
				}
				out = append(out, so)
				continue
			}
			if n, err := ep.GetSockOptInt(tcpip.ReceiveQueueSizeOption); err == nil {
				so.RecvQ = n
			}
			c := t.conns[id]
			if c != nil {
				c.ep = ep
				so.SendQ = int(c.sndMax - c.sndUna)
				if c.haveSnap && c.snap.sndBufUsed > so.SendQ {
					so.SendQ = c.snap.sndBufUsed
				}
				if so.State == TimeWait && !c.twStart.IsZero() {
					so.TimeWaitLeft = max(0, t.opts.TimeWait-now.Sub(c.twStart))
				}
				so.Info = c.info()
			}
			var ti tcpip.TCPInfoOption
			if err := ep.GetSockOpt(&ti); err == nil {
				so.Info.RTT, so.Info.RTTVar, so.Info.RTO = ti.RTT, ti.RTTVar, ti.RTO
				so.Info.Cwnd, so.Info.Ssthresh = int(ti.SndCwnd), int(ti.SndSsthresh)
			}
			out = append(out, so)
		}
	})
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.State != b.State {
			return a.State == Listen || (b.State != Listen && a.State < b.State)
		}
		if c := a.Local.Compare(b.Local); c != 0 {
			return c < 0
		}
		return a.Remote.Compare(b.Remote) < 0
	})
	return out
}

// info is ss -i's detail: the sequence variables and windows are the
// stack's latest (observe hook or TCP probe), or the wire's before the
// stack reported any; the counters are the wire's.
func (c *conn) info() SocketInfo {
	in := SocketInfo{
		Known:  true,
		SndUna: c.sndUna - c.iss, SndNxt: c.sndMax - c.iss, RcvNxt: c.rcvNxt - c.irs,
		SndWnd: c.sndWnd, RcvWnd: c.rcvWnd,
		BytesSent: c.bytesSent, BytesAcked: c.bytesAcked, BytesReceived: c.bytesRcvd,
		SegsOut: c.segsOut, SegsIn: c.segsIn, Retransmits: c.retrans,
		WScalePeer: int(c.peerWS), WScaleOurs: int(c.ourWS),
		MSS: int(c.peerMSS),
	}
	if !c.wsOn {
		in.WScalePeer, in.WScaleOurs = -1, -1
	}
	if c.haveSnap {
		n := c.numbers(&c.snap)
		in.SndUna, in.SndNxt, in.RcvNxt, in.SndWnd, in.RcvWnd = n.SndUna, n.SndNxt, n.RcvNxt, n.SndWnd, n.RcvWnd
		if c.snap.mss > 0 {
			in.MSS = c.snap.mss
		}
	}
	return in
}
