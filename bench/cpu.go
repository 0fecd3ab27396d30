package bench

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// userHZ is the unit of /proc/stat's times: USER_HZ, 100 on every Linux
// architecture Go supports.
const userHZ = 100

// cpuMeter measures CPU time over an interval: the whole machine's busy
// time (every process, the kernel's softirqs included, from /proc/stat)
// and this process's own (the bench's client).
type cpuMeter struct {
	machine uint64 // busy jiffies
	self    time.Duration
	wall    time.Time
}

// cpuUsage is what a cpuMeter measured.
type cpuUsage struct {
	// Machine is the whole machine's busy CPU time (all CPUs), Self this
	// process's, Wall the interval.
	Machine, Self, Wall time.Duration
}

func startCPU() (cpuMeter, error) {
	m, err := machineBusy()
	if err != nil {
		return cpuMeter{}, err
	}
	return cpuMeter{machine: m, self: selfCPU(), wall: time.Now()}, nil
}

func (m cpuMeter) stop() (cpuUsage, error) {
	wall := time.Since(m.wall)
	b, err := machineBusy()
	if err != nil {
		return cpuUsage{}, err
	}
	return cpuUsage{Machine: time.Duration(b-m.machine) * time.Second / userHZ, Self: selfCPU() - m.self, Wall: wall}, nil
}

// perGB is CPU seconds (the whole machine's) per 10^9 bytes moved.
func (u cpuUsage) perGB(bytes int64) float64 {
	if bytes <= 0 {
		return 0
	}
	return u.Machine.Seconds() / (float64(bytes) / 1e9)
}

// selfShare is this process's CPU time as a percentage of one CPU over
// the interval.
func (u cpuUsage) selfShare() float64 {
	if u.Wall <= 0 {
		return 0
	}
	return 100 * u.Self.Seconds() / u.Wall.Seconds()
}

// machineBusy is the machine's busy time in jiffies: user, nice, system,
// irq, softirq and steal of /proc/stat's cpu line (guest time is inside
// user); idle and iowait are not busy.
func machineBusy() (uint64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("read /proc/stat: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var busy uint64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system irq softirq steal
		v, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: field %d of %q: %w", i, line, err)
		}
		busy += v
	}
	return busy, nil
}

func selfCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pinning puts the bench's client (this whole process) on one CPU and the
// servers it starts on another.
type pinning struct {
	client, server unix.CPUSet
	clientCPU      int
	serverCPU      int
	orig           unix.CPUSet
}

// pinClient pins every thread of this process to CPU client; threads
// created later inherit it from the thread that creates them. The servers
// go on CPU server. undo restores the original affinity.
func pinClient(client, server int) (*pinning, error) {
	p := &pinning{clientCPU: client, serverCPU: server}
	if err := unix.SchedGetaffinity(0, &p.orig); err != nil {
		return nil, fmt.Errorf("--pin: read CPU affinity: %w", err)
	}
	if !p.orig.IsSet(client) || !p.orig.IsSet(server) {
		return nil, fmt.Errorf("--pin needs CPUs %d and %d, this process may use %d CPUs: run on a machine with two", client, server, p.orig.Count())
	}
	p.client.Set(client)
	p.server.Set(server)
	if err := setAllThreads(os.Getpid(), &p.client); err != nil {
		return nil, fmt.Errorf("--pin: pin the client to CPU %d: %w", client, err)
	}
	return p, nil
}

func (p *pinning) undo() { setAllThreads(os.Getpid(), &p.orig) }

// setAllThreads sets the affinity of every thread of process pid, again
// until a pass finds no thread it has not set (one may be born meanwhile).
func setAllThreads(pid int, set *unix.CPUSet) error {
	done := map[int]bool{}
	for pass := 0; pass < 100; pass++ {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return err
		}
		fresh := false
		for _, e := range ents {
			tid, err := strconv.Atoi(e.Name())
			if err != nil || done[tid] {
				continue
			}
			if err := unix.SchedSetaffinity(tid, set); err != nil && err != unix.ESRCH {
				return fmt.Errorf("thread %d: %w", tid, err)
			}
			done[tid], fresh = true, true
		}
		if !fresh {
			return nil
		}
	}
	return fmt.Errorf("threads of %d keep appearing", pid)
}

// start wraps a start function: the program is forked from a thread on the
// server's CPU, so it and every thread it makes are born there.
func (p *pinning) start(start startFn) startFn {
	return func(cmd *exec.Cmd) error {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := unix.SchedSetaffinity(0, &p.server); err != nil {
			return fmt.Errorf("--pin: move to CPU %d to start the server: %w", p.serverCPU, err)
		}
		err := start(cmd)
		if rerr := unix.SchedSetaffinity(0, &p.client); rerr != nil && err == nil {
			err = fmt.Errorf("--pin: back to CPU %d: %w", p.clientCPU, rerr)
		}
		return err
	}
}

// check verifies that every thread of process pid is on the server's CPU.
func (p *pinning) check(pid int) error {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return fmt.Errorf("--pin: list threads of server %d: %w", pid, err)
	}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var s unix.CPUSet
		if err := unix.SchedGetaffinity(tid, &s); err != nil {
			continue // gone
		}
		if s != p.server {
			return fmt.Errorf("--pin: server thread %d may run on %d CPUs, not only CPU %d", tid, s.Count(), p.serverCPU)
		}
	}
	return nil
}
