package watch

import (
	"flag"
	"io"
	"strings"
	"testing"

	"github.com/tcp-upper/tcp-upper/cmd/internal/cli"
)

func TestNetstackOnlyNamesTheFlags(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	stack := fs.String("stack", "kernel", "")
	fs.Bool("linger", false, "")
	var f Flags
	f.Register(fs)
	if err := fs.Parse([]string{"--stack", "kernel", "--trace", "--fault", "in syn drop", "--linger", "--stack", "kernel"}); err != nil {
		t.Fatal(err)
	}
	only := cli.Merge(f.NetstackOnly(), cli.NetstackOnly{"linger": "the kernel keeps its own TIME-WAIT"})
	err := cli.CheckStack(fs, *stack, only)
	if err == nil || !strings.Contains(err.Error(), "--fault, --linger, --trace: only with --stack netstack (") {
		t.Fatalf("error %v", err)
	}
	if _, ok := only["stack"]; ok {
		t.Fatalf("--stack is not netstack-only: %v", only)
	}
	if _, ok := only["pcap"]; !ok {
		t.Fatalf("--pcap is netstack-only: %v", only)
	}
	if err := cli.CheckStack(fs, "netstack", only); err != nil {
		t.Fatal(err)
	}
}
