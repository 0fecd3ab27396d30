package compare

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
)

// quiet is how long a probe waits before it calls something "no answer".
const quiet = 300 * time.Millisecond

// Probes lists every probe, in the order they run and print.
func Probes() []Probe {
	return []Probe{
		{Name: "syn-options", Doc: "SYN with MSS 1460, SACK-perm, TS, wscale 7: which options the SYN-ACK carries",
			RFC: "RFC 9293 3.7.1, RFC 7323 2.2/3.2, RFC 2018 2", run: probeSynOptions},
		{Name: "syn-window", Doc: "the same SYN: the SYN-ACK's window and window scale",
			RFC: "RFC 7323 2.2, RFC 9293 3.8.6", Allowed: 5, run: probeSynWindow},
		{Name: "syn-no-options", Doc: "SYN without options, then 1200 bytes: SYN-ACK options and the largest echo segment (536 by default)",
			RFC: "RFC 9293 3.7.1 (default send MSS 536)", run: probeSynNoOptions},
		{Name: "mss-536", Doc: "SYN with MSS 536, then 1200 bytes: the largest echo segment",
			RFC: "RFC 9293 3.7.1, RFC 6691 2", Allowed: 9, run: probeMSS536},
		{Name: "out-of-window-data", Doc: "data beyond the server's receive window",
			RFC: "RFC 9293 3.10.7.4 (not acceptable: ACK, drop)", Expect: "ACK, data dropped", run: probeOutOfWindowData},
		{Name: "rst-exact", Doc: "RST at exactly RCV.NXT",
			RFC: "RFC 5961 3.2", Expect: "reset", run: probeRST(0)},
		{Name: "rst-in-window", Doc: "RST at RCV.NXT+100, inside the window",
			RFC: "RFC 5961 3.2 (challenge ACK)", Expect: "challenge ACK", run: probeRST(100)},
		{Name: "rst-out-of-window", Doc: "RST beyond the window",
			RFC: "RFC 5961 3.2 (discard)", Expect: "ignored", run: probeRST(-1)},
		{Name: "syn-in-established", Doc: "a SYN inside the window of an established connection",
			RFC: "RFC 5961 4.2 (challenge ACK)", Expect: "challenge ACK", run: probeSynEstablished},
		{Name: "ack-above-snd-nxt", Doc: "data whose ACK is 1000 above SND.NXT",
			RFC: "RFC 9293 3.10.7.4, RFC 5961 5.2 (ACK, drop)", Expect: "ACK, data dropped", run: probeAckAbove},
		{Name: "old-ack", Doc: "data whose ACK is below SND.UNA - MAX.SND.WND",
			RFC: "RFC 5961 5.2 (ACK, drop)", Expect: "ACK, data dropped", run: probeOldAck},
		{Name: "paws", Doc: "data with a TSval older than TS.Recent",
			RFC: "RFC 7323 5.3 R1 (ACK, drop)", Expect: "ACK, data dropped", run: probePAWS},
		{Name: "sack-out-of-order", Doc: "bytes 100-200 before bytes 0-100: the duplicate ACK's SACK block, then the echo",
			RFC: "RFC 2018 4, RFC 9293 3.10.7.4", Expect: "dup ACK, SACK 100-200; hole filled: echoed 200", run: probeSACK},
		{Name: "reordered-window", Doc: "100 bytes with window 0 arrive after the next 100 bytes, sent later with the window open: whose window the server keeps (the echo goes out only if the window is open)",
			RFC: "RFC 9293 3.10.7.4 (SND.WL1/SND.WL2: update SND.WND only from a newer segment)", Expect: "newer window kept: echoed 200", run: probeReorderedWindow},
		{Name: "duplicate-data", Doc: "the first 10 bytes again after they were ACKed and echoed: the ACK's SACK blocks",
			RFC: "RFC 2883 4 (D-SACK: MAY)", Allowed: 1, run: probeDuplicate},
		{Name: "urgent-data", Doc: "6 bytes with URG and the urgent pointer at their end: what is echoed",
			RFC: "RFC 6093 5, RFC 9293 3.8.5", Allowed: 3, run: probeUrgent},
		{Name: "zero-window-probe", Doc: "data sent with window 0: what the server's probes look like, then the window opens",
			RFC: "RFC 9293 3.8.6.1, RFC 1122 4.2.2.17", Allowed: 2, run: probeZeroWindowForm},
		{Name: "zero-window-backoff", Doc: "the same conversation: how the intervals between probes grow",
			RFC: "RFC 1122 4.2.2.17 (exponential backoff)", Expect: "intervals ×2 ×2", run: probeZeroWindowBackoff},
		{Name: "half-close", Doc: "data and FIN in one segment",
			RFC: "RFC 9293 3.10.7.4 (FIN: CLOSE-WAIT, sending continues)", Expect: "echoed, then FIN", run: probeHalfClose},
		{Name: "passive-close", Doc: "after an echo, the client's FIN alone: how the server acknowledges it when its application closes on reading the end",
			RFC: "RFC 9293 3.10.7.4 (ACK the FIN), RFC 1122 4.2.3.2 (the ACK may wait)", run: probePassiveClose},
		{Name: "bad-checksum", Doc: "data with a wrong TCP checksum, then the same data right",
			RFC: "RFC 9293 3.1, RFC 1122 4.2.2.7 (MUST discard)", Expect: "ignored", run: probeBadChecksum},
		{Name: "closed-port", Doc: "SYN to a port nobody listens on",
			RFC: "RFC 9293 3.10.7.1", Expect: "RST", run: probeClosedPort},
		{Name: "time-wait-reconnect", Doc: "the server closes first (--idle-close 300ms); in its TIME-WAIT, a new SYN on the same ports with a newer timestamp and a lower sequence number",
			RFC: "RFC 6191, RFC 1122 4.2.2.13", ServerFlags: []string{"--idle-close", "300ms"}, run: probeTimeWait},
		{Name: "rst-in-time-wait", Doc: "the server in TIME-WAIT (as above) gets a RST at RCV.NXT, then a SYN with an older timestamp: is the TIME-WAIT still there?",
			RFC: "RFC 1337 3, RFC 9293 3.10.7.4", Allowed: 4, ServerFlags: []string{"--idle-close", "300ms"}, run: probeRSTInTimeWait},
		{Name: "syn-ack-retransmit", Doc: "a SYN whose SYN-ACK the peer never ACKs: when the SYN-ACK comes again",
			RFC: "RFC 6298 2.1 (initial RTO 1 s), 5.5", run: probeSynAckRetransmit},
		{Name: "rto-backoff", Doc: "data whose echo the peer never ACKs: how the intervals between retransmissions grow",
			RFC: "RFC 6298 5.5 (double the RTO), RFC 8985 (TLP)", run: probeRTOBackoff},
	}
}

