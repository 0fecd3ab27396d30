// Package tun gives the user-space stack its wire: a Linux TUN device that
// carries raw IP packets between the kernel and our netstack, and an
// in-memory pair of devices for tests and for running without privileges.
//
// The interface is deliberately small (the shape of wireguard-go's tun.Device):
// one packet per Read and per Write. Link endpoints in package netstack drive
// a Device; they never see a file descriptor.
package tun

import (
	"errors"
)

// Device is a point-to-point link that carries raw IPv4/IPv6 packets without
// any link-layer header.
type Device interface {
	// Name is the interface name (for example "tun0").
	Name() string
	// MTU is the largest IP packet the device carries.
	MTU() int
	// Read blocks until one packet arrives and copies it into buf, returning
	// its length. It returns ErrClosed after Close and a wrapped error if the
	// device went away underneath us.
	Read(buf []byte) (int, error)
	// Write sends one packet. It never blocks for long: a device that cannot
	// take the packet drops it, as a NIC queue would.
	Write(pkt []byte) (int, error)
	// Close releases the device. A device that Open created is deleted; one
	// that existed before is left as it was.
	Close() error
}

// TryReader is a device whose reader can look for a packet without
// waiting for one, for a reader that busy-polls before it sleeps
// (tunlink's Options.Spin). A Linux TUN and a Pipe are both.
type TryReader interface {
	// TryRead is Read that returns at once: ok is false, with no error,
	// if no packet was queued.
	TryRead(buf []byte) (n int, ok bool, err error)
	// TryReadOffload is OffloadDevice.ReadOffload that returns at once:
	// ok is false, with no error, if no packet was queued.
	TryReadOffload(buf []byte) (n int, o Offload, ok bool, err error)
}

// ErrClosed is returned by Read and Write after Close.
var ErrClosed = errors.New("tun: device closed")
