// Package lab builds the seed's topology in network namespaces made for it:
//
//	 ant (netns NAME-ant)              apple (netns NAME-apple)
//	┌───────────────────┐            ┌───────────────────────────────────────────┐
//	│ client            │            │ forwarding on                             │
//	│ eth0 10.0.1.2/24 ─┼── veth ────┼─ eth0 10.0.1.1/24     tun0 10.0.2.1/24 ─┐ │
//	│ default via       │            │                                          │ │
//	│   10.0.1.1        │            │     tcp-upper-server (gVisor) 10.0.2.2 ◄─┘ │
//	└───────────────────┘            └───────────────────────────────────────────┘
//
// Every address lives inside the two namespaces; nothing is added to the
// root namespace. Several labs run side by side under different names.
package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tcp-upper/tcp-upper/internal/netnsx"
	"github.com/tcp-upper/tcp-upper/tun"
)

// The seed's addresses.
var (
	AntAddr    = netip.MustParsePrefix("10.0.1.2/24")
	AppleAddr  = netip.MustParsePrefix("10.0.1.1/24")
	TunAddr    = netip.MustParsePrefix("10.0.2.1/24")
	ServerAddr = netip.MustParsePrefix("10.0.2.2/24")
	// ClientStackNet is where a client on its own user-space stack lives
	// (tcp-upper-client --stack netstack in ant): ant forwards it and apple
	// routes it back through ant.
	ClientStackNet = netip.MustParsePrefix("10.0.3.0/24")
)

// Host names.
const (
	Ant   = "ant"
	Apple = "apple"
)

// Port is the lab server's port.
const Port = 9999

// NetNSDir is where named network namespaces are bound (as ip netns does).
const NetNSDir = "/var/run/netns"

