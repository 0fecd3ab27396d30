package main

import (
	"bytes"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/internal/kevents"
	"github.com/tcp-upper/tcp-upper/lab"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
	"github.com/tcp-upper/tcp-upper/viz"
)

// narrator tells the demo's story from the server stack's own output: the
// segments its trace layer printed (tcpdump's format), a note on what each
// one does, and the connection's state changes from the tracker; and, if
// kernel is set, the kernel client's state changes from its tracepoints.
// It collects them as they come and prints them in time order at each
// checkpoint.
type narrator struct {
	d    *demo
	host string
	st   *netstack.Stack
	sub  *inspect.Subscription
	// kernel, if set, is the kernel client's side (in ant), from its
	// tracepoints: its events are told in time order with ours.
	kernel *kevents.Stream

	mu      sync.Mutex
	partial []byte
	lines   []string // trace lines not yet printed
	all     []string // every trace line, for comparing with tcpdump

	events  []inspect.Event // events not yet printed (the demo's goroutine only)
	printed []inspect.Event // the stacks' events printed so far (ours, the kernel client's), for the ladder

	ann annotator
}

// Write receives the trace layer's output (whole lines or pieces).
func (n *narrator) Write(p []byte) (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.partial = append(n.partial, p...)
	for {
		i := bytes.IndexByte(n.partial, '\n')
		if i < 0 {
			break
		}
		line := string(n.partial[:i])
		n.partial = n.partial[i+1:]
		n.lines = append(n.lines, line)
		n.all = append(n.all, line)
	}
	return len(p), nil
}

// traced returns every trace line so far.
func (n *narrator) traced() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.all...)
}

// take collects the events the subscription holds, without waiting.
func (n *narrator) take() {
	for {
		select {
		case ev, ok := <-n.sub.C():
			if !ok {
				return
			}
			n.events = append(n.events, ev)
		default:
			return
		}
	}
}

