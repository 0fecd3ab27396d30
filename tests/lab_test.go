package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/lab"
)

// TestSeedSession runs the seed's session with the real programs: the
// client in ant (kernel TCP, through tcp-upper-lab exec), the server on our
// stack in apple, and checks every line both print.
func TestSeedSession(t *testing.T) {
	l := newLab(t)
	srv := startServer(t, l)

	cmd := exec.Command(bin("tcp-upper-lab"), "exec", "--name", l.Name, "ant", bin("tcp-upper-client"), "-i", lab.ServerAddr.Addr().String())
	cmd.Stdin = strings.NewReader("abc\nhello world!\nfasionchan.com\n")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("client: %v, stderr %q", err, stderr.String())
	}
	if got, want := stdout.String(), "ABC\nHELLO WORLD!\nFASIONCHAN.COM\n"; got != want {
		t.Fatalf("client printed %q, want %q", got, want)
	}
	if stderr.Len() != 0 {
		t.Errorf("client stderr %q", stderr.String())
	}
	if !srv.stdout.waitFor("disconnected", 5*time.Second) {
		t.Fatalf("server did not report the disconnect: %q", srv.stdout.String())
	}
	re := regexp.MustCompile(`^listening at port: 0\.0\.0\.0:9999, waiting for connections\.\.\.\n` +
		`10\.0\.1\.2:(\d+) connected\n10\.0\.1\.2:(\d+) disconnected\n$`)
	m := re.FindStringSubmatch(srv.stdout.String())
	if m == nil || m[1] != m[2] {
		t.Fatalf("server printed %q", srv.stdout.String())
	}
	if code := srv.stop(t, syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Fatalf("server exit %d after SIGTERM, stderr %q", code, srv.stderr.String())
	}
}

// TestBinaryEcho sends 1 MiB of random binary bytes (NULs, 0xff, UTF-8
// fragments, everything) and checks the echo byte for byte.
func TestBinaryEcho(t *testing.T) { forModes(t, testBinaryEcho) }

func testBinaryEcho(t *testing.T, mode []string) {
	l := newLab(t)
	startServer(t, l, mode...)
	data := make([]byte, 1<<20)
	rand.Read(data)
	conn := dialAnt(t, l, serverAddr)
	var echo []byte
	var rerr error
	done := make(chan struct{})
	go func() {
		echo, rerr = io.ReadAll(io.LimitReader(conn, int64(len(data))))
		close(done)
	}()
	if _, err := conn.Write(data); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("echo did not complete in 30s")
	}
	if rerr != nil {
		t.Fatal(rerr)
	}
	want := bytes.Clone(data)
	app.Upper(want)
	if !bytes.Equal(echo, want) {
		for i := range want {
			if i >= len(echo) || echo[i] != want[i] {
				t.Fatalf("echo differs at byte %d of %d (got %d bytes)", i, len(want), len(echo))
			}
		}
	}
}

// TestConcurrentClients runs 50 clients at once, each with its own data,
// and checks that each gets exactly its own reply.
func TestConcurrentClients(t *testing.T) { forModes(t, testConcurrentClients) }

func testConcurrentClients(t *testing.T, mode []string) {
	l := newLab(t)
	srv := startServer(t, l, mode...)
	const n = 50
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = dialAnt(t, l, serverAddr)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := 0; round < 20; round++ {
				msg := []byte(fmt.Sprintf("client %02d round %02d: the quick brown fox\n", i, round))
				if _, err := c.Write(msg); err != nil {
					errs <- err
					return
				}
				got := make([]byte, len(msg))
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.ReadFull(c, got); err != nil {
					errs <- fmt.Errorf("client %d: %w", i, err)
					return
				}
				if want := bytes.ToUpper(msg); !bytes.Equal(got, want) {
					errs <- fmt.Errorf("client %d got %q, want %q", i, got, want)
					return
				}
			}
			c.Close()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	want := 2*n + 1
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(srv.stdout.String(), "\n") < want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	out := srv.stdout.String()
	if c, d := strings.Count(out, " connected\n"), strings.Count(out, " disconnected\n"); c != n || d != n {
		t.Fatalf("server printed %d connected and %d disconnected lines, want %d each", c, d, n)
	}
}

// TestNoKernelListener: while our server runs, the kernel in apple has no
// listener on 9999 (ss -ntl), yet the port answers.
func TestNoKernelListener(t *testing.T) {
	requireTool(t, "ss")
	l := newLab(t)
	startServer(t, l)
	out := runIn(t, l, lab.Apple, "ss", "-ntl")
	if !strings.HasPrefix(out, "State") {
		t.Fatalf("ss -ntl printed %q", out)
	}
	if strings.Contains(out, ":9999") {
		t.Fatalf("the kernel listens on 9999 in apple:\n%s", out)
	}
	c := dialAnt(t, l, serverAddr) // and yet it answers
	c.Write([]byte("x"))
	b := make([]byte, 1)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, b); err != nil || b[0] != 'X' {
		t.Fatalf("reply %q, %v", b, err)
	}
}