// DefaultName is the name of the lab when none is given.
const DefaultName = "tcpu"

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,19}$`)

// Lab is one instance of the topology.
type Lab struct {
	Name string
	log  *slog.Logger
}

// New returns the lab called name (which may or may not be up).
func New(name string, log *slog.Logger) (*Lab, error) {
	if !nameRE.MatchString(name) {
		return nil, fmt.Errorf("bad lab name %q: use 1-20 lowercase letters, digits and '-'", name)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Lab{Name: name, log: log}, nil
}

// NetNS is the namespace name of host (ant or apple).
func (l *Lab) NetNS(host string) string { return l.Name + "-" + host }

// NetNSPath is the bind-mount path of host's namespace.
func (l *Lab) NetNSPath(host string) string { return filepath.Join(NetNSDir, l.NetNS(host)) }

// StateDir holds the lab's server pid and log.
func (l *Lab) StateDir() string { return filepath.Join("/run/tcp-upper", "lab-"+l.Name) }

// OpenServerTUN creates the server's TUN in apple as the lab's server has
// it: tun0, 10.0.2.1/24 on the kernel side, MTU 1500, with offloads unless
// plain. For programs that run the server's stack in-process (the demo, the
// experiments).
func (l *Lab) OpenServerTUN(log *slog.Logger, plain bool) (*tun.Linux, error) {
	return tun.Open(tun.Config{Name: "tun0", MTU: 1500, Addr: TunAddr, NetNS: l.NetNSPath(Apple), Offload: !plain}, log)
}

// ControlPath is the control socket of the server StartServer starts.
func (l *Lab) ControlPath() string { return filepath.Join(l.StateDir(), "server.sock") }

// CheckHost returns an error for a host name that is not ant or apple.
func CheckHost(host string) error {
	if host != Ant && host != Apple {
		return fmt.Errorf("unknown host %q: the lab has ant (the client) and apple (the server)", host)
	}
	return nil
}

// Exists reports whether the lab's namespaces exist.
func (l *Lab) Exists() bool {
	for _, h := range []string{Ant, Apple} {
		if _, err := os.Stat(l.NetNSPath(h)); err == nil {
			return true
		}
	}
	return false
}

// CheckPrivileges returns an error naming the fix when we cannot build
// namespaces.
func CheckPrivileges() error { return NeedPrivileges("building the lab") }

// NeedPrivileges is CheckPrivileges for what (exec, down...), which the
// error names.
func NeedPrivileges(what string) error {
	if os.Geteuid() == 0 {
		return nil
	}
	var hdr unix.CapUserHeader
	var data [2]unix.CapUserData
	hdr.Version = unix.LINUX_CAPABILITY_VERSION_3
	if err := unix.Capget(&hdr, &data[0]); err == nil {
		has := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
		if has(unix.CAP_SYS_ADMIN) && has(unix.CAP_NET_ADMIN) {
			return nil
		}
	}
	return fmt.Errorf("%s needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN for network namespaces): run it with sudo", what)
}

// Up creates the namespaces, the veth between them, addresses, routes and
// forwarding. It does not start the server (see StartServer). On failure it
// removes what it made.
func (l *Lab) Up() (err error) {
	if err := CheckPrivileges(); err != nil {
		return err
	}
	if l.Exists() {
		return fmt.Errorf("lab %q is already up (namespaces %s and %s exist): use it, or take it down with tcp-upper-lab down --name %s", l.Name, l.NetNS(Ant), l.NetNS(Apple), l.Name)
	}
	defer func() {
		if err != nil {
			l.Down()
		}
	}()
	for _, h := range []string{Ant, Apple} {
		if err := newNamedNetNS(l.NetNS(h)); err != nil {
			return fmt.Errorf("create network namespace %s: %w", l.NetNS(h), err)
		}
	}
	apple, err := netns.GetFromPath(l.NetNSPath(Apple))
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", l.NetNS(Apple), err)
	}
	defer apple.Close()
	ant, err := netns.GetFromPath(l.NetNSPath(Ant))
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", l.NetNS(Ant), err)
	}
	defer ant.Close()

	ha, err := netlink.NewHandleAt(ant)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", l.NetNS(Ant), err)
	}
	defer ha.Close()
	hp, err := netlink.NewHandleAt(apple)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", l.NetNS(Apple), err)
	}
	defer hp.Close()

	// One veth, created in ant with its peer born in apple: both ends are
	// called eth0, each in its own host, and no name ever exists in the
	// root namespace.
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(apple))}
	if err := ha.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth ant<->apple: %w", err)
	}
	if err := configureHost(ha, AntAddr); err != nil {
		return fmt.Errorf("configure ant: %w", err)
	}
	if err := configureHost(hp, AppleAddr); err != nil {
		return fmt.Errorf("configure apple: %w", err)
	}
	antLink, err := ha.LinkByName("eth0")
	if err != nil {
		return err
	}
	gw := net.IP(AppleAddr.Addr().AsSlice())
	if err := ha.RouteAdd(&netlink.Route{LinkIndex: antLink.Attrs().Index, Gw: gw}); err != nil {
		return fmt.Errorf("ant: default route via %s: %w", AppleAddr.Addr(), err)
	}
	appleLink, err := hp.LinkByName("eth0")
	if err != nil {
		return err
	}
	if err := hp.RouteAdd(&netlink.Route{LinkIndex: appleLink.Attrs().Index, Dst: ipNet(ClientStackNet), Gw: net.IP(AntAddr.Addr().AsSlice())}); err != nil {
		return fmt.Errorf("apple: route %s via ant: %w", ClientStackNet, err)
	}
	for _, h := range []string{Ant, Apple} {
		if err := netnsx.Do(l.NetNSPath(h), func() error {
			return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
		}); err != nil {
			return fmt.Errorf("%s: enable forwarding: %w", h, err)
		}
	}
	l.log.Info("lab up", "name", l.Name, "ant", l.NetNS(Ant), "apple", l.NetNS(Apple))
	return nil
}

func configureHost(h *netlink.Handle, addr netip.Prefix) error {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := h.LinkSetUp(lo); err != nil {
		return err
	}
	eth, err := h.LinkByName("eth0")
	if err != nil {
		return err
	}
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return fmt.Errorf("address %s: %w", addr, err)
	}
	return h.LinkSetUp(eth)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}
}

// newNamedNetNS creates a namespace bound at NetNSDir/name, as ip netns add
// does, without moving any other thread.
func newNamedNetNS(name string) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if err == nil {
		ns.Close()
	}
	if serr := netns.Set(orig); serr != nil {
		return fmt.Errorf("return to original namespace: %w", serr) // thread stays locked and dies with the goroutine
	}
	runtime.UnlockOSThread()
	return err
}

// Down stops the lab's server (if Up's StartServer started one) and deletes
// both namespaces, which takes the veth and the TUN with them. It is safe
// on a lab that is partly or not at all up.
func (l *Lab) Down() error {
	var errs []error
	if err := l.StopServer(); err != nil {
		errs = append(errs, err)
	}
	for _, h := range []string{Ant, Apple} {
		p := l.NetNSPath(h)
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err := netns.DeleteNamed(l.NetNS(h)); err != nil {
			// A bind mount that is already gone still leaves the file.
			if rerr := os.Remove(p); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("delete namespace %s: %w", l.NetNS(h), err))
			}
		}
	}
	os.RemoveAll(l.StateDir())
	return errors.Join(errs...)
}

// Do runs fn with the calling thread in host's namespace: sockets and
// devices fn creates live there.
func (l *Lab) Do(host string, fn func() error) error {
	if err := CheckHost(host); err != nil {
		return err
	}
	return netnsx.Do(l.NetNSPath(host), fn)
}

// Start starts cmd inside host's namespace. The child is forked from a
// thread that sits in the namespace, so it is born there.
func (l *Lab) Start(host string, cmd *exec.Cmd) error {
	return l.Do(host, cmd.Start)
}

// Exec replaces this process by argv running inside host's namespace, as
// ip netns exec does. It returns only on error.
func (l *Lab) Exec(host string, argv []string) error {
	if err := CheckHost(host); err != nil {
		return err
	}
	if len(argv) == 0 {
		return errors.New("no command given: tcp-upper-lab exec ant|apple CMD [ARGS...]")
	}
	path, err := lookPath(argv[0])
	if err != nil {
		return err
	}
	if !l.Exists() {
		return fmt.Errorf("lab %q is not up: run tcp-upper-lab up --name %s first", l.Name, l.Name)
	}
	target, err := netns.GetFromPath(l.NetNSPath(host))
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", l.NetNS(host), err)
	}
	// As ip netns exec does: a private mount namespace for this thread (it
	// must first stop sharing its filesystem context with the other
	// threads), then /sys mounted afresh so /sys/class/net shows the
	// host's own interfaces. Then exec from this thread.
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_FS); err == nil {
		if err := unix.Unshare(unix.CLONE_NEWNS); err == nil {
			unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, "")
		}
	}
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter namespace %s: %w", l.NetNS(host), err)
	}
	if err := unix.Unmount("/sys", unix.MNT_DETACH); err == nil {
		unix.Mount(l.NetNS(host), "/sys", "sysfs", 0, "")
	}
	err = unix.Exec(path, argv, os.Environ())
	return fmt.Errorf("exec %s: %w", strings.Join(argv, " "), err)
}

// lookPath finds a program next to the running one first (so the lab's
// sibling programs work without being on PATH), then on PATH.
func lookPath(name string) (string, error) {
	if !strings.Contains(name, "/") {
		if self, err := os.Executable(); err == nil {
			p := filepath.Join(filepath.Dir(self), name)
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
				return p, nil
			}
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s: command not found (not next to this program, nor on PATH)", name)
	}
	return p, nil
}

// HostHere is the lab host (ant or apple) whose network namespace the
// calling thread is in, or "" outside every lab's: for the events of a
// program run in the lab (tcp-upper-lab server start runs the server in
// apple).
func HostHere() string {
	_, host := labOf("/proc/thread-self/ns/net")
	return host
}

// OfPID returns the lab whose namespace holds process pid, and which host
// it is; nil outside every lab's.
func OfPID(pid int) (*Lab, string) {
	name, host := labOf(fmt.Sprintf("/proc/%d/ns/net", pid))
	if name == "" {
		return nil, ""
	}
	l, err := New(name, nil)
	if err != nil {
		return nil, ""
	}
	return l, host
}

// labOf finds the lab namespace the namespace file nsFile is: its lab's
// name and host, or "".
func labOf(nsFile string) (name, host string) {
	var self unix.Stat_t
	if err := unix.Stat(nsFile, &self); err != nil {
		return "", ""
	}
	ents, err := os.ReadDir(NetNSDir)
	if err != nil {
		return "", ""
	}
	for _, e := range ents {
		var st unix.Stat_t
		if unix.Stat(filepath.Join(NetNSDir, e.Name()), &st) != nil || st.Ino != self.Ino || st.Dev != self.Dev {
			continue
		}
		for _, h := range []string{Ant, Apple} {
			if n, ok := strings.CutSuffix(e.Name(), "-"+h); ok && nameRE.MatchString(n) {
				return n, h
			}
		}
	}
	return "", ""
}
