package viz

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/netstack/inspect"
)

// TestLeads: in the committed experiments with the kernel client's
// events, each of its state changes that precedes a segment of its own
// is paired with that segment and dated before our capture of it, and
// the ladder has no clocks note; the same session with the kernel's
// events dated 200 µs later (clocks that disagree) has the note, naming
// how far.
func TestLeads(t *testing.T) {
	for name, want := range map[string]string{
		"handshake": "SYN-SENT:SYN ESTABLISHED:ACK FIN-WAIT-1:FIN",
		"time-wait": "SYN-SENT:SYN ESTABLISHED:ACK LAST-ACK:FIN",
		"blackhole": "SYN-SENT:SYN ESTABLISHED:ACK FIN-WAIT-1:FIN",
	} {
		s := load(t, name)
		c := s.Conns[0]
		var got []string
		for _, l := range Leads(c) {
			got = append(got, l.Ev.To.String()+":"+flagName(l.Seg.Flags))
			t.Logf("%s: the kernel's %s, %v before our capture of its %s", name, l.Ev.To, l.By, flagName(l.Seg.Flags))
			if l.By <= 0 || l.By > 10*time.Millisecond {
				t.Errorf("%s: the kernel's %s is %v before our capture of its %s: want after 0, within 10ms", name, l.Ev.To, l.By, flagName(l.Seg.Flags))
			}
		}
		if g := strings.Join(got, " "); g != want {
			t.Errorf("%s: leads %q, want %q", name, g, want)
		}
		var b bytes.Buffer
		if err := Ladder(&b, s, LadderOptions{}); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(b.String(), "clocks:") {
			t.Errorf("%s: ladder has a clocks note:\n%s", name, b.String())
		}

		// The kernel's events 200µs late: every lead of the handshake is
		// shorter than that (the lab's are tens of µs).
		for i := range c.Events {
			if c.Events[i].Stack == inspect.StackKernel {
				c.Events[i].Time = c.Events[i].Time.Add(200 * time.Microsecond)
			}
		}
		b.Reset()
		if err := Ladder(&b, s, LadderOptions{}); err != nil {
			t.Fatal(err)
		}
		text := strings.Join(strings.Fields(b.String()), " ")
		if !strings.Contains(text, "clocks: ") || !strings.Contains(text, "dated after our capture of the segment they sent") {
			t.Errorf("%s: kernel events 200µs late, the ladder does not say so:\n%s", name, b.String())
		} else if name == "handshake" {
			t.Logf("%s, kernel events 200µs late: %s", name, text[strings.Index(text, "clocks: "):])
		}
	}
}
