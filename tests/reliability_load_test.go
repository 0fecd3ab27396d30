package tests

// Load and lifecycle (issue 7): SYN floods, connection limits and idle
// connections, a client that never ends its line or never reads, resets,
// half-closes and vanished peers, and churn. Each test builds its own lab
// and records its figure with t.Logf (FIGURE lines); docs/RELIABILITY.md
// keeps them.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tcp-upper/tcp-upper/internal/rawtcp"
	"github.com/tcp-upper/tcp-upper/lab"
	"github.com/tcp-upper/tcp-upper/netstack/control"
)

// readVmRSS returns the resident set size of pid in KiB, from
// /proc/PID/status.
func readVmRSS(t testing.TB, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read status of %d: %v", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) == 2 && f[1] == "kB" {
				n, err := strconv.Atoi(f[0])
				if err == nil {
					return n
				}
			}
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// rssSampler records the peak VmRSS of a process, sampled every 50ms
// until stop is called.
type rssSampler struct {
	peak atomic.Int64
	stop func()
}

func sampleRSS(t *testing.T, pid int) *rssSampler {
	t.Helper()
	s := &rssSampler{}
	s.peak.Store(int64(readVmRSS(t, pid)))
	done, quit := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				return
			case <-tick.C:
			}
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			if err != nil {
				return
			}
			if i := bytes.Index(b, []byte("VmRSS:")); i >= 0 {
				f := strings.Fields(string(b[i+6:]))
				if n, err := strconv.Atoi(f[0]); err == nil && int64(n) > s.peak.Load() {
					s.peak.Store(int64(n))
				}
			}
		}
	}()
	var once sync.Once
	s.stop = func() { once.Do(func() { close(quit); <-done }) }
	t.Cleanup(s.stop)
	return s
}

// counterMap asks the server at ctl for its counters (tcp-upper-lab
// stats's numbers).
func counterMap(t testing.TB, ctl string) map[string]uint64 {
	t.Helper()
	c, err := control.Dial(ctl)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r, err := c.Call("stats", nil)
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	m := map[string]uint64{}
	for _, c := range r.Counters {
		m[c.Name] = c.Value
	}
	return m
}

// waitUntil polls cond every 20ms until it holds or timeout passes, and
// reports whether it held.
func waitUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// echoOnce connects from ant, sends line and checks the uppercase answer.
// It returns the time the whole exchange took.
func echoOnce(l *lab.Lab, addr, line string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	var c net.Conn
	err := l.Do(lab.Ant, func() error {
		var err error
		c, err = (&net.Dialer{Timeout: timeout}).Dial("tcp4", addr)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, line); err != nil {
		return 0, fmt.Errorf("write: %w", err)
	}
	got := make([]byte, len(line))
	if _, err := io.ReadFull(c, got); err != nil {
		return 0, fmt.Errorf("read: %w", err)
	}
	if want := strings.ToUpper(line); string(got) != want {
		return 0, fmt.Errorf("reply %q, want %q", got, want)
	}
	return time.Since(start), nil
}

// countLines counts the lines of s that end with suffix.
func countLines(s, suffix string) int {
	n := 0
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if strings.HasSuffix(sc.Text(), suffix) {
			n++
		}
	}
	return n
}

