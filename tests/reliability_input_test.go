package tests

// Reliability: lost devices, signals and privileges (docs/RELIABILITY.md,
// "Input, devices, signals, privileges").

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/internal/leakcheck"
	"github.com/tcp-upper/tcp-upper/lab"
	"github.com/tcp-upper/tcp-upper/netstack"
)

// echo sends msg on c and checks the uppercased reply.
func echo(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("send %q: %v", msg, err)
	}
	b := make([]byte, len(msg))
	if _, err := io.ReadFull(c, b); err != nil || string(b) != strings.ToUpper(msg) {
		t.Fatalf("reply to %q: %q %v", msg, b, err)
	}
}

// deleteLink deletes a device of host with netlink, as `ip link del` would.
func deleteLink(t *testing.T, l *lab.Lab, host, name string) {
	t.Helper()
	inNS(t, l, host, func(h *netlink.Handle) {
		link, err := h.LinkByName(name)
		if err != nil {
			t.Fatalf("find %s: %v", name, err)
		}
		if err := h.LinkDel(link); err != nil {
			t.Fatalf("delete %s: %v", name, err)
		}
	})
}

// TestTunDeletedUnderServer: `ip link del tun0` under a server with a
// client connected: one line naming the cause, exit 1, within a second.
func TestTunDeletedUnderServer(t *testing.T) {
	l := newLab(t)
	srv := startServer(t, l)
	c := dialAnt(t, l, serverAddr)
	echo(t, c, "before")
	start := time.Now()
	deleteLink(t, l, lab.Apple, "tun0")
	select {
	case <-srv.done:
	case <-time.After(5 * time.Second):
		t.Fatalf("server still running 5s after its TUN was deleted; stderr %q", srv.stderr.String())
	}
	took := time.Since(start)
	t.Logf("FIGURE server exited %v after the TUN was deleted", took.Round(time.Millisecond))
	if code := srv.cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if took > time.Second {
		t.Errorf("took %v to exit, want at most 1s", took)
	}
	oneLine(t, "TUN deleted", srv.stderr.String(), "tcp-upper-server", `read tun "tun0": the device was deleted underneath the server`)
}

