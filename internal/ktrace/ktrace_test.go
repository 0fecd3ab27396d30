package ktrace

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/tcp-upper/tcp-upper/internal/testenv"
)

const stateFormat = `name: inet_sock_set_state
ID: 1234
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skaddr;	offset:8;	size:8;	signed:0;
	field:int oldstate;	offset:16;	size:4;	signed:1;
	field:int newstate;	offset:20;	size:4;	signed:1;
	field:__u16 sport;	offset:24;	size:2;	signed:0;
	field:__u16 dport;	offset:26;	size:2;	signed:0;
	field:__u16 family;	offset:28;	size:2;	signed:0;
	field:__u16 protocol;	offset:30;	size:2;	signed:0;
	field:__u8 saddr[4];	offset:32;	size:4;	signed:0;
	field:__u8 daddr[4];	offset:36;	size:4;	signed:0;
	field:__u8 saddr_v6[16];	offset:40;	size:16;	signed:0;
	field:__u8 daddr_v6[16];	offset:56;	size:16;	signed:0;

print fmt: "family=%s ..."
`

func TestParseFormat(t *testing.T) {
	f, err := parseFormat(stateFormat)
	if err != nil {
		t.Fatal(err)
	}
	if f.id != 1234 || f.name != "inet_sock_set_state" {
		t.Fatalf("id %d name %q", f.id, f.name)
	}
	for name, want := range map[string]field{"skaddr": {8, 8}, "saddr": {32, 4}, "daddr_v6": {56, 16}, "common_type": {0, 2}} {
		if got := f.fields[name]; got != want {
			t.Errorf("field %s = %+v, want %+v", name, got, want)
		}
	}
	if _, err := parseFormat("name: x\nformat:\n"); err == nil {
		t.Error("a format without an ID parsed")
	}
}

// page builds a ring buffer page holding the given entries.
type pageBuilder struct{ data []byte }

func (p *pageBuilder) word(v uint32) { p.data = binary.NativeEndian.AppendUint32(p.data, v) }

// event appends a data entry: small ones by type_len, big ones with an
// explicit length, as the kernel writes them.
func (p *pageBuilder) event(delta uint32, payload []byte) {
	padded := append([]byte(nil), payload...)
	for len(padded)%4 != 0 {
		padded = append(padded, 0)
	}
	if len(padded) <= 28*4 {
		p.word(delta<<5 | uint32(len(padded)/4))
	} else {
		p.word(delta << 5)
		p.word(uint32(len(padded) + 4))
	}
	p.data = append(p.data, padded...)
}

func (p *pageBuilder) extend(delta uint64) {
	p.word(uint32(delta&(1<<27-1))<<5 | typeTimeExtend)
	p.word(uint32(delta >> 27))
}

func (p *pageBuilder) page(ts uint64, flags uint64) []byte {
	b := make([]byte, 4096)
	binary.NativeEndian.PutUint64(b[0:], ts)
	binary.NativeEndian.PutUint64(b[8:], uint64(len(p.data))|flags)
	copy(b[16:], p.data)
	return b
}

func TestParsePage(t *testing.T) {
	var p pageBuilder
	small := []byte{1, 2, 3, 4, 5, 6}
	big := make([]byte, 200)
	big[0] = 7
	p.event(10, small)
	p.extend(1 << 30)
	p.event(5, big)
	p.event(0, small)
	type got struct {
		ts  uint64
		len int
		b0  byte
	}
	var out []got
	missed, err := parsePage(p.page(1000, 0), func(ts uint64, rec []byte) { out = append(out, got{ts, len(rec), rec[0]}) })
	if err != nil || missed {
		t.Fatalf("parsePage: missed %v, %v", missed, err)
	}
	want := []got{{1010, 8, 1}, {1010 + 1<<30 + 5, 200, 7}, {1010 + 1<<30 + 5, 8, 1}}
	if fmt.Sprint(out) != fmt.Sprint(want) {
		t.Fatalf("records %v, want %v", out, want)
	}
	if missed, _ := parsePage(p.page(0, missedEvents), func(uint64, []byte) {}); !missed {
		t.Error("missed-events flag not reported")
	}
	// Garbage never panics and never reads past the page.
	for i := 0; i < 2000; i++ {
		b := make([]byte, rand.IntN(64)+8)
		for j := range b {
			b[j] = byte(rand.IntN(256))
		}
		if len(b) >= 16 {
			binary.NativeEndian.PutUint64(b[8:], uint64(rand.IntN(len(b)-15)))
		}
		parsePage(b, func(uint64, []byte) {})
	}
}