// answer summarizes what came back.
type answer struct {
	rst, ack, data, fin bool
	payload             []byte
}

func (c *conn) answer(d time.Duration) answer {
	var a answer
	for _, s := range c.collect(d) {
		switch {
		case s.Flags&header.TCPFlagRst != 0:
			a.rst = true
		case len(s.Payload) > 0:
			a.data = true
			a.payload = append(a.payload, s.Payload...)
		case s.Flags&header.TCPFlagFin != 0:
			a.fin = true
		case s.Flags&header.TCPFlagAck != 0:
			a.ack = true
		}
	}
	return a
}

// dropped words what came back for data that should have been dropped.
func (a answer) dropped() string {
	switch {
	case a.rst:
		return "RST"
	case a.data:
		return "echoed"
	case a.ack:
		return "ACK, data dropped"
	default:
		return "no answer, data dropped"
	}
}

func optionNames(opts []byte) []string {
	var names []string
	for i := 0; i < len(opts); {
		k := opts[i]
		if k == header.TCPOptionEOL {
			break
		}
		if k == header.TCPOptionNOP {
			i++
			continue
		}
		if i+1 >= len(opts) || opts[i+1] < 2 {
			break
		}
		l := int(opts[i+1])
		switch k {
		case header.TCPOptionMSS:
			if l == 4 && i+4 <= len(opts) {
				names = append(names, fmt.Sprintf("MSS %d", uint16(opts[i+2])<<8|uint16(opts[i+3])))
			}
		case header.TCPOptionWS:
			names = append(names, "wscale")
		case header.TCPOptionSACKPermitted:
			names = append(names, "SACK-perm")
		case header.TCPOptionTS:
			names = append(names, "TS")
		default:
			names = append(names, fmt.Sprintf("option %d", k))
		}
		i += l
	}
	// A canonical order: stacks order options differently on the wire.
	order := func(n string) int {
		for i, p := range []string{"MSS", "SACK-perm", "TS", "wscale"} {
			if strings.HasPrefix(n, p) {
				return i
			}
		}
		return 9
	}
	for i := 1; i < len(names); i++ {
		for j := i; j > 0 && order(names[j]) < order(names[j-1]); j-- {
			names[j], names[j-1] = names[j-1], names[j]
		}
	}
	return names
}