// TestSYNFlood: 10,000 SYNs from spoofed addresses (10.0.1.10-249, random
// ports: on ant's link, where nobody answers for them, so our SYN-ACKs die
// in apple's ARP) sent from a raw socket in ant at a server with a backlog
// of 16, while kernel clients in ant keep connecting. Past 16 pending
// handshakes our stack answers with SYN cookies: every real client gets
// its answer, and the cookies are counted in tcp-upper-lab stats.
func TestSYNFlood(t *testing.T) {
	l := newLab(t)
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	startServer(t, l, "--backlog", "16", "--control", ctl)
	const flood = 10000
	before := counterMap(t, ctl)

	// Real clients: 4 workers, each connecting again and again until the
	// flood is over (and at least 10 times).
	var stop atomic.Bool
	var served, failed atomic.Int64
	var slowest atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000 && (i < 10 || !stop.Load()); i++ {
				d, err := echoOnce(l, serverAddr, fmt.Sprintf("real client %d/%d\n", w, i), 10*time.Second)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				served.Add(1)
				for {
					s := slowest.Load()
					if int64(d) <= s || slowest.CompareAndSwap(s, int64(d)) {
						break
					}
				}
			}
		}()
	}

	// The flood, from a raw socket in ant (IPPROTO_RAW: we write the IP
	// header). Paced in bursts of 100, so the TUN's queue in apple (500
	// packets) is what we test, not what we overflow.
	rng := rand.New(rand.NewPCG(7, 11))
	dst := netip.AddrPortFrom(lab.ServerAddr.Addr(), lab.Port)
	start := time.Now()
	err := l.Do(lab.Ant, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(fd)
		to := &unix.SockaddrInet4{Addr: dst.Addr().As4()}
		for i := 0; i < flood; i++ {
			src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 1, byte(10 + rng.IntN(240))}), uint16(1024+rng.IntN(64000)))
			seg := rawtcp.Segment{Src: src, Dst: dst, Seq: rng.Uint32(), Flags: header.TCPFlagSyn, Window: 64240,
				Options: rawtcp.SynOptions(1460, 7, true)}
			if err := unix.Sendto(fd, seg.Marshal(), 0, to); err != nil {
				return fmt.Errorf("send SYN %d: %w", i, err)
			}
			if i%100 == 99 {
				time.Sleep(2 * time.Millisecond)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sent := time.Since(start)
	// Wait for the stack to have answered them all (cookies or pending
	// handshakes), then let the clients finish.
	var after map[string]uint64
	waitUntil(10*time.Second, func() bool {
		after = counterMap(t, ctl)
		return after["tcp.syn_cookies_sent"]-before["tcp.syn_cookies_sent"] >= flood-16
	})
	stop.Store(true)
	wg.Wait()
	after = counterMap(t, ctl)
	cookies := after["tcp.syn_cookies_sent"] - before["tcp.syn_cookies_sent"]
	valid := after["tcp.syn_cookies_valid"] - before["tcp.syn_cookies_valid"]
	drops := after["tcp.listen_drops_syn"] - before["tcp.listen_drops_syn"]
	t.Logf("FIGURE %d spoofed SYNs in %v; stack: %d SYN cookies sent, %d valid cookies back, %d SYN listen drops; real clients: %d served, %d failed, slowest exchange %v",
		flood, sent.Round(time.Millisecond), cookies, valid, drops, served.Load(), failed.Load(), time.Duration(slowest.Load()).Round(time.Millisecond))
	if n := failed.Load(); n > 0 {
		t.Errorf("%d real client exchanges failed during the flood; first: %v", n, firstErr.Load())
	}
	if served.Load() < 40 {
		t.Errorf("only %d real client exchanges served", served.Load())
	}
	if cookies < flood-16 {
		t.Errorf("%d SYN cookies sent for %d spoofed SYNs at backlog 16: want at least %d", cookies, flood, flood-16)
	}
	if valid == 0 {
		t.Errorf("no valid SYN cookie came back: the real clients did not connect through cookies")
	}
	// tcp-upper-lab stats shows them.
	code, out, errOut := runCmd(t, 10*time.Second, nil, bin("tcp-upper-lab"), "stats", "--control", ctl)
	if code != 0 {
		t.Fatalf("tcp-upper-lab stats: exit %d: %s", code, errOut)
	}
	for _, name := range []string{"tcp.syn_cookies_sent", "tcp.syn_cookies_valid", "tcp.listen_drops_syn"} {
		if !strings.Contains(out, name) {
			t.Errorf("tcp-upper-lab stats does not show %s:\n%s", name, out)
		}
	}
	if !regexp.MustCompile(`tcp\.syn_cookies_sent\D+[1-9]\d{3,}`).MatchString(out) {
		t.Errorf("tcp-upper-lab stats: syn_cookies_sent is not in the thousands:\n%s", out)
	}
}

