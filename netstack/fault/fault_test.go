package fault_test

import (
	"encoding/binary"
	"strings"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/tcp-upper/tcp-upper/netstack/fault"
	"github.com/tcp-upper/tcp-upper/netstack/tunlink"
	"github.com/tcp-upper/tcp-upper/tun"
)

func TestParseExamplesAndErrors(t *testing.T) {
	for _, ok := range []string{
		"in syn drop count=2", "out syn-ack drop count=1", "in data drop nth=3",
		"both any drop prob=0.15", "out data delay 200ms jitter=50ms", "in any corrupt prob=0.05",
		"in ack dup", "out data dup 3 prob=0.5", "both data reorder prob=0.05", "in any truncate 40",
		"out data rate 1mbit", "both any blackhole for=5s", "in data drop after=10 count=1 port=9999",
		"both any drop loss=ge:0.05,0.5", "out fin drop", "in rst drop",
	} {
		r, err := fault.Parse(ok)
		if err != nil {
			t.Errorf("%q: %v", ok, err)
			continue
		}
		if r.String() != ok {
			t.Errorf("%q prints as %q", ok, r.String())
		}
	}
	for rule, want := range map[string]string{
		"":                                  "want DIR MATCH ACTION",
		"in syn":                            "want DIR MATCH ACTION",
		"up syn drop":                       `token 1 "up": unknown direction; want in, out, both`,
		"in sin drop":                       `token 2 "sin": unknown match; want any, syn, syn-ack, ack, data, fin, rst`,
		"in syn dorp":                       `token 3 "dorp": unknown action; want drop, delay D, dup [N], reorder`,
		"in data delay":                     "token 4 delay needs a duration",
		"in data delay soon":                `token 4 "soon": want a delay`,
		"in data delay prob=0.5":            "token 4 delay needs a duration",
		"in data drop prob=1.5":             `token 4 "prob=1.5": prob wants a probability from 0 to 1`,
		"in data drop nth=0":                `token 4 "nth=0"`,
		"in data drop colour=red":           `token 4 "colour=red": unknown option; want prob=P`,
		"in data drop jitter=5ms":           "jitter goes with delay",
		"in data delay 10ms jitter=20ms":    "no larger than the delay",
		"in data drop for=1s":               "for=D goes with blackhole",
		"in data rate fast":                 "want a rate such as 1mbit",
		"in data truncate":                  "truncate needs a length",
		"in data dup 0":                     "dup takes a number of copies from 1 to 100",
		"in data drop loss=ge:0.1":          "loss wants ge:P,R",
		"in data drop port=70000":           "port wants 1 to 65535",
		"in data drop prob":                 `token 4 "prob": want an option KEY=VALUE`,
		"in data drop count=2 extra tokens": `token 5 "extra"`,
	} {
		_, err := fault.Parse(rule)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want it to contain %q", rule, err, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"in syn drop count=2", "both any drop loss=ge:0.05,0.5", "out data delay 200ms jitter=50ms", "in any truncate 40", "x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := fault.Parse(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "bad fault rule ") || strings.Contains(err.Error(), "\n") && !strings.Contains(s, "\n") {
				t.Fatalf("error %q", err)
			}
			return
		}
		// A rule that parses prints as something that parses the same.
		r2, err := fault.Parse(r.String())
		if err != nil || r2.String() != r.String() {
			t.Fatalf("%q → %q → %v", s, r.String(), err)
		}
	})
}

// rig is a fault layer over a tunlink over an in-memory pipe: packets
// written to the far end arrive "in"; what reaches the dispatcher above is
// recorded.
type rig struct {
	link *fault.Link
	far  *tun.PipeDevice
	mu   sync.Mutex
	got  []uint32 // sequence numbers delivered in
}

func (r *rig) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, p *stack.PacketBuffer) {
	b := make([]byte, p.Size())
	v := p.ToView()
	copy(b, v.AsSlice())
	v.Release()
	r.mu.Lock()
	r.got = append(r.got, binary.BigEndian.Uint32(b[24:]))
	r.mu.Unlock()
}
func (r *rig) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

func newRig(t *testing.T, seed uint64, rules ...string) (*rig, *[]int) {
	near, far := tun.Pipe("near", "far", 1500)
	r := &rig{far: far}
	var applied []int
	var amu sync.Mutex
	var parsed []*fault.Rule
	for _, s := range rules {
		pr, err := fault.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		parsed = append(parsed, pr)
	}
	r.link = fault.New(tunlink.New(near, tunlink.Options{}, nil), fault.Options{Seed: seed, Rules: parsed, OnApply: func(a fault.Applied) {
		amu.Lock()
		defer amu.Unlock()
		applied = append(applied, int(a.RuleID))
	}}, nil)
	r.link.Attach(r)
	t.Cleanup(func() { r.link.Close(); far.Close() })
	return r, &applied
}