func probeSynOptions(e *env, c *conn) (string, error) {
	if err := c.dial(fullOpts); err != nil {
		return "", err
	}
	got := strings.Join(optionNames(c.synAck.Options), ", ")
	if so := header.ParseSynOptions(c.synAck.Options, true); so.TS && so.TSEcr != 1_000_000 {
		got += " (TSecr does not echo our TSval)"
	}
	return got, nil
}

func probeSynWindow(e *env, c *conn) (string, error) {
	if err := c.dial(fullOpts); err != nil {
		return "", err
	}
	return fmt.Sprintf("window %d, wscale %d", c.synAck.Window, c.srvWS), nil
}

// echoSize sends n bytes in one segment and reads the echo back.
func echoSize(c *conn, n int) (string, error) {
	if err := c.send(header.TCPFlagAck|header.TCPFlagPsh, bytes.Repeat([]byte("m"), n)); err != nil {
		return "", err
	}
	data, largest, _ := c.readEcho(n, false, 2*time.Second)
	if len(data) < n {
		return fmt.Sprintf("echoed %d of %d bytes within 2s", len(data), n), nil
	}
	return fmt.Sprintf("largest echo segment %d", largest), nil
}

func probeSynNoOptions(e *env, c *conn) (string, error) {
	if err := c.dial(synOpts{ws: -1}); err != nil {
		return "", err
	}
	opts := strings.Join(optionNames(c.synAck.Options), ", ")
	if opts == "" {
		opts = "none"
	}
	echo, err := echoSize(c, 1200)
	return "SYN-ACK: " + opts + "; " + echo, err
}

func probeMSS536(e *env, c *conn) (string, error) {
	if err := c.dial(synOpts{mss: 536, ws: 7, sack: true}); err != nil {
		return "", err
	}
	return echoSize(c, 1200)
}

func probeOutOfWindowData(e *env, c *conn) (string, error) {
	if err := c.dial(fullOpts); err != nil {
		return "", err
	}
	s := c.seg(header.TCPFlagAck|header.TCPFlagPsh, []byte("outside"))
	s.Seq = c.sndNxt + c.srvWnd + 1000
	if err := c.write(s); err != nil {
		return "", err
	}
	return c.answer(quiet).dropped(), nil
}

// probeRST sends a RST at RCV.NXT+off (off < 0: beyond the window), then
// checks whether the connection is still there.
func probeRST(off int) func(e *env, c *conn) (string, error) {
	return func(e *env, c *conn) (string, error) {
		if err := c.dial(fullOpts); err != nil {
			return "", err
		}
		s := c.seg(header.TCPFlagRst|header.TCPFlagAck, nil)
		if off >= 0 {
			s.Seq = c.sndNxt + uint32(off)
		} else {
			s.Seq = c.sndNxt + c.srvWnd + 1000
		}
		if err := c.write(s); err != nil {
			return "", err
		}
		return afterward(c, c.answer(quiet)), nil
	}
}

// afterward words the answer to a segment that should not have changed the
// connection, and whether the connection is still there.
func afterward(c *conn, a answer) string {
	if a.rst {
		return "RST"
	}
	alive := c.alive()
	switch {
	case a.ack && alive:
		return "challenge ACK"
	case !a.ack && !a.data && alive:
		return "ignored"
	case !a.ack && !a.data && !alive:
		return "reset"
	case a.ack && !alive:
		return "ACK, then reset"
	default:
		return fmt.Sprintf("data came back (alive %v)", alive)
	}
}

func probeSynEstablished(e *env, c *conn) (string, error) {
	if err := c.dial(fullOpts); err != nil {
		return "", err
	}
	s := c.seg(header.TCPFlagSyn, nil)
	s.Seq = c.sndNxt + 50
	s.Ack = 0
	if err := c.write(s); err != nil {
		return "", err
	}
	return afterward(c, c.answer(quiet)), nil
}

// sendDropped sends data built by mod and judges the answer; the data is
// taken back from our position unless the server echoed it.
func sendDropped(c *conn, payload string, mod func(s *rawtcp.Segment)) (string, error) {
	s := c.seg(header.TCPFlagAck|header.TCPFlagPsh, []byte(payload))
	mod(&s)
	if err := c.write(s); err != nil {
		return "", err
	}
	a := c.answer(quiet)
	if a.data {
		c.sndNxt += uint32(len(payload))
		c.rcvNxt += uint32(len(a.payload))
	}
	return a.dropped(), nil
}