// await waits until the stack reports that the connection from remote
// went to state to, or for at most timeout; it reports whether it did.
func (n *narrator) await(remote string, to inspect.State, timeout time.Duration) bool {
	seen := func() bool {
		for _, ev := range n.events {
			if ev.Kind == inspect.KindState && ev.To == to && ev.Conn.Remote.String() == remote {
				return true
			}
		}
		return false
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for !seen() {
		select {
		case ev, ok := <-n.sub.C():
			if !ok {
				return seen()
			}
			n.events = append(n.events, ev)
		case <-deadline.C:
			n.st.Tracker().Sync()
			n.take()
			return seen()
		}
	}
	return true
}

// checkpoint prints what happened since the last one: segments with their
// notes, and state changes, in time order. The trace layer's Flush and the
// tracker's Sync are its barriers: everything the stack did before the
// call is printed.
func (n *narrator) checkpoint() {
	if tr := n.st.Trace(); tr != nil {
		tr.Flush()
	}
	n.st.Tracker().Sync()
	n.take()
	type item struct {
		at   string
		ev   bool
		text string
		host string // the kernel's events: ant
	}
	var items []item
	n.mu.Lock()
	for _, l := range n.lines {
		items = append(items, item{at: strings.SplitN(l, " ", 2)[0], text: l})
	}
	n.lines = n.lines[:0]
	n.mu.Unlock()
	for _, ev := range n.events {
		text := ev.Text()
		if rule, ok := viz.ExplainEvent(&ev); ok && n.d.explain && ev.Kind != inspect.KindFault {
			text += "\n      why: " + rule.String()
		}
		items = append(items, item{at: ev.Time.Format("15:04:05.000000"), ev: true, text: text})
		n.printed = append(n.printed, ev)
	}
	n.events = n.events[:0]
	if n.kernel != nil {
		n.kernel.Sync()
		for done := false; !done; {
			select {
			case ev, ok := <-n.kernel.C():
				if !ok {
					done = true
					break
				}
				text := ev.Text()
				if rule, ok := viz.ExplainEvent(&ev); ok && n.d.explain {
					text += "\n      why: " + rule.String()
				}
				items = append(items, item{at: ev.Time.Format("15:04:05.000000"), ev: true, text: text, host: lab.Ant})
				n.printed = append(n.printed, ev)
			default:
				done = true
			}
		}
	}
	// A segment comes before the state change it causes.
	sort.SliceStable(items, func(i, j int) bool {
		if items[i].at != items[j].at {
			return items[i].at < items[j].at
		}
		return !items[i].ev && items[j].ev
	})
	for _, it := range items {
		if it.ev && it.host != "" {
			n.d.printf(it.host, "  * %s", it.text)
			continue
		}
		if it.ev {
			n.d.printf(n.host, "  * %s", it.text)
			continue
		}
		if note := n.ann.note(it.text); note != "" {
			n.d.printf(n.host, "  # %s", note)
		}
		n.d.printf(n.host, "%s", it.text)
	}
}

// annotator explains segments of the uppercase service's connections, as
// printed by tcpdump, seen from the server.
type annotator struct {
	port uint16
	idle time.Duration

	synAcked  bool
	fins      int  // FINs seen on this connection
	clientFin bool // the client's FIN came first
	finAcked  bool // the first FIN was acknowledged on its own
	sent      []string
	replies   []string
}

// expect tells the annotator the payload of the next client line, so it
// can quote data segments.
func (a *annotator) expect(line string) {
	a.sent = append(a.sent, line)
	up := []byte(line)
	app.Upper(up)
	a.replies = append(a.replies, string(up))
}

var segRE = regexp.MustCompile(`^\S+ IP [\d.]+\.(\d+) > [\d.]+\.(\d+): Flags \[([^\]]*)\](?:, seq (\d+)(?::(\d+))?)?(?:, ack (\d+))?.*, length (\d+)`)

func (a *annotator) note(line string) string {
	m := segRE.FindStringSubmatch(line)
	if m == nil {
		return ""
	}
	dport, _ := strconv.Atoi(m[2])
	fromClient := uint16(dport) == a.port
	flags, seq, end, ack := m[3], m[4], m[5], m[6]
	length, _ := strconv.Atoi(m[7])
	who := "our"
	if fromClient {
		who = "the client's"
	}
	switch {
	case flags == "S":
		a.synAcked, a.fins, a.clientFin, a.finAcked = false, 0, false, false
		return fmt.Sprintf("handshake 1/3: the client's SYN. Its initial sequence number (ISN) is %s", seq)
	case flags == "S.":
		isn, _ := strconv.ParseUint(ack, 10, 32)
		return fmt.Sprintf("handshake 2/3: our SYN-ACK. Our ISN is %s; ack %s = the client's ISN %d + 1 (a SYN counts as one byte)", seq, ack, isn-1)
	case strings.Contains(flags, "F"):
		a.fins++
		switch {
		case a.fins == 1 && fromClient:
			a.clientFin = true
			return fmt.Sprintf("close 1/4: the client's FIN, seq %s: it has nothing more to send (Ctrl-D). It closes first", seq)
		case a.fins == 1:
			return fmt.Sprintf("close 1/4: our FIN, seq %s: the server closes first (the connection was idle %v). TIME-WAIT will be ours", seq, a.idle)
		case !a.finAcked:
			return fmt.Sprintf("close 2/4 and 3/4 in one segment: %s FIN, seq %s, which also ACKs the first one (ack %s)", who, seq, ack)
		default:
			return fmt.Sprintf("close 3/4: %s FIN, seq %s: this side is done too", who, seq)
		}
	case flags == "P." || length > 0:
		if fromClient {
			q := ""
			if len(a.sent) > 0 {
				q = fmt.Sprintf(" %q", a.sent[0])
				a.sent = a.sent[1:]
			}
			return fmt.Sprintf("data: the client's %d bytes%s, stream bytes %s to %d (seq counts from the ISN: tcpdump prints it relative)", length, q, seq, atoi(end)-1)
		}
		q := ""
		if len(a.replies) > 0 {
			q = fmt.Sprintf(" %q", a.replies[0])
			a.replies = a.replies[1:]
		}
		return fmt.Sprintf("data: our reply, %d bytes%s, the same length uppercased; it carries ack %s too", length, q, ack)
	case flags == ".":
		if !a.synAcked && fromClient {
			a.synAcked = true
			return "handshake 3/3: the client ACKs our SYN. Both sides are ESTABLISHED; from here tcpdump prints seq/ack relative to the ISNs"
		}
		switch a.fins {
		case 1:
			a.finAcked = true
			return fmt.Sprintf("close 2/4: %s ACK of that FIN (ack %s: the FIN counts as one byte)", who, ack)
		case 2:
			if a.clientFin {
				return fmt.Sprintf("close 4/4: the client's last ACK (ack %s). It closed first, so TIME-WAIT is on its side", ack)
			}
			return fmt.Sprintf("close 4/4: our last ACK (ack %s). We closed first: our connection is now in TIME-WAIT", ack)
		}
		return fmt.Sprintf("%s ACK: ack %s = the next byte expected; everything before it arrived", who, ack)
	}
	return ""
}

func atoi(s string) int {
	v, _ := strconv.Atoi(s)
	return v
}
