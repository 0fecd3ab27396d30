//go:build linux

package tun

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/songgao/water"
	"github.com/tcp-upper/tcp-upper/internal/netnsx"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// CloneDevice is the character device every TUN is opened through.
const CloneDevice = "/dev/net/tun"

// Config says which TUN to open and how to set up its kernel side.
type Config struct {
	// Name is the interface name, at most 15 bytes.
	Name string
	// MTU is put on the device. Zero keeps the device's own MTU (only
	// meaningful when attaching to an existing device).
	MTU int
	// Addr is the address for the kernel side of the device (for example
	// 10.0.2.1/24). The zero Prefix leaves the device's addresses, MTU and
	// link state exactly as they are: the device was configured by someone
	// else.
	Addr netip.Prefix
	// NetNS is the path of a network namespace to create the device in
	// (for example /var/run/netns/apple). Empty means our own namespace.
	NetNS string
	// Offload opens the device with IFF_VNET_HDR and turns on checksum
	// and TCP segmentation offload (TUNSETOFFLOAD): packets then carry a
	// virtio-net header and TCP segments up to 64 KiB cross the device in
	// one piece (see OffloadDevice). water cannot ask for this, so such a
	// device is opened with our own ioctl.
	Offload bool
}

// Linux is a TUN device opened through /dev/net/tun.
type Linux struct {
	name    string
	mtu     int
	file    *os.File
	created bool
	offload bool
	raw     syscall.RawConn // for readv and writev without water's file methods
	netns   string
	log     *slog.Logger

	// rd and wr are the read and the write in progress, kept here so that
	// neither allocates: a function literal over local variables, handed
	// to raw, escapes to the heap on every call (with the reader polling
	// an empty device, tens of thousands of times a second). readMu and
	// writeMu let one read and one write run at a time.
	readMu  sync.Mutex
	rd      rawRead
	writeMu sync.Mutex
	wr      rawWrite

	closeOnce sync.Once
	closeErr  error
	closed    atomic.Bool
}

// rawRead is one read(2) (readv(2) with the virtio-net header) for
// raw.Read.
type rawRead struct {
	hdr  [VnetHdrLen]byte
	iov  [2][]byte // hdr and the caller's buffer
	vnet bool      // with the header
	wait bool      // park in the netpoller on EAGAIN
	n    int
	err  error
	fn   func(fd uintptr) bool // do, bound once
}

func (r *rawRead) do(fd uintptr) bool {
	if r.vnet {
		r.n, r.err = unix.Readv(int(fd), r.iov[:])
	} else {
		r.n, r.err = unix.Read(int(fd), r.iov[1])
	}
	return !r.wait || (r.err != unix.EAGAIN && r.err != unix.EINTR)
}

// read reads into buf, with the header if vnet; it returns the bytes read
// (header included) and the header. d.readMu is held.
func (d *Linux) read(buf []byte, vnet, wait bool) (int, [VnetHdrLen]byte, error) {
	r := &d.rd
	if r.fn == nil {
		r.fn = r.do
	}
	r.iov = [2][]byte{r.hdr[:], buf}
	r.vnet, r.wait = vnet, wait
	err := d.raw.Read(r.fn)
	if err == nil {
		err = r.err
	}
	n, hdr := r.n, r.hdr
	r.iov[1], r.err = nil, nil // keep neither the caller's buffer nor its error
	return n, hdr, err
}

// rawWrite is one writev(2) with the virtio-net header, for raw.Write.
type rawWrite struct {
	hdr [VnetHdrLen]byte
	iov [][]byte
	n   int
	err error
	fn  func(fd uintptr) bool // do, bound once
}

func (w *rawWrite) do(fd uintptr) bool {
	w.n, w.err = unix.Writev(int(fd), w.iov)
	return w.err != unix.EAGAIN && w.err != unix.EINTR
}

var (
	_ OffloadDevice = (*Linux)(nil)
	_ TryReader     = (*Linux)(nil)
)