func probeAckAbove(e *env, c *conn) (string, error) {
	if err := c.dial(fullOpts); err != nil {
		return "", err
	}
	return sendDropped(c, "above", func(s *rawtcp.Segment) { s.Ack = c.rcvNxt + 1000 })
}

func probeOldAck(e *env, c *conn) (string, error) {
	if err := c.dial(fullOpts); err != nil {
		return "", err
	}
	maxWnd := uint32(c.win) << max(c.ourWS, 0)
	return sendDropped(c, "oldack", func(s *rawtcp.Segment) { s.Ack = c.rcvNxt - maxWnd - 1000 })
}

func probePAWS(e *env, c *conn) (string, error) {
	if err := c.dial(fullOpts); err != nil {
		return "", err
	}
	if !c.ts {
		return "no timestamps in the SYN-ACK", nil
	}
	if err := c.send(header.TCPFlagAck|header.TCPFlagPsh, []byte("fresh")); err != nil {
		return "", err
	}
	if data, _, _ := c.readEcho(5, false, time.Second); string(data) != "FRESH" {
		return fmt.Sprintf("first segment not echoed (%q)", data), nil
	}
	return sendDropped(c, "stale", func(s *rawtcp.Segment) {
		// TSval 1000, far older than TS.Recent (about 1,000,000).
		header.EncodeTSOption(1000, c.tsEcr, s.Options[2:])
	})
}

func probeSACK(e *env, c *conn) (string, error) {
	if err := c.dial(fullOpts); err != nil {
		return "", err
	}
	base := c.sndNxt
	second := c.seg(header.TCPFlagAck|header.TCPFlagPsh, bytes.Repeat([]byte("b"), 100))
	second.Seq = base + 100
	if err := c.write(second); err != nil {
		return "", err
	}
	var parts []string
	segs := c.collect(quiet)
	switch {
	case len(segs) == 0:
		parts = append(parts, "no dup ACK")
	default:
		s := segs[0]
		o := header.ParseTCPOptions(s.Options)
		w := "dup ACK"
		if s.Ack != base {
			w = fmt.Sprintf("ACK %d", int32(s.Ack-base))
		}
		if len(o.SACKBlocks) == 0 {
			w += ", no SACK"
		}
		for _, b := range o.SACKBlocks {
			w += fmt.Sprintf(", SACK %d-%d", int32(uint32(b.Start)-base), int32(uint32(b.End)-base))
		}
		parts = append(parts, w)
	}
	if err := c.send(header.TCPFlagAck|header.TCPFlagPsh, bytes.Repeat([]byte("a"), 100)); err != nil {
		return "", err
	}
	c.sndNxt = base + 200
	data, _, _ := c.readEcho(200, false, time.Second)
	parts = append(parts, fmt.Sprintf("hole filled: echoed %d", len(data)))
	return strings.Join(parts, "; "), nil
}

func probeReorderedWindow(e *env, c *conn) (string, error) {
	if err := c.dial(fullOpts); err != nil {
		return "", err
	}
	// The newer segment: bytes 100-200, window open. The older: bytes
	// 0-100, sent before it with the window shut, reordered behind it,
	// with the same TSval (sent in the same tick, so PAWS passes it).
	base := c.sndNxt
	newer := c.seg(header.TCPFlagAck|header.TCPFlagPsh, bytes.Repeat([]byte("b"), 100))
	newer.Seq = base + 100
	older := newer
	older.Seq = base
	older.Window = 0
	older.Payload = bytes.Repeat([]byte("a"), 100)
	if err := c.write(newer); err != nil {
		return "", err
	}
	c.collect(quiet) // the duplicate ACK of the out-of-order data
	if err := c.write(older); err != nil {
		return "", err
	}
	c.sndNxt = base + 200
	// Not acknowledged: an ACK would open the window whatever the server
	// took (a server that took the window 0 probes it within an RTO, and
	// echoes once the ACK of its probe comes).
	echoed, probed := 0, false
	for _, s := range c.collect(quiet) {
		switch {
		case s.Flags&header.TCPFlagRst != 0:
			return "RST", nil
		case s.Seq == c.rcvNxt+uint32(echoed) && len(s.Payload) > 0:
			echoed += len(s.Payload)
		case s.Seq == c.rcvNxt-1:
			probed = true
		}
	}
	switch {
	case echoed == 200:
		return "newer window kept: echoed 200", nil
	case probed:
		return fmt.Sprintf("older window 0 taken: zero-window probe, %d of 200 bytes echoed", echoed), nil
	default:
		return fmt.Sprintf("%d of 200 bytes echoed within %v", echoed, quiet), nil
	}
}

