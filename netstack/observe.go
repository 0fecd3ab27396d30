//go:build !gvisor_unpatched

package netstack

import (
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/tcp-upper/tcp-upper/netstack/inspect"
)

// TCPObserveFunc is gVisor's observe hook, which our patch 0009 adds
// (third_party/patches/gvisor/0009-tcp-observe-hook.patch): see
// tcp.TCPObservation for what it is given.
type TCPObserveFunc = tcp.TCPObserveFunc

// tcpProtocol is gVisor's TCP with the probe and the observe hook (either
// may be nil).
func tcpProtocol(probe tcp.TCPProbeFunc, observe TCPObserveFunc) stack.TransportProtocolFactory {
	switch {
	case observe != nil:
		return tcp.NewProtocolObserve(probe, observe)
	case probe != nil:
		return tcp.NewProtocolProbe(probe)
	}
	return tcp.NewProtocol
}

// withTracker adds the connection tracker's hook to the user's (either
// may be nil).
func withTracker(user TCPObserveFunc, tr *inspect.Tracker) TCPObserveFunc {
	switch {
	case tr == nil:
		return user
	case user == nil:
		return tr.Observe
	}
	return func(o *tcp.TCPObservation) {
		user(o)
		tr.Observe(o)
	}
}