// Open creates the TUN device cfg.Name, or attaches to it if it already
// exists as a persistent device, and configures its kernel side.
//
// The device is opened with github.com/songgao/water; we then take our own
// close-on-exec duplicate of its descriptor and close water's file, so that
// reads go through Go's poller (Close unblocks a pending Read) and nothing
// leaks into child processes.
func Open(cfg Config, log *slog.Logger) (*Linux, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := ValidName(cfg.Name); err != nil {
		return nil, err
	}
	if cfg.MTU < 0 || cfg.MTU > 65535 {
		return nil, fmt.Errorf("tun %q: MTU %d out of range (68-65535)", cfg.Name, cfg.MTU)
	}
	if cfg.MTU != 0 && cfg.MTU < 68 {
		return nil, fmt.Errorf("tun %q: MTU %d is below the IPv4 minimum of 68", cfg.Name, cfg.MTU)
	}
	if _, err := os.Stat(CloneDevice); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("open tun %q: %s is missing: load the tun module (modprobe tun) or give the container the device (--device %s)", cfg.Name, CloneDevice, CloneDevice)
		}
		return nil, fmt.Errorf("open tun %q: %w", cfg.Name, err)
	}

	d := &Linux{name: cfg.Name, netns: cfg.NetNS, log: log}
	err := netnsx.Do(cfg.NetNS, func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return fmt.Errorf("open tun %q: netlink: %w", cfg.Name, err)
		}
		defer h.Close()

		existing, err := h.LinkByName(cfg.Name)
		switch {
		case err == nil:
			tt, ok := existing.(*netlink.Tuntap)
			if !ok || tt.Mode != netlink.TUNTAP_MODE_TUN {
				return fmt.Errorf("open tun %q: an interface of type %q already has that name: pick another --tun name", cfg.Name, existing.Type())
			}
		case isLinkNotFound(err):
			existing = nil
		default:
			return fmt.Errorf("open tun %q: look up link: %w", cfg.Name, err)
		}
		if cfg.Addr.IsValid() {
			ours := -1
			if existing != nil {
				ours = existing.Attrs().Index
			}
			if err := checkConflicts(h, cfg.Name, ours, cfg.Addr); err != nil {
				return err
			}
		}
		d.created = existing == nil

		var f *os.File
		if cfg.Offload {
			f, err = openVnet(cfg.Name)
		} else {
			f, err = openWater(cfg.Name, !d.created)
		}
		if err != nil {
			return err
		}
		d.file = f
		d.offload = cfg.Offload
		if d.raw, err = f.SyscallConn(); err != nil {
			return fmt.Errorf("open tun %q: %w", cfg.Name, err)
		}

		link, err := h.LinkByName(cfg.Name)
		if err != nil {
			return fmt.Errorf("open tun %q: look up new link: %w", cfg.Name, err)
		}
		if !cfg.Addr.IsValid() {
			// Pre-configured device: adopt its MTU, touch nothing.
			d.mtu = link.Attrs().MTU
			if cfg.MTU != 0 && cfg.MTU != d.mtu {
				return fmt.Errorf("tun %q has MTU %d but --mtu is %d: the stack's MTU must equal the device's (drop --mtu, or set it to %d)", cfg.Name, d.mtu, cfg.MTU, d.mtu)
			}
			if link.Attrs().Flags&net.FlagUp == 0 {
				log.Warn("TUN is down; nothing will arrive until it is brought up", "tun", cfg.Name)
			}
			return nil
		}
		d.mtu = cfg.MTU
		if d.mtu == 0 {
			d.mtu = link.Attrs().MTU
		}
		if err := h.LinkSetMTU(link, d.mtu); err != nil {
			return fmt.Errorf("set MTU %d on tun %q: %w", d.mtu, cfg.Name, err)
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: cfg.Addr.Addr().AsSlice(), Mask: net.CIDRMask(cfg.Addr.Bits(), cfg.Addr.Addr().BitLen())}}
		if err := h.AddrReplace(link, addr); err != nil {
			return fmt.Errorf("add address %s to tun %q: %w", cfg.Addr, cfg.Name, err)
		}
		// The stack speaks IPv4 only: keep the kernel's IPv6 chatter
		// (router solicitations) out of it and out of the trace. Best
		// effort: a kernel without IPv6 has no such file.
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+cfg.Name+"/disable_ipv6", []byte("1"), 0); err != nil {
			log.Debug("cannot disable IPv6 on the TUN", "tun", cfg.Name, "err", err)
		}
		if err := h.LinkSetUp(link); err != nil {
			return fmt.Errorf("set tun %q up: %w", cfg.Name, err)
		}
		return nil
	})
	if err != nil {
		d.Close()
		return nil, err
	}
	log.Debug("tun open", "name", d.name, "mtu", d.mtu, "created", d.created)
	return d, nil
}

