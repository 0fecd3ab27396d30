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
	// header), in bursts of 250: after each the stack must have answered
	// them all (SYN cookies, past the 16 pending handshakes) before the
	// next, so the TUN's queue in apple (500 packets) never overflows, even
	// on a busy machine, and every SYN is accounted for.
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
			if i%250 == 249 {
				answered := waitUntil(10*time.Second, func() bool {
					return counterMap(t, ctl)["tcp.syn_cookies_sent"]-before["tcp.syn_cookies_sent"]+16 >= uint64(i+1)
				})
				if !answered {
					return fmt.Errorf("after %d spoofed SYNs the stack has sent %d SYN cookies: want at least %d", i+1, counterMap(t, ctl)["tcp.syn_cookies_sent"]-before["tcp.syn_cookies_sent"], i+1-16)
				}
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
// counted and logged; --idle-close 3s then frees the idle ones and a new
// client is served within idle-close plus a second. The idle connections
// each see the server's FIN.
func TestIdleConnsCannotStarve(t *testing.T) {
	l := newLab(t)
	const n, idle = 1000, 3 * time.Second
	srv := startServer(t, l, "--max-conns", fmt.Sprint(n), "--idle-close", idle.String(), "--time-wait", "1s")
	start := time.Now()
	conns := dialMany(t, l, serverAddr, n)
	if !waitUntil(10*time.Second, func() bool { return countLines(srv.stdout.String(), " connected") == n }) {
		t.Fatalf("server shows %d of %d connections", countLines(srv.stdout.String(), " connected"), n)
	}
	opened := time.Since(start)
	if opened > idle/2 {
		t.Fatalf("opening %d connections took %v: too slow to test at the limit before --idle-close %v frees places", n, opened, idle)
	}
	rss := readVmRSS(t, srv.cmd.Process.Pid)

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
	t.Logf("FIGURE %d idle connections opened in %v (server VmRSS %d MiB); a new client refused at once (%d tries refused), then served %v after the idle ones were complete (--idle-close %v)",
		n, opened.Round(time.Millisecond), rss>>10, refused, served.Round(time.Millisecond), idle)
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

// TestLongLineRSS: a client sends 1 GiB with no newline (reading the echo
// as it comes); the server replies to whatever arrives, so it never holds
// more than its buffers: its VmRSS stays under a bound for the whole
// transfer. TCP_UPPER_LONGLINE_MIB scales the size.
func TestLongLineRSS(t *testing.T) {
	l := newLab(t)
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	srv := startServer(t, l, "--log-level", "debug", "--control", ctl)
	pid := srv.cmd.Process.Pid
	mib := envInt(t, "TCP_UPPER_LONGLINE_MIB", 1024)
	total := int64(mib) << 20
	c := dialAnt(t, l, serverAddr)
	base := readVmRSS(t, pid)
	rss := sampleRSS(t, pid)
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		chunk := bytes.Repeat([]byte("abcdefghijklmnopqrstuvwxyz012345"), 2048) // 64 KiB, no newline
		for sent := int64(0); sent < total; sent += int64(len(chunk)) {
			c.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if _, err := c.Write(chunk); err != nil {
				errc <- fmt.Errorf("write at %d: %w", sent, err)
				return
			}
		}
		errc <- nil
	}()
	want := bytes.Repeat([]byte("ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"), 2048)
	buf := make([]byte, len(want))
	for got := int64(0); got < total; got += int64(len(buf)) {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil {
			var werr error
			select {
			case werr = <-errc:
			default:
			}
			t.Fatalf("read at %d of %d: %v (writer: %v); server stdout %q stderr %q; counters %v", got, total, err, werr, srv.stdout.String(), srv.stderr.String(), counterMap(t, ctl))
		}
		if !bytes.Equal(buf, want) {
			t.Fatalf("echo at %d is not the uppercase of what was sent", got)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	rss.stop()
	peak := int(rss.peak.Load())
	t.Logf("FIGURE %d MiB without a newline in %v (%.0f MB/s each way): server VmRSS %d MiB before, peak %d MiB during",
		mib, took.Round(time.Millisecond), float64(total)/took.Seconds()/1e6, base>>10, peak>>10)
	if peak-base > 64<<10 {
		t.Errorf("server VmRSS grew from %d to %d KiB during the transfer: want less than 64 MiB growth", base, peak)
	}
}

// TestNeverReadsRSS: a client writes without ever reading its replies.
// Flow control holds: the server's writes block, it stops reading, the
// client's writes block after a few MiB; the server's VmRSS stays bounded,
// and other clients keep being served meanwhile. A blocked write is not
// idle (--idle-close watches reads), but --user-timeout is: the client's
// zero window, probed and unacknowledged in data for that long, aborts
// the connection, so a non-reader cannot hold its place forever.
func TestNeverReadsRSS(t *testing.T) {
	l := newLab(t)
	const uto = 5 * time.Second
	srv := startServer(t, l, "--user-timeout", uto.String())
	pid := srv.cmd.Process.Pid
	c := dialAnt(t, l, serverAddr)
	peer := c.LocalAddr().String()
	base := readVmRSS(t, pid)
	rss := sampleRSS(t, pid)
	var sent atomic.Int64
	blocked := make(chan struct{})
	go func() {
		defer close(blocked)
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		for i := 0; i < 1<<14; i++ { // at most 1 GiB
			c.SetWriteDeadline(time.Now().Add(2 * time.Second))
			n, err := c.Write(chunk)
			sent.Add(int64(n))
			if err != nil {
				return // blocked for 2s: flow control holds
			}
		}
	}()
	select {
	case <-blocked:
	case <-time.After(60 * time.Second):
		t.Fatalf("the client wrote %d MiB without blocking", sent.Load()>>20)
	}
	blockedAt := time.Now()
	// Blocked now; others are served meanwhile.
	for i := 0; i < 20; i++ {
		if _, err := echoOnce(l, serverAddr, fmt.Sprintf("still served %d\n", i), 5*time.Second); err != nil {
			t.Fatalf("another client while one never reads: %v", err)
		}
	}
	rss.stop()
	peak := int(rss.peak.Load())
	t.Logf("FIGURE a client that never reads got %.1f MiB in before its writes blocked; server VmRSS %d MiB before, peak %d MiB; 20 other clients served meanwhile",
		float64(sent.Load())/(1<<20), base>>10, peak>>10)
	if sent.Load() > 64<<20 {
		t.Errorf("the client wrote %d MiB before blocking: want flow control to stop it within 64 MiB", sent.Load()>>20)
	}
	if peak-base > 64<<10 {
		t.Errorf("server VmRSS grew from %d to %d KiB: want less than 64 MiB growth", base, peak)
	}
	if !srv.stdout.waitFor(peer+" disconnected", uto+5*time.Second) {
		t.Fatalf("the non-reader still holds its connection %v after its writes blocked (--user-timeout %v)", time.Since(blockedAt).Round(time.Millisecond), uto)
	}
	t.Logf("FIGURE the non-reader was disconnected %v after its writes blocked (--user-timeout %v)", time.Since(blockedAt).Round(time.Millisecond), uto)
}

// hasPeer reports whether ss output has a row whose peer is peer.
func hasPeer(ss, peer string) bool {
	return regexp.MustCompile(`\s` + regexp.QuoteMeta(peer) + `(\s|$)`).MatchString(ss)
}

// peerGone waits until our stack's socket table (tcp-upper-lab ss -tan)
// has no row for peer, and returns how long that took, or false.
func peerGone(t *testing.T, ctl, peer string, timeout time.Duration) (time.Duration, bool) {
	t.Helper()
	start := time.Now()
	ok := waitUntil(timeout, func() bool { return !hasPeer(labSS(t, ctl, "-tan"), peer) })
	return time.Since(start), ok
}

// TestResetsAndHalfCloses: against one server (--idle-close 1s,
// --user-timeout 2s), a kernel client in ant that resets mid-transfer, one
// that half-closes and keeps reading, and one that vanishes (a fault rule
// blackholes its port both ways). Each time the server logs the
// disconnect, keeps nothing for that peer in its socket table within a
// bound, and serves a new client.
func TestResetsAndHalfCloses(t *testing.T) {
	l := newLab(t)
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	const idle, uto = time.Second, 2 * time.Second
	srv := startServer(t, l, "--idle-close", idle.String(), "--user-timeout", uto.String(), "--time-wait", "1s", "--control", ctl)
	served := func(what string) {
		t.Helper()
		if _, err := echoOnce(l, serverAddr, "after "+what+"\n", 5*time.Second); err != nil {
			t.Fatalf("new client after %s: %v", what, err)
		}
	}

	t.Run("reset", func(t *testing.T) {
		c := dialAnt(t, l, serverAddr).(*net.TCPConn)
		peer := c.LocalAddr().String()
		// Mid-transfer: 1 MiB out and not read back, more on the way.
		chunk := bytes.Repeat([]byte("reset me "), 1<<14)
		var sent int
		for sent < 1<<20 {
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			n, err := c.Write(chunk)
			sent += n
			if err != nil {
				t.Fatalf("write: %v", err)
			}
		}
		if err := c.SetLinger(0); err != nil {
			t.Fatal(err)
		}
		c.Close() // RST
		if !srv.stdout.waitFor(peer+" disconnected", 2*time.Second) {
			t.Fatalf("no disconnect line for %s: %q", peer, srv.stdout.String())
		}
		took, ok := peerGone(t, ctl, peer, 3*time.Second)
		if !ok {
			t.Fatalf("after the reset our stack still has %s:\n%s", peer, labSS(t, ctl, "-tan"))
		}
		t.Logf("FIGURE reset after %d KiB: socket gone from ss within %v of the disconnect line", sent>>10, took.Round(time.Millisecond))
		served("a reset")
	})

	t.Run("half-close", func(t *testing.T) {
		c := dialAnt(t, l, serverAddr).(*net.TCPConn)
		peer := c.LocalAddr().String()
		var lines bytes.Buffer
		for i := 0; lines.Len() < 4<<20; i++ {
			fmt.Fprintf(&lines, "line %d of a client that half-closes\n", i)
		}
		want := bytes.ToUpper(lines.Bytes())
		got := make(chan []byte, 1)
		go func() {
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			b, _ := io.ReadAll(c) // to EOF
			got <- b
		}()
		c.SetWriteDeadline(time.Now().Add(20 * time.Second))
		if _, err := c.Write(lines.Bytes()); err != nil {
			t.Fatalf("write: %v", err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		b := <-got
		if !bytes.Equal(b, want) {
			t.Fatalf("after CloseWrite got %d bytes of %d replies (equal: %v), then EOF", len(b), len(want), bytes.Equal(b, want[:min(len(b), len(want))]))
		}
		c.Close()
		if !srv.stdout.waitFor(peer+" disconnected", 2*time.Second) {
			t.Fatalf("no disconnect line for %s", peer)
		}
		took, ok := peerGone(t, ctl, peer, 3*time.Second)
		if !ok {
			t.Fatalf("after the half-close our stack still has %s:\n%s", peer, labSS(t, ctl, "-tan"))
		}
		t.Logf("FIGURE half-close after %d KiB: every reply then EOF; socket gone from ss within %v", len(want)>>10, took.Round(time.Millisecond))
		served("a half-close")
	})

	t.Run("vanish", func(t *testing.T) {
		c := dialAnt(t, l, serverAddr)
		peer := c.LocalAddr().String()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "about to vanish\n")
		if _, err := io.ReadFull(c, make([]byte, 16)); err != nil {
			t.Fatal(err)
		}
		// Nothing from or to it passes any more.
		cc, err := control.Dial(ctl)
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		port := c.LocalAddr().(*net.TCPAddr).Port
		if _, err := cc.Call("fault", control.FaultArgs{Op: "add", Rule: fmt.Sprintf("both any blackhole port=%d", port)}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if !srv.stdout.waitFor(peer+" disconnected", idle+2*time.Second) {
			t.Fatalf("no disconnect line for %s within --idle-close %v + 2s", peer, idle)
		}
		logged := time.Since(start)
		if !hasPeer(labSS(t, ctl, "-tan"), peer) {
			t.Errorf("%s gone at once: want it closing (FIN-WAIT-1, its FIN unanswered) until --user-timeout", peer)
		}
		_, ok := peerGone(t, ctl, peer, uto+3*time.Second)
		freed := time.Since(start)
		if !ok {
			t.Fatalf("vanished peer still in our stack %v after it went silent:\n%s", freed, labSS(t, ctl, "-tan"))
		}
		t.Logf("FIGURE vanished peer: disconnect logged after %v (--idle-close %v), socket freed after %v (--user-timeout %v)", logged.Round(time.Millisecond), idle, freed.Round(time.Millisecond), uto)
		served("a vanished client")
	})
	if t.Failed() {
		t.Logf("server stderr: %s", srv.stderr.String())
	}
}

// writeSysctl sets a sysctl under /proc/sys in host's namespace.
func writeSysctl(t *testing.T, l *lab.Lab, host, name, value string) {
	t.Helper()
	err := l.Do(host, func() error {
		return os.WriteFile("/proc/sys/"+strings.ReplaceAll(name, ".", "/"), []byte(value+"\n"), 0o644)
	})
	if err != nil {
		t.Fatalf("sysctl %s=%s in %s: %v", name, value, host, err)
	}
}

// churn opens and closes n connections from ant, w at a time, each sending
// one line and checking its answer; the client closes first, so the
// TIME-WAITs are the kernel's, in ant.
func churn(l *lab.Lab, n, w int) error {
	var next atomic.Int64
	errs := make(chan error, w)
	for i := 0; i < w; i++ {
		go func() {
			errs <- l.Do(lab.Ant, func() error {
				d := net.Dialer{Timeout: 5 * time.Second}
				buf := make([]byte, 5)
				for next.Add(1) <= int64(n) {
					c, err := d.Dial("tcp4", serverAddr)
					if err != nil {
						return fmt.Errorf("dial: %w", err)
					}
					c.SetDeadline(time.Now().Add(5 * time.Second))
					_, err = io.WriteString(c, "ping\n")
					if err == nil {
						_, err = io.ReadFull(c, buf)
					}
					c.Close()
					if err != nil {
						return fmt.Errorf("exchange: %w", err)
					}
					if string(buf) != "PING\n" {
						return fmt.Errorf("reply %q", buf)
					}
				}
				return nil
			})
		}()
	}
	var first error
	for i := 0; i < w; i++ {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// TestChurnMemory: ROUNDS times, CONNS connections opened and closed (each
// with one exchange) leave the server's goroutines where they started and
// its VmRSS where the first round left it (the first round grows the heap
// and gVisor's pools once; later rounds must not add to them), and within
// 16 MiB of where it started plus the 32 MiB of garbage the server's heap
// floor (--gc-floor, its default) lets pile up before a collection. 10 x 10,000 takes about 20 s on 2 cores;
// TCP_UPPER_CHURN_CONNS and TCP_UPPER_CHURN_ROUNDS scale it. (Before the
// tracker forgot closed connections, this grew by ~7 KiB per connection.)
func TestChurnMemory(t *testing.T) {
	l := newLab(t)
	conns := envInt(t, "TCP_UPPER_CHURN_CONNS", 10000)
	rounds := envInt(t, "TCP_UPPER_CHURN_ROUNDS", 10)
	writeSysctl(t, l, lab.Ant, "net.ipv4.ip_local_port_range", "1024 65535")
	writeSysctl(t, l, lab.Ant, "net.ipv4.tcp_tw_reuse", "1")
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	const floorMiB = 32
	srv := startServer(t, l, "--time-wait", "1s", "--control", ctl, "--gc-floor", fmt.Sprint(floorMiB))
	pid := srv.cmd.Process.Pid
	goroutines := func() int { return int(counterMap(t, ctl)["go.goroutines"]) }
	g0, rss0 := goroutines(), readVmRSS(t, pid)
	// settled waits until the server holds no connection and its
	// goroutines are back to g0 (or 5s pass), and returns the count.
	settled := func() int {
		var g int
		waitUntil(5*time.Second, func() bool {
			m := counterMap(t, ctl)
			g = int(m["go.goroutines"])
			return m["tcp.current_established"] == 0 && g <= g0
		})
		return g
	}
	var rss1, g1 int
	var rssMax int
	start := time.Now()
	for r := 1; r <= rounds; r++ {
		if err := churn(l, conns, 16); err != nil {
			t.Fatalf("round %d: %v", r, err)
		}
		g := settled()
		rss := readVmRSS(t, pid)
		t.Logf("round %d: %d connections, goroutines %d, VmRSS %d KiB", r, conns, g, rss)
		if r == 1 {
			rss1, g1 = rss, g
		}
		rssMax = max(rssMax, rss)
	}
	took := time.Since(start)
	gN, rssN := settled(), readVmRSS(t, pid)
	t.Logf("FIGURE %d x %d connections in %v (%.0f/s): goroutines %d before, %d after round 1, %d after; VmRSS %d KiB before, %d after round 1, %d after (max %d)",
		rounds, conns, took.Round(time.Millisecond), float64(rounds*conns)/took.Seconds(), g0, g1, gN, rss0, rss1, rssN, rssMax)
	if gN > g0 {
		t.Errorf("goroutines %d after the churn, %d before: leaked", gN, g0)
	}
	if lim := rss1 + rss1/5 + 4<<10; rssN > lim {
		t.Errorf("VmRSS %d KiB after %d rounds, %d after the first: want at most %d (first round + 20%% + 4 MiB)", rssN, rounds, rss1, lim)
	}
	if rssN-rss0 > (16+floorMiB)<<10 {
		t.Errorf("VmRSS %d KiB after the churn, %d before: want less than %d MiB growth (16, and the heap floor's %d)", rssN, rss0, 16+floorMiB, floorMiB)
	}
	if n := countLines(srv.stdout.String(), " disconnected"); n != rounds*conns {
		t.Errorf("%d disconnect lines for %d connections", n, rounds*conns)
	}
}

// TestUserTimeoutKernelStack: --user-timeout sets TCP_USER_TIMEOUT on the
// kernel's listener too (accepted sockets inherit it): a client that
// never reads is dropped.
func TestUserTimeoutKernelStack(t *testing.T) {
	l := newLab(t)
	const uto = 3 * time.Second
	srv := startIn(t, l, lab.Apple, bin("tcp-upper-server"), "--stack", "kernel", "--user-timeout", uto.String())
	if !srv.stdout.waitFor("waiting for connections...", 10*time.Second) {
		t.Fatalf("server did not start: %s", srv.stderr.String())
	}
	c := dialAnt(t, l, net.JoinHostPort(lab.AppleAddr.Addr().String(), fmt.Sprint(lab.Port)))
	peer := c.LocalAddr().String()
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	for i := 0; i < 1<<14; i++ { // until blocked, at most 1 GiB
		c.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := c.Write(chunk); err != nil {
			break
		}
	}
	blockedAt := time.Now()
	if !srv.stdout.waitFor(peer+" disconnected", uto+5*time.Second) {
		t.Fatalf("the kernel stack still serves the non-reader %v after it blocked (--user-timeout %v)", time.Since(blockedAt).Round(time.Millisecond), uto)
	}
	t.Logf("FIGURE kernel stack: the non-reader was disconnected %v after its writes blocked (--user-timeout %v)", time.Since(blockedAt).Round(time.Millisecond), uto)
}
