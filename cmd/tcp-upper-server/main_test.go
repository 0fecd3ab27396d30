package main

import (
	"bytes"
	"context"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestParseFlagsDefaults(t *testing.T) {
	c, err := parseFlags(nil, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.port != 9999 || c.stack != "netstack" || c.tun != "tun0" || c.addr.String() != "10.0.2.2/24" ||
		c.tunAddr.String() != "10.0.2.1/24" || c.mtu != 1500 || c.mtuSet {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		args          []string
		port          int
		stack, tun    string
		addr, tunAddr string
		mtu           int
	}{
		{[]string{"-p", "8000"}, 8000, "netstack", "tun0", "10.0.2.2/24", "10.0.2.1/24", 1500},
		{[]string{"--port=8001", "--stack", "kernel"}, 8001, "kernel", "tun0", "10.0.2.2/24", "10.0.2.1/24", 1500},
		// The kernel's events come from its tracepoints.
		{[]string{"--stack", "kernel", "--events", "--events-format", "json"}, 9999, "kernel", "tun0", "10.0.2.2/24", "10.0.2.1/24", 1500},
		{[]string{"--tun", "up0", "--addr", "192.168.7.10/24"}, 9999, "netstack", "up0", "192.168.7.10/24", "192.168.7.1/24", 1500},
		{[]string{"--addr", "10.9.0.5/16", "--tun-addr", "10.9.0.1/16", "--mtu", "9000"}, 9999, "netstack", "tun0", "10.9.0.5/16", "10.9.0.1/16", 9000},
		{[]string{"--tun-addr", "none"}, 9999, "netstack", "tun0", "10.0.2.2/24", "invalid Prefix", 1500},
	} {
		c, err := parseFlags(tc.args, &bytes.Buffer{})
		if err != nil {
			t.Errorf("%v: %v", tc.args, err)
			continue
		}
		if int(c.port) != tc.port || c.stack != tc.stack || c.tun != tc.tun || c.addr.String() != tc.addr || c.tunAddr.String() != tc.tunAddr || c.mtu != tc.mtu {
			t.Errorf("%v: got port %d stack %s tun %s addr %s tun-addr %s mtu %d", tc.args, c.port, c.stack, c.tun, c.addr, c.tunAddr, c.mtu)
		}
	}
}

// Bad command lines exit 2 with one line that names the problem, before
// anything is created.
func TestBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-p", "0"}, "bad port \"0\""},
		{[]string{"-p", "70000"}, "bad port \"70000\""},
		{[]string{"--port", "http"}, "bad port \"http\""},
		{[]string{"--stack", "bsd"}, "bad --stack \"bsd\""},
		{[]string{"--addr", "10.0.2.2"}, "want IPv4 address/prefix"},
		{[]string{"--addr", "10.0.2.0/24"}, "network address"},
		{[]string{"--addr", "10.0.2.255/24"}, "broadcast address"},
		{[]string{"--addr", "fd00::2/64"}, "only IPv4"},
		{[]string{"--addr", "10.0.2.2/31"}, "prefix /31"},
		{[]string{"--tun-addr", "10.0.3.1/24"}, "outside --tun-addr's network"},
		{[]string{"--tun-addr", "10.0.2.2/24"}, "equals --addr"},
		{[]string{"--addr", "10.0.2.1/24"}, "first host"},
		{[]string{"--mtu", "20"}, "bad --mtu 20"},
		{[]string{"--tun", "a-name-that-is-too-long"}, "at most 15"},
		{[]string{"--tun", "bad/name"}, "character '/'"},
		{[]string{"--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"extra"}, "unexpected argument \"extra\""},
		{[]string{"--log-level", "loud"}, "bad --log-level"},
		{[]string{"--max-conns", "-1"}, "bad --max-conns -1"},
		{[]string{"--backlog", "0"}, "bad --backlog 0"},
		{[]string{"--backlog", "70000"}, "bad --backlog 70000"},
		{[]string{"--procs", "-1"}, "bad --procs -1"},
		{[]string{"--tun-spin", "2ms"}, "bad --tun-spin 2ms: want 0 to 1ms"},
		{[]string{"--tun-spin", "-1us"}, "bad --tun-spin -1µs"},
		{[]string{"--stack", "kernel", "--tun-spin", "30us"}, "--tun-spin: only with --stack netstack (the kernel's TCP needs no TUN)"},
		{[]string{"--gc-floor", "-1"}, "bad --gc-floor -1"},
		{[]string{"--gc-floor", "5000"}, "bad --gc-floor 5000"},
		{[]string{"--user-timeout", "-1s"}, "bad --user-timeout -1s"},
		{[]string{"--time-wait", "5"}, `bad --time-wait "5": want a duration such as 10s, 500ms`},
		{[]string{"--idle-close", "soon"}, `bad --idle-close "soon": want a duration such as 10s, 500ms`},
		{[]string{"--max-conns", "many"}, `bad --max-conns "many": want a whole number`},
		// One rule for every flag that means nothing to the kernel's TCP.
		{[]string{"--stack", "kernel", "--backlog", "16"}, "--backlog: only with --stack netstack (the kernel's backlog is net.core.somaxconn)"},
		{[]string{"--stack", "kernel", "--tun", "tun5"}, "--tun: only with --stack netstack (the kernel's TCP needs no TUN)"},
		{[]string{"--stack", "kernel", "--tun-addr", "none"}, "--tun-addr: only with --stack netstack"},
		{[]string{"--stack", "kernel", "--addr", "10.0.2.2/24"}, "--addr: only with --stack netstack"},
		{[]string{"--stack", "kernel", "--mtu", "9000"}, "--mtu: only with --stack netstack"},
		{[]string{"--stack", "kernel", "--offload=false"}, "--offload: only with --stack netstack"},
		{[]string{"--stack", "kernel", "--control", "none"}, "--control: only with --stack netstack (the kernel's TCP cannot be traced"},
		{[]string{"--stack", "kernel", "--trace", "--pcap", "x.pcap"}, "--pcap, --trace: only with --stack netstack"},
		{[]string{"--stack", "kernel", "--fault", "in syn drop", "--seed", "1"}, "--fault, --seed: only with --stack netstack"},
		{[]string{"--stack", "kernel", "--time-wait", "1s", "--tun", "t1"}, "--time-wait, --tun: only with --stack netstack (the kernel's TCP cannot be traced, faulted or inspected from here; use tcpdump and ss (the server's --events works on both); the kernel's TCP needs no TUN)"},
		{[]string{"--stack", "kernel", "--events", "--events-format", "xml"}, "bad --events-format"},
		{[]string{"--stack", "kernel", "--events", "--user", "nobody"}, "--events with --stack kernel cannot go with --user"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tc.args, &stdout, &stderr)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", tc.args, code, stderr.String())
		}
		msg := stderr.String()
		if !strings.HasPrefix(msg, "tcp-upper-server: ") || strings.Count(msg, "\n") != 1 || !strings.Contains(msg, tc.want) {
			t.Errorf("%v: stderr %q, want one line containing %q", tc.args, msg, tc.want)
		}
		if stdout.Len() != 0 {
			t.Errorf("%v: printed %q on stdout", tc.args, stdout.String())
		}
	}
}

func TestHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"-h"}, &stdout, &stderr); code != 0 {
		t.Fatalf("-h exit %d", code)
	}
	for _, f := range []string{"-port", "-stack", "-tun", "-addr", "-tun-addr", "-mtu"} {
		if !strings.Contains(stderr.String(), f) {
			t.Errorf("-h does not mention %s: %s", f, stderr.String())
		}
	}
}

// --procs sets GOMAXPROCS; 0, the default, leaves Go's choice.
func TestProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	for _, tc := range []struct {
		args []string
		want int
	}{
		{nil, 7},
		{[]string{"--procs", "0"}, 7},
		{[]string{"--procs", "1"}, 1},
		{[]string{"--stack", "kernel", "--procs", "2"}, 2},
	} {
		runtime.GOMAXPROCS(7)
		c, err := parseFlags(tc.args, io.Discard)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		c.applyProcs()
		if got := runtime.GOMAXPROCS(0); got != tc.want {
			t.Errorf("%v: GOMAXPROCS %d, want %d", tc.args, got, tc.want)
		}
	}
}

// --tun-spin reaches the config; by default the reader spins 50 µs, and 0
// turns spinning off.
func TestTunSpinFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want time.Duration
	}{
		{nil, 50 * time.Microsecond},
		{[]string{"--tun-spin", "30us"}, 30 * time.Microsecond},
		{[]string{"--tun-spin", "0"}, 0},
	} {
		c, err := parseFlags(tc.args, &bytes.Buffer{})
		if err != nil {
			t.Fatal(err)
		}
		if c.spin != tc.want {
			t.Errorf("%v: spin %v, want %v", tc.args, c.spin, tc.want)
		}
	}
}
