package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	c, err := parseFlags([]string{"-i", "10.0.2.2"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.server.String() != "10.0.2.2" || c.port != 9999 || c.stack != "kernel" || c.timeout != 10*time.Second {
		t.Fatalf("defaults: %+v", c)
	}
	c, err = parseFlags([]string{"-i", "10.0.2.2", "-p", "7", "--stack", "netstack", "--tun", "cli0", "--addr", "10.0.3.7/24"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.port != 7 || c.stack != "netstack" || c.tun != "cli0" || c.addr.String() != "10.0.3.7/24" || c.tunAddr.String() != "10.0.3.1/24" {
		t.Fatalf("netstack flags: %+v", c)
	}
}

func TestBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "-i SERVER_IP is required"},
		{[]string{"-i", "apple"}, "bad -i \"apple\""},
		{[]string{"-i", "fd00::1"}, "bad -i"},
		{[]string{"-i", "10.0.2.2", "-p", "0"}, "bad port"},
		{[]string{"-i", "10.0.2.2", "--stack", "x"}, "bad --stack"},
		{[]string{"-i", "10.0.2.2", "--timeout", "-1s"}, "bad --timeout"},
		{[]string{"-i", "10.0.2.2", "--timeout", "10"}, `bad --timeout "10": want a duration such as 10s, 500ms`},
		{[]string{"-i", "10.0.2.2", "--stack", "netstack", "--addr", "10.0.3.0/24"}, "network address"},
		{[]string{"-i", "10.0.2.2", "--stack", "netstack", "--tun-addr", "10.0.3.2/24"}, "equals --addr"},
		// One rule for every flag that means nothing to the kernel's TCP.
		{[]string{"-i", "10.0.2.2", "--tun", "tun5"}, "--tun: only with --stack netstack (the kernel's TCP needs no TUN)"},
		{[]string{"-i", "10.0.2.2", "--stack", "kernel", "--mtu", "9000"}, "--mtu: only with --stack netstack"},
		{[]string{"-i", "10.0.2.2", "--addr", "10.0.3.2/24"}, "--addr: only with --stack netstack"},
		{[]string{"-i", "10.0.2.2", "--offload=false"}, "--offload: only with --stack netstack"},
		{[]string{"-i", "10.0.2.2", "--linger"}, "--linger: only with --stack netstack"},
		{[]string{"-i", "10.0.2.2", "--trace", "--control", "none"}, "--control, --trace: only with --stack netstack (the kernel's TCP cannot be traced"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tc.args, os.Stdin, &stdout, &stderr)
		msg := stderr.String()
		if code != 2 || !strings.HasPrefix(msg, "tcp-upper-client: ") || strings.Count(msg, "\n") != 1 || !strings.Contains(msg, tc.want) {
			t.Errorf("%v: exit %d stderr %q, want exit 2 and one line containing %q", tc.args, code, msg, tc.want)
		}
	}
}
