// Package control is the server's control socket: a Unix socket, owner
// only, through which tcp-upper-lab asks a running server for its socket
// table (ss), its counters (stats) and a live stream of connection events
// (events; with {"cmd":"events","args":{"segments":true}} also one segment
// event per TCP segment of a tracked connection, in order with the stack's
// events, which the live ladder draws as arrows).
//
// The protocol is JSON lines. The client sends one request object per line,
// {"cmd":"ss"}; the server answers each with one Response line or, for a
// stream ("events"), with Response lines until either side closes (the
// first, empty, says the stream runs: nothing after it is missed). A line
// that is not a request gets an error response naming the fix, and the
// connection stays usable.
package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcp-upper/tcp-upper/netstack/inspect"
)

// Dir is where servers put their control sockets by default.
const Dir = "/run/tcp-upper"

// MaxLine is the longest request line the server reads.
const MaxLine = 64 << 10

// Request is one line from a client.
type Request struct {
	// Cmd is the command: hello, ss, stats or events (and what later
	// layers register, such as fault).
	Cmd string `json:"cmd"`
	// Args are the command's arguments, if it takes any.
	Args json.RawMessage `json:"args,omitempty"`
}

// Response is one line from the server.
type Response struct {
	// Error is set when the request failed; the other fields are then
	// empty.
	Error string `json:"error,omitempty"`
	// Hello describes the server (hello).
	Hello *Hello `json:"hello,omitempty"`
	// Sockets is the socket table (ss).
	Sockets []Socket `json:"sockets,omitempty"`
	// Counters are the stack's counters (stats).
	Counters []Counter `json:"counters,omitempty"`
	// Event is one event of a stream (events): a segment event (Kind
	// "segment", its Seg set) only in a stream that asked for segments.
	Event *inspect.Event `json:"event,omitempty"`
	// Dropped is how many events (segment events included) this stream
	// has lost so far because the client read too slowly; sent whenever
	// it grows.
	Dropped uint64 `json:"dropped,omitempty"`
	// Data is the reply of commands registered by other layers.
	Data json.RawMessage `json:"data,omitempty"`
}

// Hello describes a running server.
type Hello struct {
	PID      int           `json:"pid"`
	Program  string        `json:"program"`
	TUN      string        `json:"tun"`
	Addr     string        `json:"addr"`
	TimeWait time.Duration `json:"time_wait"`
	Started  time.Time     `json:"started"`
	Seed     uint64        `json:"seed"` // the fault layer's seed
	Commands []string      `json:"commands"`
}

// Socket is one row of the socket table.
type Socket struct {
	State        inspect.State       `json:"state"`
	Local        netip.AddrPort      `json:"local"`
	Remote       netip.AddrPort      `json:"remote"`
	RecvQ        int                 `json:"recv_q"`
	SendQ        int                 `json:"send_q"`
	TimeWaitLeft time.Duration       `json:"time_wait_left,omitempty"`
	Info         *inspect.SocketInfo `json:"info,omitempty"`
}

// Counter is one named count.
type Counter struct {
	Name  string `json:"name"`
	Value uint64 `json:"value"`
	Help  string `json:"help,omitempty"`
}

// DefaultPath is the control socket path a server uses for TUN device tun
// when --control is not given: /run/tcp-upper/NETNS-TUN.sock, where NETNS
// is the name of the network namespace the process is in (from
// /run/netns), "host" for the initial one, or "netns-INODE" for an unnamed
// one. Servers in different namespaces therefore never share a path, even
// with the same TUN name.
func DefaultPath(tun string) string {
	return filepath.Join(Dir, netnsName()+"-"+tun+".sock")
}

func netnsName() string {
	var self unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &self); err != nil {
		return "host"
	}
	if entries, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range entries {
			var st unix.Stat_t
			if unix.Stat(filepath.Join("/run/netns", e.Name()), &st) == nil && st.Ino == self.Ino && st.Dev == self.Dev {
				return e.Name()
			}
		}
	}
	var init unix.Stat_t
	if err := unix.Stat("/proc/1/ns/net", &init); err != nil || init.Ino == self.Ino {
		return "host"
	}
	return fmt.Sprintf("netns-%d", self.Ino)
}

