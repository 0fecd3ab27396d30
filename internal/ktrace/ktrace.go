// Package ktrace reads the kernel's own account of its TCP connections:
// the tracepoints sock:inet_sock_set_state, tcp:tcp_probe,
// tcp:tcp_retransmit_skb, tcp:tcp_retransmit_synack, tcp:tcp_send_reset and
// tcp:tcp_receive_reset, fired by the kernel's TCP at the instant each
// thing happens. What the kernel side of the lab prints about itself
// comes from here, never from the wire.
//
// It uses tracefs, not eBPF: a private trace instance
// (/sys/kernel/tracing/instances/tcp-upper-PID-N) with only these events
// enabled, read in binary from each CPU's trace_pipe_raw, so a record
// carries every field of the tracepoint (the socket's address among them,
// which the text format leaves out) and the global trace buffer and other
// tracers are left alone. It needs root (CAP_SYS_ADMIN for the mount,
// write access to tracefs); tracefs is mounted if it is not.
package ktrace

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Root is where tracefs is mounted.
const Root = "/sys/kernel/tracing"

// Kind says which tracepoint a Record comes from.
type Kind uint8

// The tracepoints.
const (
	SetState         Kind = iota + 1 // sock:inet_sock_set_state
	Probe                            // tcp:tcp_probe (a segment received)
	Retransmit                       // tcp:tcp_retransmit_skb
	RetransmitSynAck                 // tcp:tcp_retransmit_synack
	SendReset                        // tcp:tcp_send_reset
	ReceiveReset                     // tcp:tcp_receive_reset
)

var events = []struct {
	kind   Kind
	system string
	name   string
	// filter, if the tracepoint has port fields: only the port asked for.
	ports bool
}{
	{SetState, "sock", "inet_sock_set_state", true},
	{Probe, "tcp", "tcp_probe", true},
	{Retransmit, "tcp", "tcp_retransmit_skb", true},
	{RetransmitSynAck, "tcp", "tcp_retransmit_synack", true},
	{SendReset, "tcp", "tcp_send_reset", false},
	{ReceiveReset, "tcp", "tcp_receive_reset", true},
}

func (k Kind) String() string {
	for _, e := range events {
		if e.kind == k {
			return e.system + ":" + e.name
		}
	}
	return "unknown"
}

// Record is one tracepoint hit.
type Record struct {
	Time time.Time
	Kind Kind
	// PID is the thread the kernel was running for when the tracepoint
	// fired (common_pid): the caller's for what a system call did
	// (connect's SYN-SENT, close's FIN-WAIT-1), whichever thread ran the
	// softirq for what a received segment did.
	PID int32
	// Sk is the socket's kernel address: the same socket in every record
	// while it lives (the request socket, for a SYN-ACK retransmission).
	Sk uint64
	// Cookie is the socket's cookie (tcp_probe, tcp_receive_reset), the
	// number sock_diag reports too; 0 elsewhere.
	Cookie uint64
	// Src and Dst are the socket's local and remote ends. The first
	// SYN-SENT of a connecting socket has port 0: the kernel picks the
	// port after it sets the state.
	Src, Dst netip.AddrPort
	// OldState and NewState (SetState), State (Retransmit, SendReset):
	// the kernel's TCP_* numbers.
	OldState, NewState, State TCPState
	// Probe's numbers: raw sequence numbers, cwnd and ssthresh in
	// segments, windows in bytes, srtt in microseconds (the kernel keeps
	// it <<3; this is the plain value).
	DataLen                           uint16
	SndNxt, SndUna, SndCwnd, Ssthresh uint32
	SndWnd, RcvWnd                    uint32
	SRTT                              time.Duration
}

// TCPState is the kernel's TCP state number (include/net/tcp_states.h).
type TCPState uint8

// The kernel's states.
const (
	TCPEstablished TCPState = iota + 1
	TCPSynSent
	TCPSynRecv
	TCPFinWait1
	TCPFinWait2
	TCPTimeWait
	TCPClose
	TCPCloseWait
	TCPLastAck
	TCPListen
	TCPClosing
	TCPNewSynRecv
)