// dialMany opens n idle connections from ant (one namespace switch for
// all of them); they close when the test ends.
func dialMany(t *testing.T, l *lab.Lab, addr string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	err := l.Do(lab.Ant, func() error {
		d := net.Dialer{Timeout: 5 * time.Second}
		for i := 0; i < n; i++ {
			c, err := d.Dial("tcp4", addr)
			if err != nil {
				return fmt.Errorf("idle connection %d: %w", i, err)
			}
			conns = append(conns, c)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return conns
}

// TestIdleConnsCannotStarve: 1,000 idle connections fill --max-conns
// 1000. A new client is closed at once (EOF within a second, not a hang),
// counted and logged; --idle-close 2s then frees the idle ones and a new
// client is served within idle-close plus a second. The idle connections
// each see the server's FIN.
func TestIdleConnsCannotStarve(t *testing.T) {
	l := newLab(t)
	const n, idle = 1000, 2 * time.Second
	srv := startServer(t, l, "--max-conns", fmt.Sprint(n), "--idle-close", idle.String(), "--time-wait", "1s")
	start := time.Now()
	conns := dialMany(t, l, serverAddr, n)
	if !waitUntil(10*time.Second, func() bool { return countLines(srv.stdout.String(), " connected") == n }) {
		t.Fatalf("server shows %d of %d connections", countLines(srv.stdout.String(), " connected"), n)
	}
	opened := time.Since(start)

	// At the limit: accepted by the stack, closed by the server at once.
	c := dialAnt(t, l, serverAddr)
	c.SetReadDeadline(time.Now().Add(time.Second))
	if k, err := c.Read(make([]byte, 1)); k != 0 || err != io.EOF {
		t.Fatalf("client %d+1 at --max-conns %d: read %d bytes, %v; want EOF at once", n, n, k, err)
	}
	if !srv.stderr.waitFor("refusing connections: --max-conns reached", 2*time.Second) {
		t.Fatalf("no refusal in the log: %s", srv.stderr.String())
	}

	// The idle ones are closed after --idle-close; a new client gets in.
	var served time.Duration
	refused := 0
	ok := waitUntil(idle+5*time.Second, func() bool {
		_, err := echoOnce(l, serverAddr, "not starved\n", 2*time.Second)
		if err != nil {
			refused++
			return false
		}
		served = time.Since(start) - opened
		return true
	})
	if !ok {
		t.Fatalf("no new client served within %v of the idle connections", idle+5*time.Second)
	}
	t.Logf("FIGURE %d idle connections opened in %v; a new client refused at once (%d tries refused), then served %v after the idle ones were complete (--idle-close %v)",
		n, opened.Round(time.Millisecond), refused, served.Round(time.Millisecond), idle)
	if served > idle+2*time.Second {
		t.Errorf("new client served after %v: want within --idle-close %v + 2s", served, idle)
	}
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if k, err := c.Read(make([]byte, 1)); k != 0 || err != io.EOF {
			t.Fatalf("idle connection %d: read %d bytes, %v; want EOF (closed by --idle-close)", i, k, err)
		}
	}
}

// TestMaxConnsKernelStack: --max-conns is the application's, so it holds
// on --stack kernel too.
func TestMaxConnsKernelStack(t *testing.T) {
	l := newLab(t)
	srv := startIn(t, l, lab.Apple, bin("tcp-upper-server"), "--stack", "kernel", "--max-conns", "2")
	if !srv.stdout.waitFor("waiting for connections...", 10*time.Second) {
		t.Fatalf("server did not start: %s", srv.stderr.String())
	}
	addr := net.JoinHostPort(lab.AppleAddr.Addr().String(), fmt.Sprint(lab.Port))
	a, b := dialAnt(t, l, addr), dialAnt(t, l, addr)
	for _, c := range []net.Conn{a, b} {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "x\n")
		if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
			t.Fatalf("one of the first two: %v", err)
		}
	}
	c := dialAnt(t, l, addr)
	c.SetReadDeadline(time.Now().Add(time.Second))
	if k, err := c.Read(make([]byte, 1)); k != 0 || err != io.EOF {
		t.Fatalf("third client at --max-conns 2: read %d bytes, %v; want EOF at once", k, err)
	}
	if !srv.stderr.waitFor("refusing connections: --max-conns reached", 2*time.Second) {
		t.Fatalf("no refusal in the log: %s", srv.stderr.String())
	}
	a.Close()
	if !srv.stdout.waitFor("disconnected", 2*time.Second) {
		t.Fatal("first client's disconnect not seen")
	}
	if _, err := echoOnce(l, addr, "room again\n", 2*time.Second); err != nil {
		t.Fatalf("after one left: %v", err)
	}
}
