// Package netnsx runs code inside a Linux network namespace from a
// multi-threaded Go program.
//
// A namespace belongs to an OS thread, not to a goroutine, so Do locks the
// goroutine to its thread, switches the thread, runs the function and
// switches back. Sockets and TUN devices created inside the function stay in
// that namespace for their whole life, wherever they are used afterwards.
package netnsx

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs fn with the calling thread in the network namespace at path (for
// example /var/run/netns/NAME). An empty path runs fn where we are.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer target.Close()
	return DoHandle(target, fn)
}

// DoHandle is Do for an open namespace handle.
func DoHandle(target netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace: %w", err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: the runtime throws it away when this
		// goroutine ends, so no other goroutine runs in the wrong namespace.
		return fmt.Errorf("return to original network namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}