// TestKernelConnectionLife records a kernel TCP connection made on
// loopback in a network namespace of the test's own, and checks the
// client's life as its tracepoints tell it: one socket address from
// SYN-SENT (port 0: the kernel sets the state before it picks the port)
// to CLOSE, the states in order, and tcp_probe's numbers for it.
func TestKernelConnectionLife(t *testing.T) {
	testenv.RequireRoot(t)
	port := uint16(20000 + rand.IntN(20000))
	s, err := Start(Options{Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	}()

	var client string
	err = inNewNetns(func() error {
		ln, err := listenLoopback(port)
		if err != nil {
			return err
		}
		defer ln.Close()
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			return err
		}
		client = c.LocalAddr().String()
		a, err := ln.Accept()
		if err != nil {
			return err
		}
		c.Write([]byte("hello"))
		buf := make([]byte, 5)
		if _, err := a.Read(buf); err != nil {
			return err
		}
		c.Close() // the client closes first: FIN-WAIT-1, FIN-WAIT-2, then TIME-WAIT
		if _, err := a.Read(buf); err == nil {
			return fmt.Errorf("server read data after the client's FIN")
		}
		a.Close()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Everything the kernel recorded is in Records once Flush returns: no
	// waiting for the kernel to wake the readers.
	s.Flush()
	var sk uint64
	var states []string
	probes := 0
	for more := true; more; {
		select {
		case r := <-s.Records():
			switch {
			case r.Kind == SetState && r.NewState == TCPSynSent:
				if r.Src.Port() != 0 && r.Src.String() != client {
					continue
				}
				sk = r.Sk
				states = append(states, r.OldState.String()+"->"+r.NewState.String())
			case r.Kind == SetState && sk != 0 && r.Sk == sk:
				if r.Src.String() != client {
					t.Fatalf("state record for the client's socket names %v, want %v", r.Src, client)
				}
				states = append(states, r.OldState.String()+"->"+r.NewState.String())
			case r.Kind == Probe && r.Sk == sk && sk != 0:
				probes++
				if r.SndCwnd == 0 {
					t.Errorf("tcp_probe for the client: cwnd 0")
				}
			}
		default:
			more = false
		}
	}
	want := "CLOSE->SYN_SENT SYN_SENT->ESTABLISHED ESTABLISHED->FIN_WAIT1 FIN_WAIT1->FIN_WAIT2 FIN_WAIT2->CLOSE"
	if got := strings.Join(states, " "); got != want {
		t.Errorf("client's states:\n got %s\nwant %s", got, want)
	}
	if probes == 0 {
		t.Error("no tcp_probe record for the client's socket")
	}
}

// inNewNetns runs fn on a thread in a new, unnamed network namespace that
// goes away with its last socket.
func inNewNetns(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		err = fn()
		netns.Set(orig)
		errc <- err
	}()
	return <-errc
}

// listenLoopback brings lo up in the current (new) namespace and listens
// on 127.0.0.1:port there.
func listenLoopback(port uint16) (net.Listener, error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, err
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return nil, err
	}
	return net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
}

// TestStaleInstanceRemoved: an instance whose process died without
// closing it (killed) is removed by the next Start; a live process's
// (this one's) is not.
func TestStaleInstanceRemoved(t *testing.T) {
	testenv.RequireRoot(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(Root, "instances", fmt.Sprintf("tcp-upper-%d-1", dead.Process.Pid))
	live := filepath.Join(Root, "instances", fmt.Sprintf("tcp-upper-%d-999", os.Getpid()))
	for _, dir := range []string{stale, live} {
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	defer os.Remove(live)
	defer os.Remove(stale)
	s, err := Start(Options{Port: 1})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale instance %s: %v, want it removed", stale, err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("this process's instance %s: %v, want it left alone", live, err)
	}
}
