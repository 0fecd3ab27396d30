package main

import (
	"errors"
	"fmt"
	"os/user"
	"strconv"
	"syscall"
)

// account is the user --user names: whom the server becomes once the
// things that need privileges (the TUN, the control socket, the pcap file)
// are open.
type account struct {
	name   string
	uid    int
	gid    int
	groups []int
}

// lookupAccount resolves --user NAME (from /etc/passwd and /etc/group, or
// NSS).
func lookupAccount(name string) (*account, error) {
	u, err := user.Lookup(name)
	if err != nil {
		var unknown user.UnknownUserError
		if errors.As(err, &unknown) {
			return nil, fmt.Errorf("bad --user %q: no such user: give a user name from /etc/passwd, such as nobody", name)
		}
		return nil, fmt.Errorf("bad --user %q: %w", name, err)
	}
	a := &account{name: name}
	if a.uid, err = strconv.Atoi(u.Uid); err != nil {
		return nil, fmt.Errorf("bad --user %q: uid %q is not a number", name, u.Uid)
	}
	if a.gid, err = strconv.Atoi(u.Gid); err != nil {
		return nil, fmt.Errorf("bad --user %q: gid %q is not a number", name, u.Gid)
	}
	ids, err := u.GroupIds()
	if err != nil {
		ids = []string{u.Gid} // no group database entry: the primary group only
	}
	for _, s := range ids {
		if g, err := strconv.Atoi(s); err == nil {
			a.groups = append(a.groups, g)
		}
	}
	return a, nil
}

// drop makes every thread of the process a's user: supplementary groups,
// then gid, then uid (the order that leaves no way back). Go applies the
// set*id calls to all threads (since Go 1.16). Leaving uid 0 clears the
// capabilities too. A nil account (no --user) drops nothing; a process
// already running as the user stays as it is.
func (a *account) drop() error {
	if a == nil || (syscall.Geteuid() == a.uid && syscall.Getuid() == a.uid && syscall.Getegid() == a.gid && syscall.Getgid() == a.gid) {
		return nil // nothing to drop, or already that user
	}
	if err := syscall.Setgroups(a.groups); err != nil {
		return a.dropError("setgroups", err)
	}
	if err := syscall.Setgid(a.gid); err != nil {
		return a.dropError("setgid", err)
	}
	if err := syscall.Setuid(a.uid); err != nil {
		return a.dropError("setuid", err)
	}
	if syscall.Getuid() != a.uid || syscall.Geteuid() != a.uid || syscall.Getgid() != a.gid || syscall.Getegid() != a.gid {
		return fmt.Errorf("--user %s: still uid %d gid %d after dropping privileges", a.name, syscall.Geteuid(), syscall.Getegid())
	}
	return nil
}

func (a *account) dropError(call string, err error) error {
	if errors.Is(err, syscall.EPERM) {
		return fmt.Errorf("--user %s: %s: %w: switching users needs the server to start as root", a.name, call, err)
	}
	return fmt.Errorf("--user %s: %s: %w", a.name, call, err)
}