// tcpdumpTun starts tcpdump on apple's tun0 (the server's port) and waits
// until it captures.
func tcpdumpTun(t *testing.T, l *lab.Lab) *proc {
	t.Helper()
	requireTool(t, "tcpdump")
	dump := startIn(t, l, lab.Apple, "tcpdump", "-l", "-n", "-i", "tun0", "tcp", "port", "9999")
	if !dump.stderr.waitFor("listening on", 10*time.Second) {
		t.Fatalf("tcpdump did not start: %q", dump.stderr.String())
	}
	return dump
}

// TestTcpdumpSeesSession: real tcpdump on the TUN in apple sees the
// handshake, data and the close.
func TestTcpdumpSeesSession(t *testing.T) {
	requireTool(t, "tcpdump")
	forModes(t, testTcpdumpSeesSession)
}

func testTcpdumpSeesSession(t *testing.T, mode []string) {
	l := newLab(t)
	srv := startServer(t, l, mode...)
	dump := tcpdumpTun(t, l)
	c := dialAnt(t, l, serverAddr)
	local := c.LocalAddr().String()
	if err := app.Session(c, app.NewPipeLines(strings.NewReader("abc\n")), io.Discard); err != nil {
		t.Fatal(err)
	}
	srv.stdout.waitFor(local+" disconnected", 5*time.Second)
	cli := strings.Replace(local, ":", ".", 1)
	// The server's FIN is the last segment checked: wait until tcpdump
	// has printed it.
	dump.stdout.waitFor("10.0.2.2.9999 > "+cli+": Flags [F.],", 5*time.Second)
	dump.stop(t, syscall.SIGINT, 10*time.Second)
	out := dump.stdout.String()
	for _, want := range []string{
		cli + " > 10.0.2.2.9999: Flags [S],",
		"10.0.2.2.9999 > " + cli + ": Flags [S.],",
		cli + " > 10.0.2.2.9999: Flags [.], ack 1,",
		cli + " > 10.0.2.2.9999: Flags [P.], seq 1:5,",
		"10.0.2.2.9999 > " + cli + ": Flags [P.], seq 1:5,",
		cli + " > 10.0.2.2.9999: Flags [F.],",
		"10.0.2.2.9999 > " + cli + ": Flags [F.],",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("tcpdump output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("tcpdump printed:\n%s", out)
	}
}

// TestSIGTERM: with a client connected, SIGTERM makes the server close it
// with a FIN (the client reads EOF, not a reset), exit 0 and delete the
// TUN it created.
func TestSIGTERM(t *testing.T) {
	requireTool(t, "tcpdump")
	l := newLab(t)
	srv := startServer(t, l)
	dump := tcpdumpTun(t, l)
	c := dialAnt(t, l, serverAddr)
	local := strings.Replace(c.LocalAddr().String(), ":", ".", 1)
	c.Write([]byte("hi"))
	b := make([]byte, 2)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	if code := srv.stop(t, syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM; stderr %q", code, srv.stderr.String())
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(b)
	if err != io.EOF {
		t.Fatalf("client read after SIGTERM: %d bytes, %v; want EOF (a FIN, not a reset)", n, err)
	}
	if !strings.Contains(srv.stdout.String(), "disconnected") {
		t.Errorf("server did not print the disconnect: %q", srv.stdout.String())
	}
	// The client read our FIN (seq 3, after the 2-byte reply); its ACK
	// of it is the last segment.
	dump.stdout.waitFor(local+" > 10.0.2.2.9999: Flags [.], ack 4,", 5*time.Second)
	dump.stop(t, syscall.SIGINT, 10*time.Second)
	if out := dump.stdout.String(); !strings.Contains(out, "10.0.2.2.9999 > "+local+": Flags [F.]") || strings.Contains(out, "10.0.2.2.9999 > "+local+": Flags [R") {
		t.Errorf("want a FIN and no RST from the server; tcpdump printed:\n%s", out)
	}
	if tunExists(t, l, "tun0") {
		t.Fatal("tun0 still exists in apple after the server exited")
	}
}

// persistentTUN makes tt (a persistent TUN without packet information) in
// apple as `ip tuntap add` would, with 10.0.2.1/24 and up, and returns its
// index. netlink opens /dev/net/tun in the calling thread's namespace,
// whatever the handle: it is created from inside apple.
func persistentTUN(t *testing.T, l *lab.Lab, tt *netlink.Tuntap) int {
	t.Helper()
	tt.Mode, tt.Flags = netlink.TUNTAP_MODE_TUN, netlink.TUNTAP_NO_PI
	var ifindex int
	err := l.Do(lab.Apple, func() error {
		if err := netlink.LinkAdd(tt); err != nil {
			return err
		}
		for _, f := range tt.Fds {
			f.Close()
		}
		link, err := netlink.LinkByName(tt.Name)
		if err != nil {
			return err
		}
		ifindex = link.Attrs().Index
		if tt.MTU != 0 {
			if err := netlink.LinkSetMTU(link, tt.MTU); err != nil {
				return err
			}
		}
		addr, _ := netlink.ParseAddr(lab.TunAddr.String())
		if err := netlink.AddrAdd(link, addr); err != nil {
			return err
		}
		return netlink.LinkSetUp(link)
	})
	if err != nil {
		t.Fatalf("persistent TUN %s in apple: %v", tt.Name, err)
	}
	return ifindex
}

// TestAttachPersistentTUN: a persistent TUN configured by someone else is
// used as it is with --tun-addr none and left as it was after SIGTERM.
func TestAttachPersistentTUN(t *testing.T) {
	l := newLab(t)
	ifindex := persistentTUN(t, l, &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "up0", MTU: 1400}})
	// With offloads, then without: offloads belong to the device, and the
	// second server must not inherit the first one's (the kernel would
	// hand it 64 KiB segments its plain reads cannot take).
	for _, mode := range linkModes {
		srv := startIn(t, l, lab.Apple, bin("tcp-upper-server"), append([]string{"--tun", "up0", "--tun-addr", "none"}, mode.flags...)...)
		if !srv.stdout.waitFor("waiting for connections", 10*time.Second) {
			t.Fatalf("%s server: %q %q", mode.name, srv.stdout.String(), srv.stderr.String())
		}
		c := dialAnt(t, l, serverAddr)
		data := bytes.Repeat([]byte("persist "), 128<<10) // 1 MiB: large segments if offloads were on
		go c.Write(data)
		b := make([]byte, len(data))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, b); err != nil || !bytes.Equal(b, bytes.ToUpper(data)) {
			t.Fatalf("%s: echo of 1 MiB: %v", mode.name, err)
		}
		c.Close()
		if code := srv.stop(t, syscall.SIGTERM, 10*time.Second); code != 0 {
			t.Fatalf("%s: exit %d: %q", mode.name, code, srv.stderr.String())
		}
	}
	inNS(t, l, lab.Apple, func(h *netlink.Handle) {
		link, err := h.LinkByName("up0")
		if err != nil {
			t.Fatalf("the persistent TUN is gone after the server exited: %v", err)
		}
		if link.Attrs().Index != ifindex || link.Attrs().MTU != 1400 {
			t.Errorf("TUN changed: index %d mtu %d", link.Attrs().Index, link.Attrs().MTU)
		}
		addrs, _ := h.AddrList(link, netlink.FAMILY_V4)
		if len(addrs) != 1 || addrs[0].IPNet.String() != "10.0.2.1/24" {
			t.Errorf("TUN addresses changed: %v", addrs)
		}
	})
}

