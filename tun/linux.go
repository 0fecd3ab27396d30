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
}

// Linux is a TUN device opened through /dev/net/tun.
type Linux struct {
	name    string
	mtu     int
	file    *os.File
	created bool
	netns   string
	log     *slog.Logger

	closeOnce sync.Once
	closeErr  error
}

var _ Device = (*Linux)(nil)

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
		d.created = existing == nil

		// Persist=true re-asserts the persist flag of a device we attach to:
		// water always issues TUNSETPERSIST, and with false it would turn a
		// persistent device into one that vanishes when we close it.
		ifce, err := water.New(water.Config{
			DeviceType:             water.TUN,
			PlatformSpecificParams: water.PlatformSpecificParams{Name: cfg.Name, Persist: !d.created},
		})
		if err != nil {
			return openError(cfg.Name, err)
		}
		f, err := dupFile(ifce, cfg.Name)
		if err != nil {
			return err
		}
		d.file = f

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

// Read implements Device.
func (d *Linux) Read(buf []byte) (int, error) {
	n, err := d.file.Read(buf)
	if err != nil {
		return n, d.ioError("read", err)
	}
	return n, nil
}

// Write implements Device.
func (d *Linux) Write(pkt []byte) (int, error) {
	n, err := d.file.Write(pkt)
	if err != nil {
		return n, d.ioError("write", err)
	}
	return n, nil
}

func (d *Linux) ioError(op string, err error) error {
	switch {
	case errors.Is(err, os.ErrClosed):
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
