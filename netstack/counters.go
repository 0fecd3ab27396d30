package netstack

import "gvisor.dev/gvisor/pkg/tcpip"

// Counter is one named count.
type Counter struct {
	Name  string
	Value uint64
	Help  string
}

// Counters are the stack's TCP and IP counters, what the link pipeline
// carried, and what tracing could not keep: the numbers behind
// tcp-upper-lab stats.
func (st *Stack) Counters() []Counter {
	s := st.s.Stats()
	t, ip := s.TCP, s.IP
	c := []Counter{
		{"tcp.segments_in", t.ValidSegmentsReceived.Value(), "valid TCP segments received"},
		{"tcp.segments_out", t.SegmentsSent.Value(), "TCP segments sent"},
		{"tcp.retransmits", t.Retransmits.Value(), "segments retransmitted"},
		{"tcp.fast_retransmits", t.FastRetransmit.Value(), "segments retransmitted after duplicate ACKs"},
		{"tcp.timeouts", t.Timeouts.Value(), "retransmission timer expirations (RTO)"},
		{"tcp.sack_recovery", t.SACKRecovery.Value(), "times SACK recovery was entered"},
		{"tcp.tlp_recovery", t.TLPRecovery.Value(), "tail loss probes that led to recovery"},
		{"tcp.checksum_errors", t.ChecksumErrors.Value(), "segments dropped for a bad checksum"},
		{"tcp.invalid_segments", t.InvalidSegmentsReceived.Value(), "segments dropped as malformed"},
		{"tcp.resets_out", t.ResetsSent.Value(), "RST segments sent"},
		{"tcp.resets_in", t.ResetsReceived.Value(), "RST segments received"},
		{"tcp.established_resets", t.EstablishedResets.Value(), "established connections reset"},
		{"tcp.active_opens", t.ActiveConnectionOpenings.Value(), "connections we opened (connect)"},
		{"tcp.passive_opens", t.PassiveConnectionOpenings.Value(), "connections we accepted"},
		{"tcp.failed_opens", t.FailedConnectionAttempts.Value(), "connection attempts that failed"},
		{"tcp.current_established", t.CurrentEstablished.Value(), "connections in ESTABLISHED or CLOSE-WAIT now"},
		{"tcp.listen_drops_syn", t.ListenOverflowSynDrop.Value(), "SYNs dropped: listen queue full"},
		{"tcp.listen_drops_ack", t.ListenOverflowAckDrop.Value(), "handshake ACKs dropped: accept queue full"},
		{"tcp.syn_cookies_sent", t.ListenOverflowSynCookieSent.Value(), "SYN cookies sent (listen queue full)"},
		{"tcp.syn_cookies_valid", t.ListenOverflowSynCookieRcvd.Value(), "valid SYN cookies received"},
		{"tcp.syn_cookies_invalid", t.ListenOverflowInvalidSynCookieRcvd.Value(), "invalid SYN cookies received"},
		{"tcp.send_errors", t.SegmentSendErrors.Value(), "segments the link refused"},
		{"ip.packets_in", ip.PacketsReceived.Value(), "IP packets received"},
		{"ip.packets_out", ip.PacketsSent.Value(), "IP packets sent"},
		{"ip.malformed", ip.MalformedPacketsReceived.Value(), "IP packets dropped as malformed"},
		{"ip.wrong_destination", ip.InvalidDestinationAddressesReceived.Value(), "IP packets for an address that is not ours"},
		{"ip.bad_source", ip.InvalidSourceAddressesReceived.Value(), "IP packets from a loopback address or our own"},
		{"ip.unknown_protocol", sumMap(s.NICs.UnknownL3ProtocolRcvdPacketCounts), "packets of a network protocol we do not speak (IPv6)"},
		{"ip.unknown_transport", sumMap(s.NICs.UnknownL4ProtocolRcvdPacketCounts), "IP packets for a transport we do not serve (UDP, ...)"},
		{"ip.malformed_transport", s.NICs.MalformedL4RcvdPackets.Value(), "TCP/ICMP headers too short, or bad for no connection"},

		{"stack.dropped", s.DroppedPackets.Value(), "packets the stack dropped"},
	}
	d := st.dev.Stats()
	c = append(c,
		Counter{"link.packets_in", d.RxPackets.Load(), "packets read from the device"},
		Counter{"link.packets_out", d.TxPackets.Load(), "packets written to the device"},
		Counter{"link.bytes_in", d.RxBytes.Load(), "bytes read from the device"},
		Counter{"link.bytes_out", d.TxBytes.Load(), "bytes written to the device"},
		Counter{"link.errors_in", d.RxErrors.Load(), "packets read that were not IP"},
		Counter{"link.errors_out", d.TxErrors.Load(), "packets the device refused"},
		Counter{"link.checksum_errors_in", d.RxChecksumErrors.Load(), "packets dropped by the link for a bad checksum (with offloads the link checks what the kernel did not)"},
		Counter{"link.fragments_dropped_in", d.RxFragmentsDropped.Load(), "IP fragments dropped with offloads (their transport checksum cannot be checked by the link; TCP sets DF)"},
		Counter{"link.gso_in", d.RxGSO.Load(), "super-segments read (several wire segments in one, with offloads)"},
		Counter{"link.gso_out", d.TxGSO.Load(), "super-segments written for the kernel to cut (with offloads)"},
		Counter{"link.ready_after_delivery", d.SoonAfterDelivery.Load(), "readiness (a connection became readable) run by the device reader right after the packet it was delivering, with no goroutine woken (mostly what that packet caused)"},
		Counter{"link.ready_on_goroutine", d.SoonOnGoroutine.Load(), "readiness reported while the reader was not delivering (a timer, a delayed packet, the application), run on a goroutine of its own"},
		Counter{"link.spins_in", d.RxSpins.Load(), "times the reader found the device empty and busy-polled it (--tun-spin)"},
		Counter{"link.spin_parks_in", d.RxSpinParks.Load(), "busy-polls that ran out without a packet, after which the reader slept"},
	)
	f := st.faults.Stats()
	c = append(c,
		Counter{"fault.applied", f.Applied.Load(), "faults injected (all actions)"},
		Counter{"fault.dropped", f.Dropped.Load(), "packets dropped by drop/blackhole rules"},
		Counter{"fault.delayed", f.Delayed.Load(), "packets delayed"},
		Counter{"fault.duplicated", f.Duplicated.Load(), "extra copies sent"},
		Counter{"fault.reordered", f.Reordered.Load(), "packets overtaken by a later one"},
		Counter{"fault.corrupted", f.Corrupted.Load(), "packets with a bit flipped"},
		Counter{"fault.truncated", f.Truncated.Load(), "packets cut short"},
		Counter{"fault.rate_queued", f.RateQueued.Load(), "packets held back by a rate rule"},
		Counter{"fault.rate_dropped", f.RateDrops.Load(), "packets dropped by a rate rule's full queue"},
	)
	if st.tr != nil {
		c = append(c, Counter{"trace.dropped", st.tr.Stats().Dropped.Load(), "packets not printed or captured: the records waiting for the recorder held its byte budget"})
	}
	if st.tracker != nil {
		ts := st.tracker.Stats()
		c = append(c,
			Counter{"events.emitted", ts.Events.Load(), "connection events"},
			Counter{"events.dropped", ts.EventsDropped.Load(), "events a slow subscriber missed"},
			Counter{"tracker.dropped", ts.Dropped.Load(), "packet summaries and probe snapshots lost: the tracker was behind"},
		)
	}
	return c
}

// sumMap adds up a counter map (gVisor keeps per-protocol counts).
func sumMap(m *tcpip.IntegralStatCounterMap) uint64 {
	if m == nil {
		return 0
	}
	var n uint64
	for _, k := range m.Keys() {
		if c, ok := m.Get(k); ok {
			n += c.Value()
		}
	}
	return n
}