// zeroWindow is what one zero-window conversation showed.
type zeroWindow struct {
	form, backoff string
}

func zeroWindowRun(e *env, c *conn) (*zeroWindow, error) {
	v, err := e.once(c.stack+"/zero-window", func() (any, error) {
		if err := c.dial(fullOpts); err != nil {
			return nil, err
		}
		c.win = 0
		if err := c.send(header.TCPFlagAck|header.TCPFlagPsh, bytes.Repeat([]byte("z"), 100)); err != nil {
			return nil, err
		}
		// Probes come at the RTO (200 ms minimum) and back off: four of
		// them within 3.4 s if the interval doubles.
		var probes []timed
		deadline := time.Now().Add(3400 * time.Millisecond)
		for len(probes) < 4 {
			s, ok := c.recv(time.Until(deadline))
			if !ok {
				break
			}
			if s.Flags&header.TCPFlagRst != 0 {
				return &zeroWindow{form: "RST", backoff: "RST"}, nil
			}
			if s.Seq == c.rcvNxt && len(s.Payload) == 0 {
				continue // the ACK of our data
			}
			probes = append(probes, s)
		}
		z := &zeroWindow{}
		if len(probes) == 0 {
			z.form, z.backoff = "no probe within 3.4s", "no probe within 3.4s"
			return z, nil
		}
		forms := map[string]bool{}
		for _, p := range probes {
			var f string
			switch int32(p.Seq - c.rcvNxt) {
			case -1:
				f = fmt.Sprintf("%d-byte probes at SND.UNA-1", len(p.Payload))
			case 0:
				f = fmt.Sprintf("%d-byte probes of new data", len(p.Payload))
			default:
				f = fmt.Sprintf("probes at SND.UNA%+d", int32(p.Seq-c.rcvNxt))
			}
			forms[f] = true
		}
		for f := range forms {
			if z.form != "" {
				z.form += " / "
			}
			z.form += f
		}
		z.backoff = intervals(probes)
		// Open the window: the echo must follow.
		c.win = 65535
		if err := c.ack(); err != nil {
			return nil, err
		}
		data, _, _ := c.readEcho(100, false, 2*time.Second)
		if bytes.Equal(data, bytes.Repeat([]byte("Z"), 100)) {
			z.form += "; echoed once the window opens"
		} else {
			z.form += fmt.Sprintf("; %d of 100 bytes echoed once the window opens", len(data))
		}
		return z, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*zeroWindow), nil
}

// intervals words how the gaps between segments grow: ×1, ×2... for each
// gap against the one before, from the first three gaps.
func intervals(segs []timed) string {
	if len(segs) < 3 {
		return fmt.Sprintf("only %d segments", len(segs))
	}
	var gaps []time.Duration
	for i := 1; i < len(segs) && len(gaps) < 3; i++ {
		gaps = append(gaps, segs[i].at.Sub(segs[i-1].at))
	}
	var w []string
	for i := 1; i < len(gaps); i++ {
		r := float64(gaps[i]) / float64(gaps[i-1])
		switch {
		case r < 0.7:
			w = append(w, "shorter")
		case r < 1.4:
			w = append(w, "×1")
		case r < 2.8:
			w = append(w, "×2")
		default:
			w = append(w, fmt.Sprintf("×%.0f", r))
		}
	}
	return "intervals " + strings.Join(w, " ")
}

func probeZeroWindowForm(e *env, c *conn) (string, error) {
	z, err := zeroWindowRun(e, c)
	if err != nil {
		return "", err
	}
	return z.form, nil
}

func probeZeroWindowBackoff(e *env, c *conn) (string, error) {
	z, err := zeroWindowRun(e, c)
	if err != nil {
		return "", err
	}
	return z.backoff, nil
}

func probeHalfClose(e *env, c *conn) (string, error) {
	if err := c.dial(fullOpts); err != nil {
		return "", err
	}
	if err := c.send(header.TCPFlagAck|header.TCPFlagPsh|header.TCPFlagFin, []byte("bye")); err != nil {
		return "", err
	}
	data, _, fin := c.readEcho(3, true, time.Second)
	switch {
	case c.reset:
		return "RST", nil
	case string(data) == "BYE" && fin:
		c.reset = true // nothing left to clean up: both FINs went
		return "echoed, then FIN", nil
	case string(data) == "BYE":
		return "echoed, no FIN within 1s", nil
	case fin:
		return fmt.Sprintf("FIN, echo %q", data), nil
	default:
		return "no echo, no FIN within 1s", nil
	}
}

func probePassiveClose(e *env, c *conn) (string, error) {
	if err := c.dial(fullOpts); err != nil {
		return "", err
	}
	if err := c.send(header.TCPFlagAck|header.TCPFlagPsh, []byte("bye")); err != nil {
		return "", err
	}
	if data, _, _ := c.readEcho(3, false, time.Second); string(data) != "BYE" {
		return fmt.Sprintf("no echo within 1s (got %q)", data), nil
	}
	if err := c.send(header.TCPFlagAck|header.TCPFlagFin, nil); err != nil {
		return "", err
	}
	first, ok := c.recv(time.Second)
	switch {
	case !ok:
		return "no answer to our FIN within 1s", nil
	case first.Flags&header.TCPFlagRst != 0:
		return "RST", nil
	case first.Ack != c.sndNxt:
		return fmt.Sprintf("first answer acknowledges %d, not our FIN", first.Ack-c.iss), nil
	}
	fin := first
	if first.Flags&header.TCPFlagFin == 0 {
		if fin, ok = c.recv(time.Second); !ok || fin.Flags&header.TCPFlagFin == 0 {
			return "ACK, no FIN within 1s", nil
		}
	}
	c.rcvNxt = fin.Seq + uint32(len(fin.Payload)) + 1
	c.ack()
	c.reset = true // nothing left to clean up: both FINs went
	if fin.Seq == first.Seq && first.Flags&header.TCPFlagFin != 0 {
		return "FIN and ACK in one segment", nil
	}
	return fmt.Sprintf("ACK, then FIN %v later", fin.at.Sub(first.at).Round(10*time.Microsecond)), nil
}

func probeBadChecksum(e *env, c *conn) (string, error) {
	if err := c.dial(fullOpts); err != nil {
		return "", err
	}
	s := c.seg(header.TCPFlagAck|header.TCPFlagPsh, []byte("bad"))
	pkt := s.Marshal()
	pkt[header.IPv4MinimumSize+header.TCPChecksumOffset] ^= 0x5a
	if err := c.writeRaw(s, pkt); err != nil {
		return "", err
	}
	a := c.answer(quiet)
	switch {
	case a.rst:
		return "RST", nil
	case a.data:
		return "echoed", nil
	case a.ack:
		return "ACK, data dropped", nil
	}
	// Ignored: the same data with the right checksum must be echoed.
	if err := c.send(header.TCPFlagAck|header.TCPFlagPsh, []byte("bad")); err != nil {
		return "", err
	}
	if data, _, _ := c.readEcho(3, false, time.Second); string(data) != "BAD" {
		return fmt.Sprintf("ignored, and the good copy was not echoed (%q)", data), nil
	}
	return "ignored", nil
}

func probeClosedPort(e *env, c *conn) (string, error) {
	c.remote = netip.AddrPortFrom(c.remote.Addr(), 9) // discard: nobody listens
	c.sndNxt = c.iss
	syn := c.seg(header.TCPFlagSyn, nil)
	syn.Seq, syn.Ack = c.iss, 0
	if err := c.write(syn); err != nil {
		return "", err
	}
	s, ok := c.recv(quiet)
	switch {
	case !ok:
		return "no answer", nil
	case s.Flags&header.TCPFlagRst != 0 && s.Flags&header.TCPFlagAck != 0 && s.Ack == c.iss+1:
		return "RST", nil
	case s.Flags&header.TCPFlagRst != 0:
		return fmt.Sprintf("RST [%s] ack %d", flagString(s.Flags), int32(s.Ack-c.iss)), nil
	default:
		return fmt.Sprintf("[%s]", flagString(s.Flags)), nil
	}
}

// intoTimeWait brings the server into TIME-WAIT: data, its echo, the
// server's FIN after --idle-close, our FIN and its ACK. It returns what
// went otherwise, or "".
func intoTimeWait(c *conn) (string, error) {
	if err := c.dial(fullOpts); err != nil {
		return "", err
	}
	if err := c.send(header.TCPFlagAck|header.TCPFlagPsh, []byte("tw")); err != nil {
		return "", err
	}
	// The echo, then the server's FIN after 300ms idle.
	data, _, fin := c.readEcho(2, true, 3*time.Second)
	if string(data) != "TW" || !fin {
		return fmt.Sprintf("server did not echo and close (echo %q, FIN %v)", data, fin), nil
	}
	if err := c.send(header.TCPFlagAck|header.TCPFlagFin, nil); err != nil {
		return "", err
	}
	if s, ok := c.recv(time.Second); !ok || s.Ack != c.sndNxt {
		return "our FIN not ACKed within 1s", nil
	}
	return "", nil
}

// synAgain sends a new SYN on the same ports with a sequence number below
// the old connection's and a timestamp tsDelta from the last one we sent,
// and words the answer.
func synAgain(c *conn, tsDelta int32) (string, error) {
	old := c.tsVal
	c.iss = c.sndNxt - 100_000
	c.tsVal = uint32(int32(old) + tsDelta)
	syn := rawtcp.Segment{Src: c.local, Dst: c.remote, Seq: c.iss, Flags: header.TCPFlagSyn, Window: c.win, Options: fullOpts.encode(c.tsVal)}
	c.tsVal = max(c.tsVal, old)
	if err := c.write(syn); err != nil {
		return "", err
	}
	c.reset = false
	s, ok := c.recv(time.Second)
	switch {
	case !ok:
		c.reset = true
		return "no answer within 1s", nil
	case s.Flags == header.TCPFlagSyn|header.TCPFlagAck && s.Ack == c.iss+1:
		c.irs, c.rcvNxt, c.sndNxt, c.lastAck, c.synced = s.Seq, s.Seq+1, c.iss+1, s.Ack, true
		return "SYN-ACK: new connection", nil
	case s.Flags&header.TCPFlagRst != 0:
		return "RST", nil
	case s.Flags == header.TCPFlagAck:
		c.reset = true
		return "ACK: TIME-WAIT kept", nil
	default:
		c.reset = true
		return fmt.Sprintf("[%s]", flagString(s.Flags)), nil
	}
}

func probeTimeWait(e *env, c *conn) (string, error) {
	if got, err := intoTimeWait(c); got != "" || err != nil {
		return got, err
	}
	// A newer timestamp but a lower sequence number: only the timestamp
	// can tell the SYN is new (RFC 6191).
	return synAgain(c, 1000)
}

func probeRSTInTimeWait(e *env, c *conn) (string, error) {
	if got, err := intoTimeWait(c); got != "" || err != nil {
		return got, err
	}
	rst := c.seg(header.TCPFlagRst|header.TCPFlagAck, nil)
	if err := c.write(rst); err != nil {
		return "", err
	}
	if a := c.answer(quiet); a.rst || a.ack || a.data {
		return "the RST was answered", nil
	}
	// Is the TIME-WAIT still there? A SYN with an older timestamp and a
	// lower sequence number is accepted only if it is gone.
	got, err := synAgain(c, -500)
	switch {
	case err != nil:
		return "", err
	case got == "SYN-ACK: new connection":
		return "TIME-WAIT closed (a SYN with an older timestamp is accepted)", nil
	case got == "no answer within 1s" || got == "ACK: TIME-WAIT kept":
		return "TIME-WAIT kept (a SYN with an older timestamp is not accepted)", nil
	default:
		return "then the SYN: " + got, nil
	}
}

func probeSynAckRetransmit(e *env, c *conn) (string, error) {
	syn := rawtcp.Segment{Src: c.local, Dst: c.remote, Seq: c.iss, Flags: header.TCPFlagSyn, Window: 65535, Options: fullOpts.encode(c.tsVal)}
	if err := c.write(syn); err != nil {
		return "", err
	}
	// Never complete the handshake: the SYN-ACK comes again after the
	// initial RTO (1 s) and again after twice that.
	var synAcks []timed
	deadline := time.Now().Add(3400 * time.Millisecond)
	for len(synAcks) < 3 {
		s, ok := c.recv(time.Until(deadline))
		if !ok {
			break
		}
		if s.Flags&header.TCPFlagRst != 0 {
			return "RST", nil
		}
		if s.Flags == header.TCPFlagSyn|header.TCPFlagAck && s.Ack == c.iss+1 {
			synAcks = append(synAcks, s)
		}
	}
	if len(synAcks) == 0 {
		return "no SYN-ACK", nil
	}
	c.irs, c.rcvNxt, c.sndNxt, c.lastAck, c.synced = synAcks[0].Seq, synAcks[0].Seq+1, c.iss+1, c.iss+1, true
	if len(synAcks) == 1 {
		return "SYN-ACK not sent again within 3.4s", nil
	}
	got := "SYN-ACK again after " + bucket(synAcks[1].at.Sub(synAcks[0].at))
	if len(synAcks) == 3 {
		got += ", then after " + bucket(synAcks[2].at.Sub(synAcks[1].at))
	}
	return got, nil
}

func probeRTOBackoff(e *env, c *conn) (string, error) {
	if err := c.dial(fullOpts); err != nil {
		return "", err
	}
	if err := c.send(header.TCPFlagAck|header.TCPFlagPsh, []byte("rto")); err != nil {
		return "", err
	}
	// Never ACK the echo: collect its transmissions (the first and up to
	// four more: TLP, RTOs at 200 ms, 400, 800 ms...).
	var sends []timed
	echoSeq := c.rcvNxt
	deadline := time.Now().Add(3500 * time.Millisecond)
	for len(sends) < 5 {
		s, ok := c.recv(time.Until(deadline))
		if !ok {
			break
		}
		if s.Flags&header.TCPFlagRst != 0 {
			return "RST", nil
		}
		if len(s.Payload) > 0 && s.Seq == echoSeq {
			sends = append(sends, s)
		}
	}
	if len(sends) < 2 {
		return fmt.Sprintf("%d transmissions of the echo within 3.5s", len(sends)), nil
	}
	// The first gap may be a tail loss probe; the RTO doubles after it.
	return fmt.Sprintf("first retransmission after %s; then %s", bucket(sends[1].at.Sub(sends[0].at)), intervals(sends[1:])), nil
}

// bucket words a delay coarsely enough to be the same from run to run.
func bucket(d time.Duration) string {
	switch {
	case d < 100*time.Millisecond:
		return "<100ms"
	case d < 300*time.Millisecond:
		return "~200ms"
	case d < 600*time.Millisecond:
		return "~400ms"
	case d < 1500*time.Millisecond:
		return "~1s"
	case d < 3*time.Second:
		return "~2s"
	default:
		return ">3s"
	}
}

func probeDuplicate(e *env, c *conn) (string, error) {
	if err := c.dial(fullOpts); err != nil {
		return "", err
	}
	base := c.sndNxt
	if err := c.send(header.TCPFlagAck|header.TCPFlagPsh, []byte("duplicated")); err != nil {
		return "", err
	}
	if data, _, _ := c.readEcho(10, false, time.Second); string(data) != "DUPLICATED" {
		return fmt.Sprintf("first copy not echoed (%q)", data), nil
	}
	dup := c.seg(header.TCPFlagAck|header.TCPFlagPsh, []byte("duplicated"))
	dup.Seq = base
	if err := c.write(dup); err != nil {
		return "", err
	}
	for _, s := range c.collect(quiet) {
		switch {
		case s.Flags&header.TCPFlagRst != 0:
			return "RST", nil
		case len(s.Payload) > 0:
			return "echoed again", nil
		case s.Flags&header.TCPFlagAck == 0:
			continue
		}
		o := header.ParseTCPOptions(s.Options)
		if len(o.SACKBlocks) == 0 {
			return "ACK, no SACK block", nil
		}
		b := o.SACKBlocks[0]
		w := fmt.Sprintf("ACK, SACK %d-%d", int32(uint32(b.Start)-base), int32(uint32(b.End)-base))
		if int32(uint32(b.End)-s.Ack) <= 0 {
			w = fmt.Sprintf("ACK, D-SACK %d-%d", int32(uint32(b.Start)-base), int32(uint32(b.End)-base))
		}
		return w, nil
	}
	return "no answer", nil
}

func probeUrgent(e *env, c *conn) (string, error) {
	if err := c.dial(fullOpts); err != nil {
		return "", err
	}
	s := c.seg(header.TCPFlagAck|header.TCPFlagPsh|header.TCPFlagUrg, []byte("urgent"))
	pkt := s.Marshal()
	// The urgent pointer at the end of the data: its last byte is urgent
	// (RFC 6093 2, as Linux and BSD read it).
	setUrgent(pkt, uint16(len(s.Payload)))
	if err := c.writeRaw(s, pkt); err != nil {
		return "", err
	}
	c.sndNxt += uint32(len(s.Payload))
	data, _, _ := c.readEcho(6, false, time.Second)
	switch string(data) {
	case "URGENT":
		return "all 6 bytes echoed (urgent byte inline)", nil
	case "URGEN":
		return "5 bytes echoed (urgent byte taken out of the stream)", nil
	default:
		return fmt.Sprintf("echoed %q", data), nil
	}
}
