package experiment

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/netstack/inspect"
	"github.com/tcp-upper/tcp-upper/netstack/pcap"
)

// segment builds an IPv4/TCP segment (no options, checksums zero).
func segment(src, dst netip.AddrPort, flags byte) []byte {
	b := make([]byte, 40)
	b[0], b[3], b[8], b[9] = 0x45, 40, 64, 6
	copy(b[12:16], src.Addr().AsSlice())
	copy(b[16:20], dst.Addr().AsSlice())
	b[20], b[21] = byte(src.Port()>>8), byte(src.Port())
	b[22], b[23] = byte(dst.Port()>>8), byte(dst.Port())
	b[27], b[32], b[33], b[35] = 1, 0x50, flags, 0xff
	return b
}

// TestTimelineMerges: the capture's segments (with their marks) and the
// stack's events and faults come out as one timeline in time order, a
// segment before the event it caused at the same instant, each entry
// naming its source, stack, host and connection; the JSON keeps tcpdump's
// text as it is.
func TestTimelineMerges(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "capture.pcap")
	w, err := pcap.Create(path, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	peer, us := netip.MustParseAddrPort("10.0.1.2:40000"), netip.MustParseAddrPort("10.0.2.2:9999")
	t0 := time.Unix(1700000000, 0)
	w.WritePacket(t0, segment(peer, us, 0x02), 40)                                                        // SYN in
	w.WritePacket(t0.Add(2*time.Millisecond), segment(us, peer, 0x12), 40)                                // SYN-ACK out
	w.WritePacketComment(t0.Add(5*time.Millisecond), segment(us, peer, 0x10), 40, "dropped by rule 1: x") // ACK out, dropped
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	conn := inspect.ConnID{Local: us, Remote: peer}
	evs := []inspect.Event{
		{Time: t0, Kind: inspect.KindState, Conn: conn, From: inspect.Listen, To: inspect.SynRcvd, Cause: "received SYN"},
		{Time: t0.Add(5 * time.Millisecond), Kind: inspect.KindFault, Conn: conn, Cause: "injected drop"},
	}
	es, err := timeline(path, evs)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range es {
		s := e.Source + " " + e.Dir
		if e.Mark != "" {
			s += " [" + e.Mark + "]"
		}
		if e.Local != us || e.Remote != peer || e.Stack != "netstack" || e.Host != "apple" {
			t.Errorf("entry %+v: want our connection, netstack in apple", e)
		}
		got = append(got, s)
	}
	want := []string{"wire in", "stack ", "wire out", "wire out [dropped by rule 1: x]", "fault "}
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Fatalf("timeline\n got %s\nwant %s", strings.Join(got, ", "), strings.Join(want, ", "))
	}
	if !strings.HasPrefix(es[0].Segment, "IP 10.0.1.2.40000 > 10.0.2.2.9999: Flags [S]") {
		t.Errorf("segment text %q", es[0].Segment)
	}
	var buf bytes.Buffer
	if err := writeTimeline(&buf, es); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	var first, second map[string]any
	json.Unmarshal([]byte(lines[0]), &first)
	json.Unmarshal([]byte(lines[1]), &second)
	if len(lines) != 5 || first["source"] != "wire" || !strings.Contains(lines[0], `"segment":"IP 10.0.1.2.40000 > 10.0.2.2.9999`) ||
		second["event"].(map[string]any)["to"] != "SYN-RCVD" {
		t.Fatalf("timeline.jsonl:\n%s", buf.String())
	}
	var sum strings.Builder
	summaryTimeline(&sum, es, t0)
	if !strings.Contains(sum.String(), "<- dropped by rule 1: x") || !strings.Contains(sum.String(), " *  LISTEN -> SYN-RCVD (received SYN)") {
		t.Fatalf("summary timeline:\n%s", sum.String())
	}
}