var tcpStateNames = [...]string{"", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV"}

// String is the kernel's name (TCP_ESTABLISHED without the prefix).
func (s TCPState) String() string {
	if int(s) < len(tcpStateNames) && s != 0 {
		return tcpStateNames[s]
	}
	return fmt.Sprintf("state-%d", s)
}

// Options choose what a Session records.
type Options struct {
	// Port, when set, keeps only records of sockets with this port at
	// either end (filtered in the kernel where the tracepoint has ports).
	Port uint16
	// BufferKB is each CPU's buffer (default 1024).
	BufferKB int
}

// Session is a private trace instance recording the TCP tracepoints.
type Session struct {
	dir     string
	formats map[uint16]*eventFormat
	records chan Record
	// Lost counts records lost: the kernel's buffer overflowed, or the
	// reader of Records fell behind.
	lost    atomic.Uint64
	files   []*os.File // each CPU's trace_pipe_raw
	flush   []chan chan struct{}
	closed  chan struct{}
	wg      sync.WaitGroup
	closeMu sync.Once
	monoOff time.Duration // wall clock minus CLOCK_MONOTONIC
	bracket time.Duration // monoOff's sample: the span that held its clock reads
	port    uint16
}

type eventFormat struct {
	*format
	kind Kind
}

var instanceSeq atomic.Uint64

// ErrUnavailable wraps every reason tracing cannot start (no tracefs, not
// root, tracepoints missing): callers say so in one line and go on
// without the kernel's side.
var ErrUnavailable = errors.New("kernel tracepoints unavailable")

// Start creates the trace instance, enables the tracepoints and starts
// reading. Close it. Instances left by a process that died without closing
// its session (killed) are removed first.
func Start(opts Options) (*Session, error) {
	if err := mountTracefs(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	RemoveStale()
	dir := filepath.Join(Root, "instances", fmt.Sprintf("tcp-upper-%d-%d", os.Getpid(), instanceSeq.Add(1)))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: create trace instance: %v", ErrUnavailable, err)
	}
	s := &Session{dir: dir, formats: map[uint16]*eventFormat{}, records: make(chan Record, 4096), closed: make(chan struct{}), port: opts.Port}
	if err := s.setup(opts); err != nil {
		s.remove()
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	cpus, err := onlineCPUs()
	if err != nil {
		s.remove()
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	var files []*os.File
	for _, cpu := range cpus {
		f, err := os.OpenFile(filepath.Join(dir, "per_cpu", fmt.Sprintf("cpu%d", cpu), "trace_pipe_raw"), os.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			s.remove()
			return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		files = append(files, f)
	}
	s.files = files
	s.flush = make([]chan chan struct{}, len(files))
	for i, f := range files {
		s.flush[i] = make(chan chan struct{}, 1)
		s.wg.Add(1)
		go s.read(f, s.flush[i])
	}
	return s, nil
}

func (s *Session) write(name, value string) error {
	if err := os.WriteFile(filepath.Join(s.dir, name), []byte(value), 0); err != nil {
		return fmt.Errorf("write %s: %v", strings.TrimPrefix(filepath.Join(s.dir, name), Root+"/"), err)
	}
	return nil
}

func (s *Session) setup(opts Options) error {
	// The monotonic clock, so records convert to wall time exactly.
	if err := s.write("trace_clock", "mono"); err != nil {
		return err
	}
	off, bracket, err := clockOffset(offsetSamples)
	if err != nil {
		return err
	}
	s.monoOff, s.bracket = off, bracket
	kb := opts.BufferKB
	if kb <= 0 {
		kb = 1024
	}
	if err := s.write("buffer_size_kb", fmt.Sprint(kb)); err != nil {
		return err
	}
	// Wake a reader at every record, not when the buffer is half full.
	if err := s.write("buffer_percent", "0"); err != nil {
		return err
	}
	for _, e := range events {
		base := filepath.Join("events", e.system, e.name)
		text, err := os.ReadFile(filepath.Join(s.dir, base, "format"))
		if err != nil {
			return fmt.Errorf("tracepoint %s:%s: %v", e.system, e.name, err)
		}
		f, err := parseFormat(string(text))
		if err != nil {
			return fmt.Errorf("tracepoint %s:%s: %v", e.system, e.name, err)
		}
		s.formats[f.id] = &eventFormat{format: f, kind: e.kind}
		if opts.Port != 0 && e.ports {
			if err := s.write(filepath.Join(base, "filter"), fmt.Sprintf("sport == %d || dport == %d", opts.Port, opts.Port)); err != nil {
				return err
			}
		}
		if err := s.write(filepath.Join(base, "enable"), "1"); err != nil {
			return err
		}
	}
	return nil
}

// offsetSamples is how many bracketed samples clockOffset takes (about
// 15 µs in all).
const offsetSamples = 64

// clockOffset measures the wall clock (what time.Now and our stack's
// events read) minus CLOCK_MONOTONIC (the trace clock "mono", which stamps
// the records). Each sample reads the wall clock, CLOCK_MONOTONIC, the
// wall clock again; a thread preempted between two reads (tens of µs on
// a loaded machine) would shift every record of the session by as much,
// so it keeps the sample whose two wall reads are closest (their
// monotonic difference: Go's time.Now carries a monotonic reading) and
// takes CLOCK_MONOTONIC as read at their midpoint. The offset is then
// exact within half the bracket returned, plus the few tens of ns between
// time.Now's own wall and monotonic reads. REALTIME and MONOTONIC are
// slewed together by NTP; only a step of the wall clock (settimeofday)
// would change the offset later.
func clockOffset(n int) (off, bracket time.Duration, err error) {
	bracket = -1
	for range n {
		var mono unix.Timespec
		t1 := time.Now()
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono); err != nil {
			return 0, 0, err
		}
		t2 := time.Now()
		if d := t2.Sub(t1); bracket < 0 || d < bracket {
			bracket = d
			off = time.Duration(t1.UnixNano() + int64(d/2) - mono.Nano())
		}
	}
	return off, bracket, nil
}

// ClockBracket says how exactly the session places the kernel's records on
// the wall clock: each Record's Time is within half of it (plus a few
// tens of ns) of the wall time the kernel stamped, as time.Now would
// have read it. See clockOffset.
func (s *Session) ClockBracket() time.Duration { return s.bracket }

// Records delivers what the kernel recorded, each CPU's records in order
// (records of different CPUs may interleave out of order by up to the
// poll interval: sort by Time where order matters).
func (s *Session) Records() <-chan Record { return s.records }

// Lost reports how many records were lost.
func (s *Session) Lost() uint64 { return s.lost.Load() }

// read takes f's pages as the kernel fills them (the runtime's poller
// waits; buffer_percent 0 wakes it at every record) until Close closes f.
// Flush interrupts its wait with a read deadline: it then reads what the
// kernel holds, without waiting, and answers on the request's channel.
func (s *Session) read(f *os.File, flush <-chan chan struct{}) {
	defer s.wg.Done()
	page := make([]byte, os.Getpagesize())
	for {
		n, err := f.Read(page)
		if n > 0 {
			s.page(page[:n])
		}
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			f.SetReadDeadline(time.Time{})
			select {
			case ack := <-flush:
				s.drain(f, page)
				close(ack)
			default:
			}
		case err != nil && !errors.Is(err, io.EOF):
			return
		}
	}
}

// drain reads f's pages until the kernel has none, without waiting.
func (s *Session) drain(f *os.File, page []byte) {
	raw, err := f.SyscallConn()
	if err != nil {
		return
	}
	for {
		var n int
		var rerr error
		if err := raw.Read(func(fd uintptr) bool {
			n, rerr = unix.Read(int(fd), page)
			return true // never wait
		}); err != nil || rerr != nil || n <= 0 {
			return
		}
		s.page(page[:n])
	}
}

// Flush returns once every record the kernel wrote before the call is in
// Records (or counted as lost): each CPU's reader takes what its buffer
// holds now instead of waiting for the kernel to wake it.
func (s *Session) Flush() {
	acks := make([]chan struct{}, len(s.files))
	for i, f := range s.files {
		acks[i] = make(chan struct{})
		select {
		case s.flush[i] <- acks[i]:
		case <-s.closed:
			return
		}
		f.SetReadDeadline(time.Now())
	}
	for _, ack := range acks {
		select {
		case <-ack:
		case <-s.closed:
			return
		}
	}
}

func (s *Session) page(p []byte) {
	missed, err := parsePage(p, func(ts uint64, rec []byte) {
		r, ok := s.decode(ts, rec)
		if !ok {
			return
		}
		select {
		case s.records <- r:
		default:
			s.lost.Add(1)
		}
	})
	if missed || err != nil {
		s.lost.Add(1)
	}
}

func (s *Session) decode(ts uint64, rec []byte) (Record, bool) {
	if len(rec) < 2 {
		return Record{}, false
	}
	id := binary.NativeEndian.Uint16(rec)
	f, ok := s.formats[id]
	if !ok {
		return Record{}, false
	}
	r := Record{Time: time.Unix(0, int64(ts)+int64(s.monoOff)), Kind: f.kind, PID: int32(f.uint(rec, "common_pid")), Sk: f.uint(rec, "skaddr")}
	switch f.kind {
	case SetState, Retransmit, RetransmitSynAck, ReceiveReset:
		if f.uint(rec, "family") != unix.AF_INET {
			return Record{}, false
		}
		r.Src = addrPort(f.bytes(rec, "saddr"), uint16(f.uint(rec, "sport")))
		r.Dst = addrPort(f.bytes(rec, "daddr"), uint16(f.uint(rec, "dport")))
		r.OldState = TCPState(f.uint(rec, "oldstate"))
		r.NewState = TCPState(f.uint(rec, "newstate"))
		r.State = TCPState(f.uint(rec, "state"))
		r.Cookie = f.uint(rec, "sock_cookie")
		if f.kind == SetState && f.uint(rec, "protocol") != unix.IPPROTO_TCP {
			return Record{}, false
		}
	case Probe, SendReset:
		var ok1, ok2 bool
		r.Src, ok1 = sockaddr(f.bytes(rec, "saddr"))
		r.Dst, ok2 = sockaddr(f.bytes(rec, "daddr"))
		if !ok1 || !ok2 {
			return Record{}, false
		}
		if f.kind == SendReset && s.port != 0 && r.Src.Port() != s.port && r.Dst.Port() != s.port {
			return Record{}, false
		}
		r.State = TCPState(f.uint(rec, "state"))
		r.Cookie = f.uint(rec, "sock_cookie")
		r.DataLen = uint16(f.uint(rec, "data_len"))
		r.SndNxt = uint32(f.uint(rec, "snd_nxt"))
		r.SndUna = uint32(f.uint(rec, "snd_una"))
		r.SndCwnd = uint32(f.uint(rec, "snd_cwnd"))
		r.Ssthresh = uint32(f.uint(rec, "ssthresh"))
		r.SndWnd = uint32(f.uint(rec, "snd_wnd"))
		r.RcvWnd = uint32(f.uint(rec, "rcv_wnd"))
		// tcp_probe reports srtt_us >> 3, in microseconds.
		r.SRTT = time.Duration(f.uint(rec, "srtt")) * time.Microsecond
	}
	return r, true
}

// addrPort reads a 4-byte IPv4 address field.
func addrPort(b []byte, port uint16) netip.AddrPort {
	if len(b) != 4 {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b)), port)
}