// checkConflicts refuses a device whose kernel side would get addr when
// that address, or a route into addr's network, already belongs to another
// interface of the namespace (ours is the device's own index, -1 if it is
// still to be made). The kernel would accept both and keep routing the
// network through the older one: a second server in the lab's apple would
// print its listening line and never see a packet. Default routes do not
// count.
func checkConflicts(h *netlink.Handle, name string, ours int, addr netip.Prefix) error {
	linkName := func(index int) string {
		if l, err := h.LinkByIndex(index); err == nil {
			return l.Attrs().Name
		}
		return fmt.Sprintf("interface %d", index)
	}
	network := addr.Masked()
	fix := "stop the program that uses it, or give this one another network (--addr and --tun-addr)"
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("open tun %q: list routes: %w", name, err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.LinkIndex == ours {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		ip, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok || ones == 0 {
			continue
		}
		dst := netip.PrefixFrom(ip.Unmap(), ones).Masked()
		if dst.Overlaps(network) {
			return fmt.Errorf("open tun %q: %s is already routed through %s (another server's TUN?), so this server would never see a packet: %s", name, dst, linkName(r.LinkIndex), fix)
		}
	}
	addrs, err := h.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("open tun %q: list addresses: %w", name, err)
	}
	for _, a := range addrs {
		if a.LinkIndex == ours || a.IPNet == nil {
			continue
		}
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr.Addr() {
			return fmt.Errorf("open tun %q: address %s is already on %s: %s", name, addr.Addr(), linkName(a.LinkIndex), fix)
		}
	}
	return nil
}

// openWater opens the device the plain way, through water. persist=true
// re-asserts the persist flag of a device we attach to: water always issues
// TUNSETPERSIST, and with false it would turn a persistent device into one
// that vanishes when we close it.
func openWater(name string, persist bool) (*os.File, error) {
	ifce, err := water.New(water.Config{
		DeviceType:             water.TUN,
		PlatformSpecificParams: water.PlatformSpecificParams{Name: name, Persist: persist},
	})
	if err != nil {
		return nil, openError(name, err)
	}
	f, err := dupFile(ifce, name)
	if err != nil {
		return nil, err
	}
	// Offloads are the device's, not the descriptor's: a persistent TUN
	// that a server with offloads had open keeps them, and the kernel
	// would go on handing us 64 KiB segments with partial checksums.
	// (Through Control: f.Fd would put the descriptor in blocking mode.)
	rc, err := f.SyscallConn()
	if err == nil {
		cerr := rc.Control(func(fd uintptr) { err = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, 0) })
		if err == nil {
			err = cerr
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open tun %q: turn offloads off (TUNSETOFFLOAD): %w", name, err)
	}
	return f, nil
}

// TUNSETOFFLOAD flags (linux/if_tun.h).
const (
	tunFCsum = 0x01
	tunFTSO4 = 0x02
	tunFTSO6 = 0x04
)