func inNS(t *testing.T, l *lab.Lab, host string, fn func(h *netlink.Handle)) {
	t.Helper()
	ns, err := netns.GetFromPath(l.NetNSPath(host))
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	fn(h)
}

func tunExists(t *testing.T, l *lab.Lab, name string) bool {
	exists := false
	inNS(t, l, lab.Apple, func(h *netlink.Handle) {
		_, err := h.LinkByName(name)
		exists = err == nil
	})
	return exists
}

// runIn runs a program in host and returns its output.
func runIn(t *testing.T, l *lab.Lab, host, name string, args ...string) string {
	t.Helper()
	p := startIn(t, l, host, name, args...)
	p.wait(t, 10*time.Second)
	return p.stdout.String() + p.stderr.String()
}

// clientIn runs tcp-upper-client in ant with stdin and returns its exit code,
// stdout and stderr.
func clientIn(t *testing.T, l *lab.Lab, stdin string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(bin("tcp-upper-client"), args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := l.Start(lab.Ant, cmd); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		cmd.Process.Kill()
		<-done
		t.Fatalf("client did not exit in 30s: %q", stderr.String())
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

// TestClientOnNetstack: the client on its own user-space stack in ant (TUN
// tun1, 10.0.3.2) talks to the server on ours; the TUN is gone afterwards.
func TestClientOnNetstack(t *testing.T) {
	l := newLab(t)
	srv := startServer(t, l)
	code, stdout, stderr := clientIn(t, l, "abc\nhello world!\n", "--stack", "netstack", "-i", "10.0.2.2")
	if code != 0 || stdout != "ABC\nHELLO WORLD!\n" {
		t.Fatalf("exit %d stdout %q stderr %q", code, stdout, stderr)
	}
	if !srv.stdout.waitFor("disconnected", 5*time.Second) || !strings.Contains(srv.stdout.String(), "10.0.3.2:") {
		t.Fatalf("server saw %q", srv.stdout.String())
	}
	exists := false
	inNS(t, l, lab.Ant, func(h *netlink.Handle) {
		_, err := h.LinkByName("tun1")
		exists = err == nil
	})
	if exists {
		t.Fatal("the client's tun1 is left in ant")
	}
}