// sockaddr reads a struct sockaddr_in stored in a 28-byte field (family,
// port in network order, address); only AF_INET.
func sockaddr(b []byte) (netip.AddrPort, bool) {
	if len(b) < 8 || uint16(b[0])|uint16(b[1])<<8 != unix.AF_INET {
		return netip.AddrPort{}, false
	}
	port := uint16(b[2])<<8 | uint16(b[3])
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port), true
}

// Close stops recording and removes the trace instance.
func (s *Session) Close() error {
	var err error
	s.closeMu.Do(func() {
		close(s.closed)
		for _, f := range s.files {
			f.Close() // wakes its reader
		}
		s.wg.Wait()
		err = s.remove()
	})
	return err
}

func (s *Session) remove() error {
	for _, e := range events {
		os.WriteFile(filepath.Join(s.dir, "events", e.system, e.name, "enable"), []byte("0"), 0)
	}
	// rmdir of an instance fails while a file in it is open: the readers
	// have closed theirs.
	if err := os.Remove(s.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove trace instance %s: %v", s.dir, err)
	}
	return nil
}

// RemoveStale removes the trace instances of sessions whose process is
// gone (killed before it could remove its own). Start calls it; a test
// suite that kills servers calls it when it ends.
func RemoveStale() {
	ents, err := os.ReadDir(filepath.Join(Root, "instances"))
	if err != nil {
		return
	}
	for _, e := range ents {
		var pid, n int
		if _, err := fmt.Sscanf(e.Name(), "tcp-upper-%d-%d", &pid, &n); err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			continue // alive (or not ours to ask): its owner closes it
		}
		(&Session{dir: filepath.Join(Root, "instances", e.Name())}).remove()
	}
}

// mountTracefs mounts tracefs at Root unless it is there.
func mountTracefs() error {
	if _, err := os.Stat(filepath.Join(Root, "instances")); err == nil {
		return nil
	}
	if err := unix.Mount("nodev", Root, "tracefs", 0, ""); err != nil {
		return fmt.Errorf("mount tracefs on %s: %v (run as root)", Root, err)
	}
	return nil
}

// onlineCPUs lists the CPUs with a buffer in the instance.
func onlineCPUs() ([]int, error) {
	text, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return nil, err
	}
	var cpus []int
	for _, r := range strings.Split(strings.TrimSpace(string(text)), ",") {
		lo, hi, found := strings.Cut(r, "-")
		var a, b int
		if _, err := fmt.Sscan(lo, &a); err != nil {
			return nil, fmt.Errorf("cpu list %q", text)
		}
		b = a
		if found {
			if _, err := fmt.Sscan(hi, &b); err != nil {
				return nil, fmt.Errorf("cpu list %q", text)
			}
		}
		for c := a; c <= b; c++ {
			cpus = append(cpus, c)
		}
	}
	return cpus, nil
}
