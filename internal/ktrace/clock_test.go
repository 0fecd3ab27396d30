package ktrace

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcp-upper/tcp-upper/internal/testenv"
)

// TestClockOffset: the offset from CLOCK_MONOTONIC to the wall clock is
// measured within a narrow bracket, and two measurements agree within
// their brackets.
func TestClockOffset(t *testing.T) {
	off1, b1, err := clockOffset(offsetSamples)
	if err != nil {
		t.Fatal(err)
	}
	off2, b2, err := clockOffset(offsetSamples)
	if err != nil {
		t.Fatal(err)
	}
	// A clock read takes well under a µs; the best of 64 samples has no
	// preemption in it unless the machine is starved.
	for _, b := range []time.Duration{b1, b2} {
		if b <= 0 || b > 5*time.Microsecond {
			t.Errorf("offset bracket %v, want within (0, 5µs]", b)
		}
	}
	if d := (off1 - off2).Abs(); d > (b1+b2)/2+100*time.Nanosecond {
		t.Errorf("two offsets differ by %v, more than their brackets (%v, %v) allow", d, b1, b2)
	}
	t.Logf("offset brackets %v, %v; offsets differ by %v", b1, b2, (off1 - off2).Abs())
}

// TestRecordTimeWithinSyscall: a state change's record is dated inside
// the system call that made it, as time.Now read it before and after the
// call: connect's SYN-SENT and ESTABLISHED (a blocking connect on
// loopback completes the handshake within the call) and close's
// FIN-WAIT-1, for several connections; and listen's LISTEN and its
// close's CLOSE, calls of a few µs, which place the records most
// narrowly. An offset misread by a preemption between its clock reads
// shifts every record, out of these calls.
func TestRecordTimeWithinSyscall(t *testing.T) {
	testenv.RequireRoot(t)
	port := uint16(20000 + rand.IntN(20000))
	s, err := Start(Options{Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const conns = 20
	type span struct{ lo, hi time.Time }
	connects := map[uint16]span{} // by the client's port
	closes := map[uint16]span{}
	var listens, listenCloses [conns]span // 127.0.0.2:port, in turn
	err = inNewNetns(func() error {
		ln, err := listenLoopback(port)
		if err != nil {
			return err
		}
		defer ln.Close()
		for i := range conns {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(port), Addr: [4]byte{127, 0, 0, 2}}); err != nil {
				unix.Close(fd)
				return err
			}
			t1 := time.Now()
			err = unix.Listen(fd, 1)
			t2 := time.Now()
			listens[i] = span{t1, t2}
			t1 = time.Now()
			cerr := unix.Close(fd)
			t2 = time.Now()
			listenCloses[i] = span{t1, t2}
			if err := errors.Join(err, cerr); err != nil {
				return err
			}
		}
		for range conns {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			t1 := time.Now()
			err = unix.Connect(fd, &unix.SockaddrInet4{Port: int(port), Addr: [4]byte{127, 0, 0, 1}})
			t2 := time.Now()
			if err != nil {
				unix.Close(fd)
				return err
			}
			sa, err := unix.Getsockname(fd)
			if err != nil {
				unix.Close(fd)
				return err
			}
			p := uint16(sa.(*unix.SockaddrInet4).Port)
			connects[p] = span{t1, t2}
			a, err := ln.Accept()
			if err != nil {
				unix.Close(fd)
				return err
			}
			t1 = time.Now()
			err = unix.Close(fd)
			t2 = time.Now()
			closes[p] = span{t1, t2}
			a.Close()
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Flush()
	// Half the bracket places the offset; 100ns more for time.Now's own
	// two reads.
	slack := s.ClockBracket()/2 + 100*time.Nanosecond
	within := func(what string, at time.Time, sp span) {
		t.Helper()
		if at.Before(sp.lo.Add(-slack)) || at.After(sp.hi.Add(slack)) {
			t.Errorf("%s dated %s, outside its system call [%s, %s] (slack %v): %v before its start, %v after its end",
				what, at.Format("15:04:05.000000000"), sp.lo.Format("15:04:05.000000000"), sp.hi.Format("15:04:05.000000000"), slack, sp.lo.Sub(at), at.Sub(sp.hi))
		}
	}
	// SYN-SENT is reported with port 0: the socket's latest, by its
	// address (a freed socket's memory is reused for the next).
	synSent := map[uint64]Record{}
	seen, nlisten, nlclose := 0, 0, 0
	var widest time.Duration
	for more := true; more; {
		select {
		case r := <-s.Records():
			if r.Kind == SetState && r.Src.Addr().String() == "127.0.0.2" {
				switch {
				case r.NewState == TCPListen && nlisten < conns:
					within("LISTEN", r.Time, listens[nlisten])
					widest = max(widest, listens[nlisten].hi.Sub(listens[nlisten].lo))
					nlisten++
				case r.OldState == TCPListen && nlclose < conns:
					within("LISTEN's CLOSE", r.Time, listenCloses[nlclose])
					widest = max(widest, listenCloses[nlclose].hi.Sub(listenCloses[nlclose].lo))
					nlclose++
				}
				continue
			}
			if r.Kind != SetState || r.Src.Addr().String() != "127.0.0.1" || r.Dst.Port() != port {
				continue
			}
			switch {
			case r.NewState == TCPSynSent:
				synSent[r.Sk] = r
			case r.OldState == TCPSynSent && r.NewState == TCPEstablished:
				sp, ok := connects[r.Src.Port()]
				if !ok {
					continue
				}
				within(fmt.Sprintf("port %d's ESTABLISHED", r.Src.Port()), r.Time, sp)
				if ss, ok := synSent[r.Sk]; ok {
					within(fmt.Sprintf("port %d's SYN-SENT", r.Src.Port()), ss.Time, sp)
					delete(synSent, r.Sk)
					seen++
				}
			case r.NewState == TCPFinWait1:
				if sp, ok := closes[r.Src.Port()]; ok {
					within(fmt.Sprintf("port %d's FIN-WAIT-1", r.Src.Port()), r.Time, sp)
					seen++
				}
			}
		default:
			more = false
		}
	}
	if seen != 2*conns || nlisten != conns || nlclose != conns {
		t.Errorf("checked %d SYN-SENT and FIN-WAIT-1 records, %d LISTEN, %d of its CLOSE; want %d, %d, %d (lost %d)", seen, nlisten, nlclose, 2*conns, conns, conns, s.Lost())
	}
	t.Logf("%d records within their system calls (listen and its close: at most %v); offset bracket %v", seen+nlisten+nlclose, widest, s.ClockBracket())
}

// TestRawTimestampsMatchText: the binary ring buffer parser (page time
// stamps, deltas, time extends) dates every record exactly as the
// kernel's own text output does (option raw: nanoseconds), record for
// record on each CPU. The connections come in two bursts more than
// 2^27 ns apart, so that the second burst's first record on a CPU
// carries its delta in a time extend.
func TestRawTimestampsMatchText(t *testing.T) {
	testenv.RequireRoot(t)
	if err := mountTracefs(); err != nil {
		t.Fatal(err)
	}
	port := uint16(20000 + rand.IntN(20000))
	dir := filepath.Join(Root, "instances", fmt.Sprintf("tcp-upper-%d-%d", os.Getpid(), instanceSeq.Add(1)))
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	s := &Session{dir: dir, formats: map[uint16]*eventFormat{}}
	defer func() {
		if err := s.remove(); err != nil {
			t.Error(err)
		}
	}()
	if err := s.setup(Options{Port: port}); err != nil {
		t.Fatal(err)
	}
	err := inNewNetns(func() error {
		ln, err := listenLoopback(port)
		if err != nil {
			return err
		}
		defer ln.Close()
		burst := func() error {
			for range 10 {
				c, err := net.Dial("tcp4", ln.Addr().String())
				if err != nil {
					return err
				}
				a, err := ln.Accept()
				if err != nil {
					c.Close()
					return err
				}
				c.Write([]byte("hello"))
				a.Read(make([]byte, 5))
				c.Close()
				a.Close()
			}
			return nil
		}
		if err := burst(); err != nil {
			return err
		}
		// Not a barrier: the gap itself is what is tested (a delta too
		// large for an event's 27 bits).
		time.Sleep(200 * time.Millisecond)
		return burst()
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		if err := s.write(filepath.Join("events", e.system, e.name, "enable"), "0"); err != nil {
			t.Fatal(err)
		}
	}
	// The text: "PID CPU TS type: ID" per record with option raw.
	if err := s.write("options/raw", "1"); err != nil {
		t.Fatal(err)
	}
	text, err := os.ReadFile(filepath.Join(dir, "trace"))
	if err != nil {
		t.Fatal(err)
	}
	type rec struct {
		ts  uint64
		id  uint16
		pid uint32
	}
	want := map[int][]rec{}
	sc := bufio.NewScanner(bytes.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 5 || f[3] != "type:" {
			t.Fatalf("trace line %q: want PID CPU TS type: ID", line)
		}
		pid, err1 := strconv.ParseUint(f[0], 10, 32)
		cpu, err2 := strconv.Atoi(f[1])
		ts, err3 := strconv.ParseUint(f[2], 10, 64)
		id, err4 := strconv.ParseUint(f[4], 10, 16)
		if err := errors.Join(err1, err2, err3, err4); err != nil {
			t.Fatalf("trace line %q: %v", line, err)
		}
		want[cpu] = append(want[cpu], rec{ts, uint16(id), uint32(pid)})
	}
	cpus, err := onlineCPUs()
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, cpu := range cpus {
		f, err := os.OpenFile(filepath.Join(dir, "per_cpu", fmt.Sprintf("cpu%d", cpu), "trace_pipe_raw"), os.O_RDONLY|unix.O_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		var got []rec
		page := make([]byte, os.Getpagesize())
		for {
			n, err := unix.Read(int(f.Fd()), page)
			if n <= 0 || err != nil {
				break
			}
			missed, err := parsePage(page[:n], func(ts uint64, r []byte) {
				got = append(got, rec{ts, uint16(r[0]) | uint16(r[1])<<8, uint32(r[4]) | uint32(r[5])<<8 | uint32(r[6])<<16 | uint32(r[7])<<24})
			})
			if missed || err != nil {
				t.Errorf("cpu%d: page: missed %v, %v", cpu, missed, err)
			}
		}
		f.Close()
		if !slices.Equal(got, want[cpu]) {
			t.Errorf("cpu%d: the binary pages give %d records, the text %d; first difference:", cpu, len(got), len(want[cpu]))
			for i := range max(len(got), len(want[cpu])) {
				if i >= len(got) || i >= len(want[cpu]) || got[i] != want[cpu][i] {
					var g, w rec
					if i < len(got) {
						g = got[i]
					}
					if i < len(want[cpu]) {
						w = want[cpu][i]
					}
					t.Errorf("  record %d: binary ts %d id %d pid %d, text ts %d id %d pid %d", i, g.ts, g.id, g.pid, w.ts, w.id, w.pid)
					break
				}
			}
		}
		total += len(got)
	}
	if total < 100 {
		t.Errorf("%d records in all, want at least 100 (20 connections)", total)
	}
	t.Logf("%d records, each dated alike by the binary parser and the text", total)
}