// segment is a TCP data segment with sequence number seq.
func segment(seq uint32, payload int) []byte {
	b := make([]byte, header.IPv4MinimumSize+header.TCPMinimumSize+payload)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4([4]byte{10, 0, 1, 2}), DstAddr: tcpip.AddrFrom4([4]byte{10, 0, 2, 2})})
	ip.SetChecksum(^ip.CalculateChecksum())
	tcp := header.TCP(b[header.IPv4MinimumSize:])
	tcp.Encode(&header.TCPFields{SrcPort: 47762, DstPort: 9999, SeqNum: seq, AckNum: 1, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagAck | header.TCPFlagPsh, WindowSize: 1000})
	return b
}

func (r *rig) send(t *testing.T, n int) []uint32 {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := r.far.Write(segment(uint32(i), 10)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Microsecond) // keep the pipe's queue short
	}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		got := len(r.got)
		r.mu.Unlock()
		time.Sleep(200 * time.Millisecond)
		r.mu.Lock()
		same := got == len(r.got)
		r.mu.Unlock()
		if same && got > 0 {
			break
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]uint32(nil), r.got...)
}

func TestSameSeedSameFaults(t *testing.T) {
	run := func(seed uint64) []uint32 {
		r, _ := newRig(t, seed, "in data drop prob=0.2")
		return r.send(t, 300)
	}
	a, b, c := run(42), run(42), run(43)
	if len(a) == 300 || len(a) < 180 {
		t.Fatalf("%d of 300 delivered with prob=0.2 drop", len(a))
	}
	if !equal(a, b) {
		t.Fatalf("same seed, different drops:\n%v\n%v", missing(a, 300), missing(b, 300))
	}
	if equal(a, c) {
		t.Fatalf("seeds 42 and 43 dropped the same segments %v", missing(a, 300))
	}
}

func TestNthCountAfter(t *testing.T) {
	r, applied := newRig(t, 1, "in data drop nth=3", "in data drop after=5 count=2")
	got := r.send(t, 10)
	// The first rule that fires wins, so rule 2 never sees segment 2: its
	// matches are 0 1 3 4 5 | 6 7 ...
	if m := missing(got, 10); len(m) != 3 || m[0] != 2 || m[1] != 6 || m[2] != 7 {
		t.Fatalf("dropped %v, want [2 6 7] (rule 1's 3rd match; rule 2's 6th and 7th)", m)
	}
	if len(*applied) != 3 {
		t.Fatalf("OnApply told %v", *applied)
	}
	ls := r.link.List()
	if ls[0].Matched != 10 || ls[0].Applied != 1 || ls[1].Applied != 2 {
		t.Fatalf("list %+v", ls)
	}
	// Runtime changes.
	if !r.link.Del(ls[0].ID) || r.link.Del(99) {
		t.Fatal("del")
	}
	r.link.Clear()
	if len(r.link.List()) != 0 {
		t.Fatal("clear")
	}
}

func TestReorderDupDelay(t *testing.T) {
	// Rule 1 holds segment 1 until segment 2 overtakes it; rule 2 sees
	// 0 2 3 4 5 ... (its 5th is segment 5) and sends two extra copies;
	// rule 3 sees 0 2 3 4 6 7 8 9 (its 8th is segment 9) and delays it.
	r, _ := newRig(t, 1, "in data reorder nth=2", "in data dup 2 nth=5", "in data delay 100ms nth=8")
	got := r.send(t, 10)
	want := []uint32{0, 2, 1, 3, 4, 5, 5, 5, 6, 7, 8, 9}
	if !equal(got, want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
}

func TestNoRulesPassesEverything(t *testing.T) {
	r, _ := newRig(t, 1)
	if got := r.send(t, 100); len(got) != 100 {
		t.Fatalf("%d of 100", len(got))
	}
}

func equal(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func missing(got []uint32, n int) []int {
	seen := map[uint32]bool{}
	for _, s := range got {
		seen[s] = true
	}
	var m []int
	for i := 0; i < n; i++ {
		if !seen[uint32(i)] {
			m = append(m, i)
		}
	}
	return m
}
