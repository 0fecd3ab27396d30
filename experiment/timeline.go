package experiment

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tcp-upper/tcp-upper/lab"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
	"github.com/tcp-upper/tcp-upper/netstack/pcap"
	"github.com/tcp-upper/tcp-upper/netstack/trace"
)

// Entry is one line of timeline.jsonl: a segment on the wire, an event a
// stack reported, or a fault the fault layer injected, merged by time
// with the others of its connection.
type Entry struct {
	Time time.Time `json:"time"`
	// Source is "wire" (a segment, as the capture holds it), "stack" (an
	// event of a stack's, with its numbers at that instant) or "fault"
	// (a fault injected on the wire).
	Source string `json:"source"`
	// Stack and Host say whose view it is: "netstack" in "apple" for our
	// server's stack (its events and its capture). Another stack's events
	// (the kernel client's, "kernel" in "ant") merge in with their own.
	Stack string `json:"stack,omitempty"`
	Host  string `json:"host,omitempty"`
	// Local and Remote name the connection from Host's side.
	Local  netip.AddrPort `json:"local"`
	Remote netip.AddrPort `json:"remote"`
	// Dir is "in" or "out" for a segment, as Host's stack received or
	// sent it.
	Dir string `json:"dir,omitempty"`
	// Segment is tcpdump's line for the segment, without its time.
	Segment string `json:"segment,omitempty"`
	// Mark is what the fault layer did to the segment (the capture's
	// packet comment): "dropped by rule 1: out ack drop count=1".
	Mark string `json:"mark,omitempty"`
	// Event is the stack's event or the fault's (stack and fault entries).
	Event *inspect.Event `json:"event,omitempty"`
	// flags are the segment's TCP flags (wire entries).
	flags header.TCPFlags
}

// timeline merges the capture's segments and the stack's events (faults
// included) of our server's stack, in time order; segments that are not
// TCP/IPv4 are left out.
func timeline(capture string, evs []inspect.Event) ([]Entry, error) {
	pkts, err := pcap.ReadFile(capture)
	if err != nil {
		return nil, err
	}
	var out []Entry
	pr := trace.NewPrinter()
	ours := lab.ServerAddr.Addr()
	for _, p := range pkts {
		b := p.Data
		if len(b) < header.IPv4MinimumSize || header.IPVersion(b) != header.IPv4Version {
			continue
		}
		ip := header.IPv4(b)
		hl := int(ip.HeaderLength())
		if ip.TransportProtocol() != header.TCPProtocolNumber || len(b) < hl+header.TCPMinimumSize {
			continue
		}
		tcp := header.TCP(b[hl:])
		src := netip.AddrPortFrom(netip.AddrFrom4(ip.SourceAddress().As4()), tcp.SourcePort())
		dst := netip.AddrPortFrom(netip.AddrFrom4(ip.DestinationAddress().As4()), tcp.DestinationPort())
		e := Entry{Time: p.Time, Source: "wire", Stack: "netstack", Host: lab.Apple, Local: dst, Remote: src, Dir: "in", Mark: strings.Join(p.Comments, "; "), flags: tcp.Flags()}
		if src.Addr() == ours {
			e.Local, e.Remote, e.Dir = src, dst, "out"
		}
		line := string(pr.AppendFormat(nil, p.Time, b))
		_, e.Segment, _ = strings.Cut(line, " ")
		out = append(out, e)
	}
	for i := range evs {
		ev := &evs[i]
		src := "stack"
		if ev.Kind == inspect.KindFault {
			src = "fault"
		}
		st, host := whose(ev)
		out = append(out, Entry{Time: ev.Time, Source: src, Stack: st, Host: host, Local: ev.Conn.Local, Remote: ev.Conn.Remote, Event: ev})
	}
	// A segment and the event it caused can share a microsecond: the
	// segment first.
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Time.Equal(out[j].Time) {
			return out[i].Time.Before(out[j].Time)
		}
		return out[i].Source == "wire" && out[j].Source != "wire"
	})
	return out, nil
}

// whose says which stack, in which host, reported ev: what the event says
// (the kernel client's, from its tracepoints, say ant/kernel), else our
// server stack in apple.
func whose(ev *inspect.Event) (stack, host string) {
	stack, host = ev.Stack, ev.Host
	if stack == "" {
		stack = inspect.StackNetstack
	}
	if host == "" {
		host = lab.Apple
	}
	return stack, host
}

func writeTimeline(w io.Writer, entries []Entry) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // tcpdump's ">" stays readable
	for i := range entries {
		if err := enc.Encode(&entries[i]); err != nil {
			return err
		}
	}
	return nil
}

// summaryLimit is how many timeline lines summary.md shows in full; past
// it, data and ACK segments more than 3 lines away from an event or fault
// are left out (timeline.jsonl has them).
const summaryLimit = 200

// summaryTimeline writes the timeline for summary.md, one line per entry,
// seconds from start, one block per connection.
func summaryTimeline(b *strings.Builder, entries []Entry, start time.Time) {
	type key struct{ local, remote netip.AddrPort }
	var order []key
	byConn := map[key][]Entry{}
	for _, e := range entries {
		k := key{e.Local, e.Remote}
		if e.Stack == inspect.StackKernel {
			k = key{e.Remote, e.Local} // the kernel client's view: turned to ours
		}
		if _, ok := byConn[k]; !ok {
			order = append(order, k)
		}
		byConn[k] = append(byConn[k], e)
	}
	for _, k := range order {
		es := byConn[k]
		fmt.Fprintf(b, "\nConnection %s → %s:\n\n```\n", k.remote, k.local)
		left := 0
		for i, e := range es {
			if len(es) > summaryLimit && e.plain() && !nearEvent(es, i, 3) {
				left++
				continue
			}
			fmt.Fprintf(b, "%8.3f %s\n", e.Time.Sub(start).Seconds(), e.text())
		}
		b.WriteString("```\n")
		if left > 0 {
			fmt.Fprintf(b, "\n(%d data and ACK segments away from any event left out here; timeline.jsonl and capture.pcap have every one)\n", left)
		}
	}
}

// plain is a data or ACK segment the fault layer left alone.
func (e *Entry) plain() bool {
	return e.Source == "wire" && e.Mark == "" && e.flags&(header.TCPFlagSyn|header.TCPFlagFin|header.TCPFlagRst) == 0
}

// nearEvent reports whether an event or fault is within n entries of
// es[i]: the segments around it show what led to it and what followed.
func nearEvent(es []Entry, i, n int) bool {
	for j := max(0, i-n); j <= min(len(es)-1, i+n); j++ {
		if es[j].Source != "wire" {
			return true
		}
	}
	return false
}

// text is the entry as one line: who, what.
func (e *Entry) text() string {
	switch e.Source {
	case "wire":
		s := fmt.Sprintf("%-5s %-3s %s", e.Host, e.Dir, e.Segment)
		if e.Mark != "" {
			s += "   <- " + e.Mark
		}
		return s
	case "fault":
		return fmt.Sprintf("%-5s !!! %s", e.Host, e.Event.Cause)
	}
	_, rest, _ := strings.Cut(e.Event.Text(), " ") // drop the clock time
	if who := e.Event.Who(); who != "" {
		rest = strings.TrimPrefix(rest, who+" ") // the host is in its column
	}
	if e.Stack == inspect.StackKernel {
		return fmt.Sprintf("%-5s  *  kernel: %s", e.Host, rest)
	}
	_, rest, _ = strings.Cut(rest, " ") // and the peer: the block names it
	return fmt.Sprintf("%-5s  *  %s", e.Host, rest)
}
