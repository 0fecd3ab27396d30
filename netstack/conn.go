package netstack

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Conn is a TCP connection of our stack: gonet's net.Conn, plus a way to
// be told when it becomes readable without a goroutine blocked in Read (see
// NotifyReadable) and to read and write without waiting (TryRead,
// TryWrite). A server holding thousands of idle connections then needs no
// goroutine, and no goroutine stack, for each, and can answer a short
// request on the goroutine that received it.
//
// Its addresses are the 4-tuple it was opened or accepted with, for its
// whole life: gonet asks the endpoint each time, and a reset endpoint has
// none (RemoteAddr would be nil), as a kernel socket keeps them.
type Conn struct {
	*gonet.TCPConn
	wq            *waiter.Queue
	ep            tcpip.Endpoint
	local, remote *net.TCPAddr
	rd            readiness
	unnotify      func() // c.stopReadable, bound once
	// wr is TryWrite's reader over the caller's bytes.
	wr bytes.Reader
}

// newConn wraps an endpoint; soon runs its readiness outside the stack's
// locks (tunlink's Soon).
func newConn(ep tcpip.Endpoint, wq *waiter.Queue, local, remote tcpip.FullAddress, soon func(func())) *Conn {
	c := &Conn{TCPConn: gonet.NewTCPConn(wq, ep), wq: wq, ep: ep, local: tcpAddr(local), remote: tcpAddr(remote)}
	c.rd.soon = soon
	c.rd.entry.Init(&c.rd, readableMask)
	c.unnotify = c.stopReadable
	return c
}

func tcpAddr(a tcpip.FullAddress) *net.TCPAddr {
	return &net.TCPAddr{IP: net.IP(a.Addr.AsSlice()), Port: int(a.Port)}
}

// LocalAddr implements net.Conn: the address the connection was opened
// with, even after a reset.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr implements net.Conn: the peer the connection was opened with,
// even after a reset.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// readableMask is what wakes a reader: data or EOF, and errors.
const readableMask = waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr

// NotifyReadable arranges for ready to be called once, as soon as a Read
// would not block (data, EOF or an error). ready runs without the stack's
// locks: when the packet that made the connection readable is being
// delivered from the device, on the goroutine delivering it, right after
// it (the device is not read meanwhile, so ready must not block: TryRead
// and TryWrite don't); otherwise on a goroutine of its own. stop removes
// the arrangement; call it before arranging again or once ready has run.
// Arranging allocates nothing: a connection that parks after every
// request costs no garbage for it.
func (c *Conn) NotifyReadable(ready func()) (stop func()) {
	r := &c.rd
	r.ready = ready
	r.armed.Store(true)
	c.wq.EventRegister(&r.entry)
	if c.ep.Readiness(readableMask) != 0 {
		r.NotifyEvent(0)
	}
	return c.unnotify
}

// readiness is NotifyReadable's arrangement; a connection has one and
// reuses it.
type readiness struct {
	entry waiter.Entry
	armed atomic.Bool // arranged, and ready not yet handed to soon
	ready func()
	soon  func(func())
}

// NotifyEvent implements waiter.EventListener. It runs under the wait
// queue's lock.
func (r *readiness) NotifyEvent(waiter.EventMask) {
	if r.armed.CompareAndSwap(true, false) {
		r.soon(r.ready)
	}
}

func (c *Conn) stopReadable() {
	c.wq.EventUnregister(&c.rd.entry)
	c.rd.armed.Store(false)
}

// TryRead reads what has arrived into b, without waiting: (0, nil) when
// nothing has, io.EOF once the peer has closed and everything was read.
func (c *Conn) TryRead(b []byte) (int, error) {
	w := tcpip.SliceWriter(b)
	res, err := c.ep.Read(&w, tcpip.ReadOptions{})
	switch err.(type) {
	case nil:
		return res.Count, nil
	case *tcpip.ErrWouldBlock:
		return 0, nil
	case *tcpip.ErrClosedForReceive:
		return 0, io.EOF
	}
	return 0, c.opError("read", err)
}

// TryWrite writes as much of b as the send buffer takes now, without
// waiting, and says how much that was.
func (c *Conn) TryWrite(b []byte) (int, error) {
	c.wr.Reset(b)
	n, err := c.ep.Write(&c.wr, tcpip.WriteOptions{})
	switch err.(type) {
	case nil, *tcpip.ErrWouldBlock:
		return int(n), nil
	}
	return int(n), c.opError("write", err)
}

// opError is err as gonet reports it.
func (c *Conn) opError(op string, err tcpip.Error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.local, Addr: c.remote, Err: errors.New(err.String())}
}

// listener is gonet's TCP listener whose Accept hands out *Conn.
type listener struct {
	*gonet.TCPListener
	ep        tcpip.Endpoint
	wq        *waiter.Queue
	soon      func(func())
	done      chan struct{}
	closeOnce sync.Once
}

func newListener(gl *gonet.TCPListener, ep tcpip.Endpoint, wq *waiter.Queue, soon func(func())) *listener {
	return &listener{TCPListener: gl, ep: ep, wq: wq, soon: soon, done: make(chan struct{})}
}

// Accept implements net.Listener, as gonet's does. A connection the peer
// reset while it waited to be accepted is handed out too, as the kernel
// does: it keeps its addresses, and its first Read reports the reset.
func (l *listener) Accept() (net.Conn, error) {
	var peer tcpip.FullAddress
	n, wq, err := l.ep.Accept(&peer)
	if _, ok := err.(*tcpip.ErrWouldBlock); ok {
		entry, ch := waiter.NewChannelEntry(waiter.ReadableEvents)
		l.wq.EventRegister(&entry)
		defer l.wq.EventUnregister(&entry)
		for {
			n, wq, err = l.ep.Accept(&peer)
			if _, ok := err.(*tcpip.ErrWouldBlock); !ok {
				break
			}
			select {
			case <-l.done:
				return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
			case <-ch:
			}
		}
	}
	if err != nil {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: errors.New(err.String())}
	}
	// The local address is the endpoint's ID, set when the SYN arrived;
	// unlike the remote one, gVisor gives it in any state.
	local, lerr := n.GetLocalAddress()
	if lerr != nil {
		local, _ = l.ep.GetLocalAddress()
	}
	return newConn(n, wq, local, peer, l.soon), nil
}

// Close implements net.Listener.
func (l *listener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.TCPListener.Close()
}
