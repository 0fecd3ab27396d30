package kevents

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tcp-upper/tcp-upper/internal/ktrace"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
)

// SockDiag is Diag over netlink's sock_diag in one network namespace.
type SockDiag struct {
	h *netlink.Handle
}

// OpenSockDiag opens sock_diag in the namespace bound at nsPath (""
// for this thread's).
func OpenSockDiag(nsPath string) (*SockDiag, error) {
	if nsPath == "" {
		h, err := netlink.NewHandle(unix.NETLINK_INET_DIAG)
		if err != nil {
			return nil, fmt.Errorf("sock_diag: %w", err)
		}
		return &SockDiag{h: h}, nil
	}
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("sock_diag: open namespace %s: %w", nsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_INET_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag in %s: %w", nsPath, err)
	}
	return &SockDiag{h: h}, nil
}

// Lookup implements Diag: it lists the namespace's TCP sockets (a lab's
// namespace has a handful) and finds local -> remote.
func (d *SockDiag) Lookup(local, remote netip.AddrPort) (Entry, bool, error) {
	socks, err := d.h.SocketDiagTCP(unix.AF_INET)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return Entry{}, false, err
	}
	for _, s := range socks {
		l := addrPort(s.ID.Source, s.ID.SourcePort)
		r := addrPort(s.ID.Destination, s.ID.DestinationPort)
		if l == local && r == remote {
			return Entry{State: ktrace.TCPState(s.State), Timer: time.Duration(s.Expires) * time.Millisecond}, true, nil
		}
	}
	if err != nil {
		return Entry{}, false, err // interrupted: not sure it is gone
	}
	return Entry{}, false, nil
}

func addrPort(ip net.IP, port uint16) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip.To4())
	return netip.AddrPortFrom(a, port)
}

// Close releases the netlink socket.
func (d *SockDiag) Close() { d.h.Close() }

// Window is how long a Stream holds records to put them in time order:
// each CPU's records come in order, different CPUs' up to this far apart.
const Window = 10 * time.Millisecond

// Stream follows the kernel's side live: a ktrace session, sock_diag in
// the sockets' namespace and a Follower.
type Stream struct {
	sess *ktrace.Session
	diag *SockDiag
	f    *Follower
	ch   chan inspect.Event
	sync chan chan struct{}
	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once
	// dropped counts events a slow reader of C missed.
	dropped atomic.Uint64
}

// Start starts following: nsPath is the namespace whose sock_diag tells
// TIME-WAIT ("" for this thread's). The error wraps ktrace.ErrUnavailable
// when tracing cannot start (no tracefs, not root): say so in one line and
// go on without the kernel's side.
func Start(opts Options, nsPath string) (*Stream, error) {
	port := opts.Port
	if opts.Server.IsValid() {
		port = opts.Server.Port()
	}
	diag, err := OpenSockDiag(nsPath)
	if err != nil {
		return nil, err
	}
	sess, err := ktrace.Start(ktrace.Options{Port: port})
	if err != nil {
		diag.Close()
		return nil, err
	}
	opts.Diag = diag
	s := &Stream{sess: sess, diag: diag, f: New(opts), ch: make(chan inspect.Event, 4096),
		sync: make(chan chan struct{}), done: make(chan struct{})}
	s.wg.Add(1)
	go s.run()
	return s, nil
}

// C delivers the events; it is closed by Close.
func (s *Stream) C() <-chan inspect.Event { return s.ch }

// Sync returns once every record the kernel stamped before the call has
// been turned into events (each CPU's buffer is read out first) and
// TIME-WAIT entries have been looked up.
func (s *Stream) Sync() {
	s.sess.Flush()
	done := make(chan struct{})
	select {
	case s.sync <- done:
		<-done
	case <-s.done:
	}
}

// ClockBracket says how exactly the kernel's times are put on our wall
// clock: each event's time is within half of it (ktrace.Session.ClockBracket).
func (s *Stream) ClockBracket() time.Duration { return s.sess.ClockBracket() }

// Lost is how many records (the kernel's buffer overflowed, or we fell
// behind) or events (the reader of C fell behind) were lost.
func (s *Stream) Lost() uint64 { return s.sess.Lost() + s.dropped.Load() }

// Close stops following, removes the trace instance and closes C.
func (s *Stream) Close() error {
	var err error
	s.once.Do(func() {
		s.sess.Flush() // what the kernel holds still reaches C
		close(s.done)
		s.wg.Wait()
		err = s.sess.Close()
		s.diag.Close()
		close(s.ch)
	})
	return err
}

func (s *Stream) run() {
	defer s.wg.Done()
	var pending []ktrace.Record
	// flush hands the follower the records stamped before t, in order.
	flush := func(t time.Time) {
		sort.SliceStable(pending, func(i, j int) bool { return pending[i].Time.Before(pending[j].Time) })
		n := 0
		for n < len(pending) && pending[n].Time.Before(t) {
			s.send(s.f.Record(pending[n]))
			n++
		}
		pending = append(pending[:0], pending[n:]...)
	}
	// drain takes what the readers had delivered when it was called (not
	// more: under a flood of records it would never end).
	drain := func() {
		for n := len(s.sess.Records()); n > 0; n-- {
			r := <-s.sess.Records()
			s.f.Arrived(r)
			pending = append(pending, r)
		}
	}
	tick := time.NewTicker(Window)
	defer tick.Stop()
	lastPoll := time.Now()
	for {
		select {
		case r := <-s.sess.Records():
			s.f.Arrived(r)
			pending = append(pending, r)
		case now := <-tick.C:
			flush(now.Add(-Window))
			if s.f.Waiting() && now.Sub(lastPoll) >= s.f.opts.Poll {
				lastPoll = now
				s.send(s.f.Poll(now))
			}
		case done := <-s.sync:
			// Sync read every CPU's buffer out before it asked: what the
			// kernel stamped before now is in Records.
			at := time.Now()
			drain()
			flush(at.Add(time.Nanosecond))
			if s.f.Waiting() {
				lastPoll = time.Now()
				s.send(s.f.Poll(lastPoll))
			}
			close(done)
		case <-s.done:
			drain()
			flush(time.Now().Add(time.Hour))
			return
		}
	}
}

func (s *Stream) send(evs []inspect.Event) {
	for _, ev := range evs {
		select {
		case s.ch <- ev:
		default:
			s.dropped.Add(1)
		}
	}
}