// openVnet opens the device with IFF_VNET_HDR and turns on checksum and
// TSO offloads, so the kernel hands us (and takes from us) TCP segments of
// up to 64 KiB with a virtio-net header in front. It leaves the persist
// flag as it is: a device we create goes away when we close it, one we
// attach to stays.
func openVnet(name string) (*os.File, error) {
	fd, err := unix.Open(CloneDevice, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, openError(name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open tun %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, openError(name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, tunFCsum|tunFTSO4|tunFTSO6); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open tun %q: turn on offloads (TUNSETOFFLOAD): %w: run without --offload", name, err)
	}
	return os.NewFile(uintptr(fd), "tun:"+name), nil
}

// dupFile takes a close-on-exec duplicate of water's descriptor as a
// pollable *os.File and closes water's own file.
func dupFile(ifce *water.Interface, name string) (*os.File, error) {
	wf, ok := ifce.ReadWriteCloser.(*os.File)
	if !ok {
		ifce.Close()
		return nil, fmt.Errorf("open tun %q: water returned %T, not a file", name, ifce.ReadWriteCloser)
	}
	defer wf.Close()
	rc, err := wf.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("open tun %q: %w", name, err)
	}
	var fd int
	var dupErr error
	if err := rc.Control(func(raw uintptr) {
		fd, dupErr = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, fmt.Errorf("open tun %q: %w", name, err)
	}
	if dupErr != nil {
		return nil, fmt.Errorf("open tun %q: dup: %w", name, dupErr)
	}
	// water opened /dev/net/tun with O_NONBLOCK and the duplicate shares that
	// file status, so os.NewFile registers it with the poller.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open tun %q: set nonblocking: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tun:"+name), nil
}

func openError(name string, err error) error {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("open tun %q: permission denied: creating a TUN needs CAP_NET_ADMIN: run as root (sudo), grant it (sudo setcap cap_net_admin+ep BINARY), or use a persistent TUN made for your user (sudo ip tuntap add mode tun user $USER name %s)", name, name)
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("open tun %q: device is busy: another process has it open; stop that process or pick another --tun name", name)
	case errors.Is(err, unix.EINVAL):
		return fmt.Errorf("open tun %q: invalid request (is it a TAP device, or a multi-queue TUN?): pick another --tun name", name)
	}
	return fmt.Errorf("open tun %q: %w", name, err)
}

func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// ValidName reports whether name can name a network interface.
func ValidName(name string) error {
	switch {
	case name == "":
		return errors.New("tun name is empty: give --tun a name such as tun0")
	case len(name) > unix.IFNAMSIZ-1:
		return fmt.Errorf("tun name %q is %d bytes: interface names are at most %d", name, len(name), unix.IFNAMSIZ-1)
	case name == "." || name == "..":
		return fmt.Errorf("tun name %q is not allowed", name)
	}
	for _, r := range name {
		if r == '/' || r == ':' || r <= ' ' || r > '~' {
			return fmt.Errorf("tun name %q has the character %q: use letters, digits, '-', '_' or '.'", name, r)
		}
	}
	return nil
}

// Name implements Device.
func (d *Linux) Name() string { return d.name }

// MTU implements Device.
func (d *Linux) MTU() int { return d.mtu }

// Created reports whether Open created the device (and Close deletes it).
func (d *Linux) Created() bool { return d.created }

// Read implements Device. On a device opened with offloads, a packet that
// arrives as a super-segment or with a partial checksum is an error: use
// ReadOffload.
func (d *Linux) Read(buf []byte) (int, error) {
	if !d.offload {
		n, err := d.file.Read(buf)
		if err != nil {
			return n, d.ioError("read", err)
		}
		return n, nil
	}
	n, o, err := d.ReadOffload(buf)
	if err == nil && (o.GSO != GSONone || o.NeedsCsum) {
		return 0, fmt.Errorf("read tun %q: an offloaded packet reached Read: use ReadOffload", d.name)
	}
	return n, err
}

// Write implements Device.
func (d *Linux) Write(pkt []byte) (int, error) {
	if d.offload {
		return d.WriteOffload([][]byte{pkt}, Offload{})
	}
	n, err := d.file.Write(pkt)
	if err != nil {
		return n, d.ioError("write", err)
	}
	return n, nil
}

// SyscallConn gives the device's file descriptor, for a program that
// reads and writes it itself (bench's tun-floor reflector).
func (d *Linux) SyscallConn() (syscall.RawConn, error) { return d.file.SyscallConn() }

