//go:build gvisor_unpatched

package netstack

import (
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/tcp-upper/tcp-upper/netstack/inspect"
)

// This file builds the package against pristine upstream gVisor
// (scripts/unpatched.sh sets the gvisor_unpatched tag), which has no
// observe hook: the patches' other regression tests still run there.

// noHook cannot be named outside this package: TCPObserveFunc can only be
// nil in this build.
type noHook struct{}

// TCPObserveFunc stands in for gVisor's observe hook, which pristine gVisor
// does not have (our patch 0009 adds it).
type TCPObserveFunc = func(noHook)

// tcpProtocol is gVisor's TCP with the probe (may be nil); observe is
// always nil in this build.
func tcpProtocol(probe tcp.TCPProbeFunc, _ TCPObserveFunc) stack.TransportProtocolFactory {
	if probe != nil {
		return tcp.NewProtocolProbe(probe)
	}
	return tcp.NewProtocol
}

// withTracker returns user (nil): pristine gVisor cannot tell the tracker
// its events, so the tracker reports only what the wire shows.
func withTracker(user TCPObserveFunc, _ *inspect.Tracker) TCPObserveFunc { return user }