// TestTunDeletedInProcess: the same in-process, so goroutines can be
// counted: the stack reports the lost device within a second, and after
// the server's shutdown nothing of the stack, the service or the device
// is left running.
func TestTunDeletedInProcess(t *testing.T) {
	leakcheck.Check(t)
	l := newLab(t)
	dev, err := l.OpenServerTUN(nil, false)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	linkErr := make(chan error, 1)
	st, err := netstack.New(dev, netstack.Options{Addr: lab.ServerAddr, OnLinkError: func(err error) { linkErr <- err }}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ln, err := st.Listen(lab.Port)
	if err != nil {
		t.Fatal(err)
	}
	srv := app.NewServer(ln, app.ServerOptions{}, nil)
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	c := dialAnt(t, l, serverAddr)
	echo(t, c, "before")

	start := time.Now()
	deleteLink(t, l, lab.Apple, "tun0")
	select {
	case err := <-linkErr:
		took := time.Since(start)
		t.Logf("FIGURE link error %v after the delete: %v", took.Round(time.Millisecond), err)
		if !strings.Contains(err.Error(), "deleted underneath") {
			t.Errorf("error %q does not name the cause", err)
		}
		if took > time.Second {
			t.Errorf("took %v to notice, want at most 1s", took)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no link error 5s after the TUN was deleted")
	}
	// What tcp-upper-server does next.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	st.Close()
	dev.Close()
	select {
	case <-served:
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the stack closed")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("shutdown after the delete took %v", took)
	}
}

// TestSignalWith100Connections: SIGTERM or SIGINT with 100 kernel clients
// connected: every client reads EOF (our FIN, not a reset) and closes, the
// server exits 0 within 2 s, and its pcap file reads back with a FIN from
// the server for each connection and no RST.
func TestSignalWith100Connections(t *testing.T) {
	requireTool(t, "tcpdump")
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			const n = 100
			l := newLab(t)
			capture := filepath.Join(t.TempDir(), "cap.pcap")
			srv := startServer(t, l, "--pcap", capture)
			conns := make([]net.Conn, n)
			for i := range conns {
				conns[i] = dialAnt(t, l, serverAddr)
				echo(t, conns[i], fmt.Sprintf("conn %d", i))
			}
			// Each client does what tcp-upper-client does: read until the
			// server's FIN, then close its side (so the server's stack
			// sees the connection through, without waiting out its 5 s
			// drain on FIN-WAIT-2).
			readErr := make(chan error, n)
			for _, c := range conns {
				go func() {
					c.SetReadDeadline(time.Now().Add(10 * time.Second))
					_, err := c.Read(make([]byte, 1))
					c.Close()
					readErr <- err
				}()
			}
			start := time.Now()
			code := srv.stop(t, sig, 10*time.Second)
			took := time.Since(start)
			t.Logf("FIGURE %v with %d connections: exit %d after %v", sig, n, code, took.Round(time.Millisecond))
			if code != 0 {
				t.Fatalf("exit %d, want 0; stderr %q", code, srv.stderr.String())
			}
			if took > 2*time.Second {
				t.Errorf("took %v to exit, want at most 2s", took)
			}
			eof := 0
			for i := 0; i < n; i++ {
				switch err := <-readErr; {
				case err == io.EOF:
					eof++
				case errors.Is(err, syscall.ECONNRESET):
					t.Errorf("a client was reset, want a FIN")
				default:
					t.Errorf("a client read %v, want EOF", err)
				}
			}
			if eof != n {
				t.Fatalf("%d of %d clients read EOF", eof, n)
			}
			if got := strings.Count(srv.stdout.String(), " disconnected"); got != n {
				t.Errorf("server printed %d disconnects, want %d", got, n)
			}
			read := func(filter string) []string {
				out, err := exec.Command("tcpdump", "-nn", "-r", capture, filter).Output()
				if err != nil {
					t.Fatalf("tcpdump -r %s: %v", capture, err)
				}
				return strings.Split(strings.TrimSpace(string(out)), "\n")
			}
			fins := read("src host 10.0.2.2 and tcp[tcpflags] & tcp-fin != 0")
			rsts := read("src host 10.0.2.2 and tcp[tcpflags] & tcp-rst != 0")
			if len(fins) < n {
				t.Errorf("pcap has %d FINs from the server, want at least %d", len(fins), n)
			}
			if len(rsts) != 1 || rsts[0] != "" {
				// One connection's whole story tells why.
				port := strings.TrimSuffix(strings.Fields(rsts[0])[4], ":")
				port = port[strings.LastIndex(port, ".")+1:]
				t.Errorf("pcap has %d RSTs from the server; port %s saw:\n%s", len(rsts), port, strings.Join(read("port "+port), "\n"))
			}
			t.Logf("FIGURE pcap: %d FINs from the server, no RST", len(fins))
		})
	}
}

// procStatus reads the Uid, Gid, Groups and CapEff lines of a process.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return m
}

// nobody is the unprivileged user the privilege tests run as.
const nobodyID = 65534

// TestServerUnprivilegedPersistentTUN: a persistent TUN made for nobody
// (netlink, Owner/Group, as `ip tuntap add mode tun user nobody`) serves
// a client with the server running as nobody, with no capabilities, and
// is left in place afterwards.
func TestServerUnprivilegedPersistentTUN(t *testing.T) {
	requireTool(t, "unshare")
	requireTool(t, "setpriv")
	requireTool(t, "mknod")
	l := newLab(t)
	persistentTUN(t, l, &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "utun0"}, Owner: nobodyID, Group: nobodyID})
	// Distributions make /dev/net/tun 0666; containers often leave it
	// 0600. A private mount namespace with a 0666 node of its own gives
	// the server what a normal host gives it, without touching ours. Then
	// setpriv becomes nobody (and so loses every capability) and execs the
	// server: the pid stays the server's.
	server := fmt.Sprintf("mount -t tmpfs -o mode=755 tmpfs /dev/net && mknod -m 0666 /dev/net/tun c 10 200 && "+
		"exec setpriv --reuid=%d --regid=%d --clear-groups %s --tun utun0 --tun-addr none --control none", nobodyID, nobodyID, bin("tcp-upper-server"))
	p := startIn(t, l, lab.Apple, "unshare", "-m", "sh", "-c", server)
	if !p.stdout.waitFor("waiting for connections", 10*time.Second) {
		t.Fatalf("server as nobody: %q %q", p.stdout.String(), p.stderr.String())
	}
	st := procStatus(t, p.cmd.Process.Pid)
	t.Logf("FIGURE server pid %d: Uid %s, CapEff %s", p.cmd.Process.Pid, st["Uid"], st["CapEff"])
	if st["Uid"] != "65534 65534 65534 65534" || st["CapEff"] != "0000000000000000" {
		t.Errorf("server runs with Uid %q CapEff %q, want nobody without capabilities", st["Uid"], st["CapEff"])
	}
	c := dialAnt(t, l, serverAddr)
	echo(t, c, "unprivileged")
	c.Close()
	if code := p.stop(t, syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Fatalf("exit %d: %q", code, p.stderr.String())
	}
	if !tunExists(t, l, "utun0") {
		t.Error("the persistent TUN is gone after the server exited")
	}
}