// Find looks for running servers' control sockets under Dir (NAME.sock,
// and lab-NAME/server.sock for servers the lab started) and returns the
// live ones, sorted.
func Find() []string {
	live, _ := scan()
	return live
}

// scan returns the live control sockets under Dir and those that refused
// us for permission (the server runs as another user: its socket, or Dir
// itself, is owner-only).
func scan() (live, denied []string) {
	if _, err := os.ReadDir(Dir); errors.Is(err, os.ErrPermission) {
		return nil, []string{Dir}
	}
	var paths []string
	for _, pat := range []string{filepath.Join(Dir, "*.sock"), filepath.Join(Dir, "lab-*", "*.sock")} {
		m, _ := filepath.Glob(pat)
		paths = append(paths, m...)
	}
	for _, p := range paths {
		c, err := net.DialTimeout("unix", p, 2*time.Second)
		switch {
		case err == nil:
			c.Close()
			live = append(live, p)
		case errors.Is(err, os.ErrPermission):
			denied = append(denied, p)
		}
	}
	sort.Strings(live)
	sort.Strings(denied)
	return live, denied
}

// deniedError says that we may not look for servers, or talk to those we
// found: a permission problem, not a missing server.
func deniedError(denied []string) error {
	if len(denied) == 1 && denied[0] == Dir {
		return fmt.Errorf("permission denied looking for servers in %s (owner-only: servers there run as another user, root?): run this as that user, e.g. with sudo", Dir)
	}
	return fmt.Errorf("permission denied on %s (owner-only: the server runs as another user, root?): run this as that user, e.g. with sudo", strings.Join(denied, ", "))
}

// Resolve picks the control socket to talk to: path if given, else the
// only live one Find sees. The error names the fix.
func Resolve(path string) (string, error) {
	if path != "" {
		return path, nil
	}
	live, denied := scan()
	switch len(live) {
	case 0:
		if len(denied) > 0 {
			return "", deniedError(denied)
		}
		return "", fmt.Errorf("no running server found under %s: start one (tcp-upper-lab up, or tcp-upper-server) or pass --control PATH", Dir)
	case 1:
		return live[0], nil
	}
	return "", fmt.Errorf("%d servers are running: pass --control with one of %s", len(live), strings.Join(live, ", "))
}

// ResolveIn picks the control socket of the one server running in the
// network namespace bound at nsPath, however it was started and wherever
// under Dir its socket is: the socket's peer credentials give the server's
// pid, whose namespace is compared with nsPath. where names the namespace
// in errors, and start says how to start a server there.
func ResolveIn(nsPath, where, start string) (string, error) {
	var want unix.Stat_t
	if err := unix.Stat(nsPath, &want); err != nil {
		return "", fmt.Errorf("%s: %w", where, err)
	}
	live, denied := scan()
	var in []string
	for _, p := range live {
		pid, err := peerPID(p)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && st.Dev == want.Dev && st.Ino == want.Ino {
			in = append(in, p)
		}
	}
	switch len(in) {
	case 0:
		if len(denied) > 0 {
			return "", deniedError(denied)
		}
		return "", fmt.Errorf("no running server found in %s: start one (%s) or pass --control PATH", where, start)
	case 1:
		return in[0], nil
	}
	return "", fmt.Errorf("%d servers are running in %s: pass --control with one of %s", len(in), where, strings.Join(in, ", "))
}

// peerPID connects to the socket at path and returns the pid of the
// process that listens on it (SO_PEERCRED).
func peerPID(path string) (int, error) {
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	rc, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, cerr
	}
	return int(cred.Pid), nil
}

// dialError explains a failed connect to a control socket in one line.
func dialError(path string, err error) error {
	switch {
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("control socket %s: no such file: is the server running? (its --control flag names the path)", path)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("control socket %s: connection refused: the server that made it is gone", path)
	case errors.Is(err, os.ErrPermission), errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("control socket %s: permission denied: it is owner-only; run as the server's user (e.g. with sudo)", path)
	}
	return fmt.Errorf("control socket %s: %w", path, err)
}
