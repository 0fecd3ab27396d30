//go:build linux

package tun_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/internal/testenv"
	"github.com/tcp-upper/tcp-upper/lab"
	"github.com/tcp-upper/tcp-upper/tun"
)

// upLab builds a lab named prefix-PID for the test (root only) and takes it
// down when the test ends.
func upLab(t *testing.T, prefix string) *lab.Lab {
	t.Helper()
	testenv.RequireRoot(t)
	l, err := lab.New(fmt.Sprintf("%s-%d", prefix, os.Getpid()), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Up(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Down(); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	return l
}

// TestReadWaits: plain and with offloads, a reader blocked on an idle
// device gets the datagrams the kernel routes into it, in order and
// intact, and Close wakes it with ErrClosed; so does one that polls the
// device with TryRead or TryReadOffload, which say when it is empty.
func TestReadWaits(t *testing.T) {
	l := upLab(t, "tunrd")
	for _, offload := range []bool{false, true} {
		for _, try := range []bool{false, true} {
			t.Run(fmt.Sprintf("offload=%v,try=%v", offload, try), func(t *testing.T) {
				testReadWaits(t, l, offload, try)
			})
		}
	}
}

type readResult struct {
	payload []byte
	err     error
}

func testReadWaits(t *testing.T, l *lab.Lab, offload, try bool) {
	dev, err := tun.Open(tun.Config{Name: "tun0", MTU: 1500, Addr: lab.TunAddr, NetNS: l.NetNSPath(lab.Apple), Offload: offload}, nil)
	if err != nil {
		t.Fatal(err)
	}
	const bound = 5 * time.Second
	// closeDev closes dev, failing instead of hanging if Close waits for
	// a reader it did not wake.
	closeDev := func() {
		t.Helper()
		closed := make(chan error, 1)
		go func() { closed <- dev.Close() }()
		select {
		case err := <-closed:
			if err != nil {
				t.Errorf("close: %v", err)
			}
		case <-time.After(bound):
			t.Errorf("Close still waiting after %v", bound)
		}
	}
	defer closeDev()

	got := make(chan readResult, 16)
	var empty atomic.Int64 // polls that found the device empty
	go func() {
		buf := make([]byte, tun.MaxOffloadPacket)
		for {
			var n int
			var err error
			switch {
			case try:
				for ok := false; !ok && err == nil; {
					if offload {
						n, _, ok, err = dev.TryReadOffload(buf)
					} else {
						n, ok, err = dev.TryRead(buf)
					}
					if !ok && err == nil {
						empty.Add(1)
						runtime.Gosched()
					}
				}
			case offload:
				n, _, err = dev.ReadOffload(buf)
			default:
				n, err = dev.Read(buf)
			}
			if err != nil {
				got <- readResult{err: err}
				return
			}
			p := buf[:n]
			// Only our UDP datagrams to port 9 (IPv4, 20-byte header).
			if n < 28 || p[0] != 0x45 || p[9] != 17 || p[22] != 0 || p[23] != 9 {
				continue
			}
			got <- readResult{payload: bytes.Clone(p[28:])}
		}
	}()

	var conn net.Conn
	if err := l.Do(lab.Apple, func() (err error) {
		conn, err = net.Dial("udp4", net.JoinHostPort(lab.ServerAddr.Addr().String(), "9"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i := range 3 {
		want := fmt.Appendf(nil, "datagram %d through tun0", i)
		if _, err := conn.Write(want); err != nil {
			t.Fatalf("send datagram %d: %v", i, err)
		}
		select {
		case r := <-got:
			if r.err != nil {
				t.Fatalf("read datagram %d: %v", i, r.err)
			}
			if !bytes.Equal(r.payload, want) {
				t.Fatalf("datagram %d: read %q, want %q", i, r.payload, want)
			}
		case <-time.After(bound):
			t.Fatalf("datagram %d not read within %v", i, bound)
		}
	}

	// The reader is waiting again on an idle device: Close must wake it
	// (and not wait for it forever).
	closeDev()
	select {
	case r := <-got:
		if !errors.Is(r.err, tun.ErrClosed) {
			t.Fatalf("read after close: payload %q, err %v; want ErrClosed", r.payload, r.err)
		}
	case <-time.After(bound):
		t.Fatalf("reader still blocked %v after Close", bound)
	}
	if _, err := dev.Read(make([]byte, 1500)); !errors.Is(err, tun.ErrClosed) {
		t.Errorf("Read on a closed device: %v, want ErrClosed", err)
	}
	if try {
		// Each datagram was sent after the previous one was read.
		if empty.Load() == 0 {
			t.Errorf("no poll found the device empty")
		}
		if _, _, err := dev.TryRead(make([]byte, 1500)); !errors.Is(err, tun.ErrClosed) {
			t.Errorf("TryRead on a closed device: %v, want ErrClosed", err)
		}
	}
}

// TestPollAndWriteAllocateNothing: polling an empty device (what a
// spinning reader does tens of thousands of times a second) and writing a
// packet allocate nothing, plain and with offloads.
func TestPollAndWriteAllocateNothing(t *testing.T) {
	l := upLab(t, "tunal")
	// An IPv4 packet of an unused protocol (253, for experiments) from the
	// stack's side to the kernel's side of tun0, which drops it.
	pkt := []byte{0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 253, 0, 0, 10, 0, 2, 2, 10, 0, 2, 1}
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(pkt[i])<<8 | uint32(pkt[i+1])
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	pkt[10], pkt[11] = byte(^sum>>8), byte(^sum)
	for _, offload := range []bool{false, true} {
		t.Run(fmt.Sprintf("offload=%v", offload), func(t *testing.T) {
			dev, err := tun.Open(tun.Config{Name: "tun0", MTU: 1500, Addr: lab.TunAddr, NetNS: l.NetNSPath(lab.Apple), Offload: offload}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			buf := make([]byte, tun.MaxOffloadPacket)
			poll := func() {
				if offload {
					dev.TryReadOffload(buf)
				} else {
					dev.TryRead(buf)
				}
			}
			if n := testing.AllocsPerRun(200, poll); n != 0 {
				t.Errorf("a poll allocates %v times", n)
			}
			write := func() {
				if _, err := dev.Write(pkt); err != nil {
					t.Fatal(err)
				}
			}
			if n := testing.AllocsPerRun(200, write); n != 0 {
				t.Errorf("a write allocates %v times", n)
			}
		})
	}
}
