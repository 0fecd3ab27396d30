package netstack

import (
	"errors"
	"net"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Conn is a TCP connection of our stack: gonet's net.Conn, plus a way to
// be told when it becomes readable without a goroutine blocked in Read (see
// NotifyReadable). A server holding thousands of idle connections then
// needs no goroutine, and no goroutine stack, for each.
//
// Its addresses are the 4-tuple it was opened or accepted with, for its
// whole life: gonet asks the endpoint each time, and a reset endpoint has
// none (RemoteAddr would be nil), as a kernel socket keeps them.
type Conn struct {
	*gonet.TCPConn
	wq            *waiter.Queue
	ep            tcpip.Endpoint
	local, remote *net.TCPAddr
}

func newConn(ep tcpip.Endpoint, wq *waiter.Queue, local, remote tcpip.FullAddress) *Conn {
	return &Conn{TCPConn: gonet.NewTCPConn(wq, ep), wq: wq, ep: ep, local: tcpAddr(local), remote: tcpAddr(remote)}
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
// would not block (data, EOF or an error); it may be called at once, from
// this goroutine, if that is already so. ready runs under the stack's
// wait-queue lock: it must not block or touch the connection (start a
// goroutine). stop removes the arrangement; call it, from a goroutine of
// your own, before arranging again or once ready has run.
func (c *Conn) NotifyReadable(ready func()) (stop func()) {
	var once sync.Once
	fire := func(waiter.EventMask) { once.Do(ready) }
	e := waiter.NewFunctionEntry(readableMask, fire)
	c.wq.EventRegister(&e)
	if c.ep.Readiness(readableMask) != 0 {
		fire(0)
	}
	return func() { c.wq.EventUnregister(&e) }
}

// listener is gonet's TCP listener whose Accept hands out *Conn.
type listener struct {
	*gonet.TCPListener
	ep        tcpip.Endpoint
	wq        *waiter.Queue
	done      chan struct{}
	closeOnce sync.Once
}

func newListener(gl *gonet.TCPListener, ep tcpip.Endpoint, wq *waiter.Queue) *listener {
	return &listener{TCPListener: gl, ep: ep, wq: wq, done: make(chan struct{})}
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
	return newConn(n, wq, local, peer), nil
}

// Close implements net.Listener.
func (l *listener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.TCPListener.Close()
}
