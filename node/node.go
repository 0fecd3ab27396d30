// Package node owns the life of one node of the lab built on our stack:
// the device under it, the stack with its link pipeline and connection
// tracker (netstack.Stack), what watches it (the pcap file, the event
// printer, the control socket: a Watcher), and the uppercase server on it.
// The server and the netstack client, the demo and the experiments all
// start and stop a node through it (the bench through the server), so the
// order is written once:
//
//	start:    device (given) -> stack and pipeline -> listener -> watcher -> server (Serve)
//	shutdown: server (a FIN on every connection) -> drain (the FINs
//	          acknowledged, unless the link is down) -> stack, pipeline and
//	          device (Stack.Close) -> watcher (reports what could not be recorded)
package node

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/tun"
)

// Watcher is what watches a node's stack (watch.Session in the programs):
// started once the stack exists, before the server serves; closed after
// the stack has closed, so the trace recorder and the tracker have
// finished and what they could not record is known.
type Watcher interface {
	Start(st *netstack.Stack) error
	Close(ctx context.Context)
}

// Options configure a node.
type Options struct {
	// Stack configures the stack and its pipeline. Its OnLinkError is
	// called as given, and the node also reports the error (LinkErr).
	Stack netstack.Options
	// Serve: the node runs the uppercase server on Port, with Server.
	Serve  bool
	Port   uint16
	Server app.ServerOptions
	// Watch, if set, watches the stack.
	Watch Watcher
	Log   *slog.Logger
}

// Node is one running node.
type Node struct {
	// Stack is the node's stack (dial from it, read its tracker).
	Stack *netstack.Stack
	// Server is the uppercase server, nil without Options.Serve.
	Server *app.Server

	watch    Watcher
	log      *slog.Logger
	served   chan error
	linkErr  chan error
	linkDown atomic.Bool
	serving  sync.Once
	closing  sync.Once
}

// Start brings a node up over dev, which it takes over: Close (or Start
// itself, when it fails) closes it, through the stack's pipeline. The
// server does not accept before Serve.
func Start(dev tun.Device, opts Options) (*Node, error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := &Node{watch: opts.Watch, log: log, served: make(chan error, 1), linkErr: make(chan error, 1)}
	onLinkError := opts.Stack.OnLinkError
	opts.Stack.OnLinkError = func(err error) {
		n.linkDown.Store(true)
		if onLinkError != nil {
			onLinkError(err)
		}
		select {
		case n.linkErr <- err:
		default:
		}
	}
	st, err := netstack.New(dev, opts.Stack, log)
	if err != nil {
		dev.Close()
		if n.watch != nil {
			n.watch.Close(context.Background())
		}
		return nil, err
	}
	n.Stack = st
	var ln net.Listener
	if opts.Serve {
		if ln, err = st.Listen(opts.Port); err != nil {
			n.Close()
			return nil, err
		}
	}
	if n.watch != nil {
		if err := n.watch.Start(st); err != nil {
			if ln != nil {
				ln.Close()
			}
			n.Close()
			return nil, err
		}
	}
	if ln != nil {
		n.Server = app.NewServer(ln, opts.Server, log)
	}
	return n, nil
}

// Serve starts the server accepting, once; Served reports how it ended.
func (n *Node) Serve() {
	if n.Server == nil {
		return
	}
	n.serving.Do(func() { go func() { n.served <- n.Server.Serve() }() })
}

// Served receives what Serve returned: nil after Shutdown, the accept
// error otherwise.
func (n *Node) Served() <-chan error { return n.served }

// LinkErr receives the link's error if the device fails.
func (n *Node) LinkErr() <-chan error { return n.linkErr }

// Shutdown takes the node down in order: the server stops accepting and
// ends every connection with a FIN; the stack waits for those FINs to be
// acknowledged (Drain; not when the link is down, nothing would arrive);
// then Close. What did not finish before ctx ended is reported in the
// error and closed anyway.
func (n *Node) Shutdown(ctx context.Context) error {
	var errs []error
	if n.Server != nil {
		if err := n.Server.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if !n.linkDown.Load() {
		if err := n.Stack.Drain(ctx); err != nil {
			errs = append(errs, fmt.Errorf("waiting for FINs to be acknowledged: %w", err))
		}
	}
	n.Close()
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// Close closes the stack, its pipeline and the device (a connection still
// open is reset), then the watcher. It does not drain; Shutdown does.
// Calling it again does nothing.
func (n *Node) Close() {
	n.closing.Do(func() {
		if n.Server != nil {
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // no grace: Shutdown is the way to close cleanly
			n.Server.Shutdown(ctx)
		}
		n.Stack.Close()
		if n.watch != nil {
			n.watch.Close(context.Background())
		}
	})
}
