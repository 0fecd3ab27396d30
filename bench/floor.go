package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcp-upper/tcp-upper/tun"
)

// ReflectorReady is what Reflect prints once it answers.
const ReflectorReady = "tun-reflector: answering ICMP echo requests"

// Reflect is the tun-floor's far end: the least a program behind a TUN can
// do for a round trip. It opens the plain TUN name (kernel side kernelAddr),
// and answers every ICMP echo request to addr by turning it around in place
// (addresses swapped, type 0, checksum adjusted) and writing it back, until
// ctx ends. No TCP/IP stack and no Go scheduler on the way: one thread
// blocks in read(2) and answers with write(2).
func Reflect(ctx context.Context, name string, kernelAddr netip.Prefix, addr netip.Addr, ready func()) error {
	if !addr.Is4() || !kernelAddr.Addr().Is4() {
		return errors.New("tun-reflector: IPv4 addresses only")
	}
	dev, err := tun.Open(tun.Config{Name: name, MTU: 1500, Addr: kernelAddr}, nil)
	if err != nil {
		return err
	}
	defer dev.Close()
	rc, err := dev.SyscallConn()
	if err != nil {
		return fmt.Errorf("tun-reflector: %w", err)
	}
	var fd int
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return fmt.Errorf("tun-reflector: %w", err)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		return fmt.Errorf("tun-reflector: blocking reads: %w", err)
	}
	ready()
	failed := make(chan error, 1)
	go func() {
		// The loop blocks in read(2) for good: the process ends when ctx
		// does, and takes the thread with it.
		runtime.LockOSThread()
		failed <- reflectLoop(fd, addr.As4())
	}()
	select {
	case <-ctx.Done():
		return nil
	case err := <-failed:
		return fmt.Errorf("tun-reflector on %s: %w", name, err)
	}
}

func reflectLoop(fd int, want [4]byte) error {
	buf := make([]byte, 65536)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		p := buf[:n]
		if !echoRequestTo(p, want) {
			continue
		}
		reflect(p)
		if _, err := unix.Write(fd, p); err != nil {
			return fmt.Errorf("write: %w", err)
		}
	}
}

// echoRequestTo reports whether p is an IPv4 ICMP echo request to dst.
func echoRequestTo(p []byte, dst [4]byte) bool {
	if len(p) < 20 || p[0]>>4 != 4 || p[9] != unix.IPPROTO_ICMP || [4]byte(p[16:20]) != dst {
		return false
	}
	ihl := int(p[0]&0xf) * 4
	return ihl >= 20 && len(p) >= ihl+8 && p[ihl] == 8 && p[ihl+1] == 0
}

// reflect turns an echo request into its reply in place. Swapping the
// addresses leaves the IP checksum as it is (a sum of 16-bit words); the
// type going from 8 to 0 adds 0x0800 to the ICMP checksum (RFC 1624).
func reflect(p []byte) {
	var a [4]byte
	copy(a[:], p[12:16])
	copy(p[12:16], p[16:20])
	copy(p[16:20], a[:])
	ihl := int(p[0]&0xf) * 4
	icmp := p[ihl:]
	icmp[0] = 0
	sum := uint32(binary.BigEndian.Uint16(icmp[2:4])) + 0x0800
	sum = (sum & 0xffff) + sum>>16
	binary.BigEndian.PutUint16(icmp[2:4], uint16(sum))
}

// ping sends count ICMP echo requests to addr one after the other (up to
// d) from a raw socket in the client's namespace and returns the p50 and
// p99 round-trip times in µs.
func ping(ctx context.Context, t target, addr netip.Addr, count int, d time.Duration) (p50, p99 float64, err error) {
	var fd int
	err = t.do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		return err
	})
	if err != nil {
		return 0, 0, fmt.Errorf("ping: raw ICMP socket (needs root): %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1}); err != nil {
		return 0, 0, fmt.Errorf("ping: %w", err)
	}
	to := &unix.SockaddrInet4{Addr: addr.As4()}
	id := uint16(os.Getpid())
	req := make([]byte, 8+16)
	copy(req[8:], rrMsg)
	in := make([]byte, 1500)
	const warmup = 20
	lat := make([]time.Duration, 0, count)
	end := time.Now().Add(d)
	for i := 0; i < count+warmup && time.Now().Before(end); i++ {
		if err := ctx.Err(); err != nil {
			return 0, 0, err
		}
		seq := uint16(i)
		req[0], req[1] = 8, 0
		binary.BigEndian.PutUint16(req[2:], 0)
		binary.BigEndian.PutUint16(req[4:], id)
		binary.BigEndian.PutUint16(req[6:], seq)
		binary.BigEndian.PutUint16(req[2:], checksum(req))
		t0 := time.Now()
		if err := unix.Sendto(fd, req, 0, to); err != nil {
			return 0, 0, fmt.Errorf("ping %s: send: %w", addr, err)
		}
		for {
			n, _, err := unix.Recvfrom(fd, in, 0)
			if err != nil {
				if err == unix.EINTR {
					continue
				}
				return 0, 0, fmt.Errorf("ping %s: no reply to echo %d within 1s: %w", addr, i, err)
			}
			p := in[:n]
			if n < 20 {
				continue
			}
			ihl := int(p[0]&0xf) * 4
			if n < ihl+8 || [4]byte(p[12:16]) != addr.As4() {
				continue
			}
			r := p[ihl:]
			if r[0] == 0 && binary.BigEndian.Uint16(r[4:]) == id && binary.BigEndian.Uint16(r[6:]) == seq {
				break
			}
		}
		if i >= warmup {
			lat = append(lat, time.Since(t0))
		}
	}
	if len(lat) == 0 {
		return 0, 0, fmt.Errorf("ping %s: no echo within %v", addr, d)
	}
	slices.Sort(lat)
	return quantileUS(lat, 0.50), quantileUS(lat, 0.99), nil
}

// quantileUS is the q-quantile of sorted durations, in µs.
func quantileUS(sorted []time.Duration, q float64) float64 {
	return float64(sorted[int(q*float64(len(sorted)-1))].Nanoseconds()) / 1e3
}

// checksum is the Internet checksum of b (RFC 1071).
func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}
