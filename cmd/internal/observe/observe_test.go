package observe

import (
	"flag"
	"io"
	"strings"
	"testing"
)

func TestRequireNetstackNamesTheFlags(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	stack := fs.String("stack", "kernel", "")
	fs.Bool("linger", false, "")
	var f Flags
	f.Register(fs)
	if err := fs.Parse([]string{"--stack", "kernel", "--trace", "--fault", "in syn drop", "--linger", "--stack", "kernel"}); err != nil {
		t.Fatal(err)
	}
	err := f.RequireNetstack(fs, *stack, "linger")
	if err == nil || !strings.Contains(err.Error(), "--fault, --linger, --trace: only with --stack netstack") {
		t.Fatalf("error %v", err)
	}
	if f.names["stack"] || !f.names["pcap"] {
		t.Fatalf("Register's flags: %v", f.names)
	}
	if err := f.RequireNetstack(fs, "netstack", "linger"); err != nil {
		t.Fatal(err)
	}
}