// TestServerDropsToUser: started as root with --user nobody, the server
// opens its TUN, control socket and pcap file, then runs as nobody (uid,
// gid, groups, no capabilities), serves, and on SIGTERM exits 0 with the
// TUN it created gone and the capture readable. Bad uses fail in one line.
func TestServerDropsToUser(t *testing.T) {
	requireTool(t, "tcpdump")
	l := newLab(t)
	capture := filepath.Join(t.TempDir(), "cap.pcap")
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	srv := startServer(t, l, "--user", "nobody", "--pcap", capture, "--control", ctl)
	pid := srv.cmd.Process.Pid
	// The drop happens right before the listening line is printed.
	st := procStatus(t, pid)
	t.Logf("FIGURE server pid %d: Uid %s, Gid %s, Groups %s, CapEff %s", pid, st["Uid"], st["Gid"], st["Groups"], st["CapEff"])
	for k, want := range map[string]string{
		"Uid": "65534 65534 65534 65534", "Gid": "65534 65534 65534 65534",
		"Groups": "65534", "CapEff": "0000000000000000", "CapPrm": "0000000000000000",
	} {
		if st[k] != want {
			t.Errorf("/proc/%d/status %s: %q, want %q", pid, k, st[k], want)
		}
	}
	c := dialAnt(t, l, serverAddr)
	echo(t, c, "dropped")
	// The control socket made before the drop still answers root.
	if out := labSS(t, ctl, "-tn"); !strings.Contains(out, "ESTAB") {
		t.Errorf("ss through the control socket: %q", out)
	}
	readErr := make(chan error, 1)
	go func() {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		c.Close()
		readErr <- err
	}()
	if code := srv.stop(t, syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Fatalf("exit %d: %q", code, srv.stderr.String())
	}
	if err := <-readErr; err != io.EOF {
		t.Errorf("client read %v, want EOF", err)
	}
	if tunExists(t, l, "tun0") {
		t.Error("tun0 left behind by the server that dropped to nobody")
	}
	out, err := exec.Command("tcpdump", "-nn", "-r", capture).Output()
	if err != nil || !strings.Contains(string(out), "Flags [P.]") {
		t.Errorf("pcap written after the drop: %v %q", err, out)
	}

	bad := startIn(t, l, lab.Apple, bin("tcp-upper-server"), "--user", "no-such-user-tcpu", "--control", "none")
	if code := bad.wait(t, 10*time.Second); code != 2 {
		t.Errorf("unknown user: exit %d, want 2", code)
	}
	oneLine(t, "unknown user", bad.stderr.String(), "tcp-upper-server", `bad --user "no-such-user-tcpu": no such user`)

	// Not root: the drop itself is refused, in one line.
	p := startAs(t, l, lab.Apple, &syscall.Credential{Uid: nobodyID, Gid: nobodyID}, bin("tcp-upper-server"), "--stack", "kernel", "-p", "19999", "--user", "root")
	if code := p.wait(t, 10*time.Second); code != 1 {
		t.Errorf("--user as nobody: exit %d, want 1", code)
	}
	oneLine(t, "not root", p.stderr.String(), "tcp-upper-server", "--user root: setgroups: operation not permitted: switching users needs the server to start as root")
}