// Offloads implements OffloadDevice.
func (d *Linux) Offloads() bool { return d.offload }

// ReadOffload implements OffloadDevice: one read gives the virtio-net
// header and the packet, which lands in buf.
func (d *Linux) ReadOffload(buf []byte) (int, Offload, error) {
	n, o, _, err := d.readOffload(buf, true)
	return n, o, err
}

// TryReadOffload implements TryReader: ReadOffload without waiting in
// Go's netpoller when the device is empty.
func (d *Linux) TryReadOffload(buf []byte) (int, Offload, bool, error) {
	return d.readOffload(buf, false)
}

// TryRead implements TryReader.
func (d *Linux) TryRead(buf []byte) (int, bool, error) {
	if d.offload {
		n, o, ok, err := d.readOffload(buf, false)
		if err == nil && (o.GSO != GSONone || o.NeedsCsum) {
			return 0, false, fmt.Errorf("read tun %q: an offloaded packet reached TryRead: use TryReadOffload", d.name)
		}
		return n, ok, err
	}
	d.readMu.Lock()
	n, _, err := d.read(buf, false, false) // one attempt: EAGAIN is an answer
	d.readMu.Unlock()
	if err == unix.EAGAIN || err == unix.EINTR {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, d.ioError("read", err)
	}
	return n, true, nil
}

// readOffload reads one packet with its virtio-net header; with wait it
// parks in Go's netpoller while the device is empty, without it ok is
// false then.
func (d *Linux) readOffload(buf []byte, wait bool) (int, Offload, bool, error) {
	d.readMu.Lock()
	n, hdr, err := d.read(buf, true, wait)
	d.readMu.Unlock()
	if !wait && (err == unix.EAGAIN || err == unix.EINTR) {
		return 0, Offload{}, false, nil
	}
	if err != nil {
		return 0, Offload{}, false, d.ioError("read", err)
	}
	o, err := ParseOffload(hdr[:min(n, VnetHdrLen)])
	if err != nil {
		return 0, Offload{}, true, nil // an empty packet: counted as not IP, not the end of the link
	}
	return n - VnetHdrLen, o, true, nil
}

// WriteOffload implements OffloadDevice with one writev.
func (d *Linux) WriteOffload(bufs [][]byte, o Offload) (int, error) {
	d.writeMu.Lock()
	w := &d.wr
	if w.fn == nil {
		w.fn = w.do
	}
	o.Marshal(w.hdr[:])
	w.iov = append(append(w.iov[:0], w.hdr[:]), bufs...)
	err := d.raw.Write(w.fn)
	if err == nil {
		err = w.err
	}
	n := w.n
	clear(w.iov) // keep none of the caller's buffers
	w.err = nil
	d.writeMu.Unlock()
	if err != nil {
		return 0, d.ioError("write", err)
	}
	return max(n-VnetHdrLen, 0), nil
}

func (d *Linux) ioError(op string, err error) error {
	switch {
	case errors.Is(err, os.ErrClosed), d.closed.Load():
		return ErrClosed
	case errors.Is(err, unix.EBADFD), errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
		return fmt.Errorf("%s tun %q: the device was deleted underneath the server (ip link del?): %w", op, d.name, err)
	}
	return fmt.Errorf("%s tun %q: %w", op, d.name, err)
}

// Close implements Device. Closing the last descriptor of a non-persistent
// TUN makes the kernel delete it; we check and delete it explicitly if it is
// still there, so a created device never outlives the server.
func (d *Linux) Close() error {
	d.closeOnce.Do(func() {
		d.closed.Store(true)
		if d.file != nil {
			d.closeErr = d.file.Close()
		}
		if !d.created {
			return
		}
		err := netnsx.Do(d.netns, func() error {
			link, err := netlink.LinkByName(d.name)
			if err != nil {
				if isLinkNotFound(err) {
					return nil
				}
				return err
			}
			return netlink.LinkDel(link)
		})
		if err != nil && d.closeErr == nil {
			d.closeErr = fmt.Errorf("delete tun %q: %w", d.name, err)
		}
	})
	return d.closeErr
}
