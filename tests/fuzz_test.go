package tests

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestFuzzTargets fuzzes every fuzz target of the module (scripts/fuzz.sh:
// the ingress path with and without offloads, the fault-rule parser, the
// control protocol, the trace formatter, GSO segmentation, the uppercase
// transform) for TCP_UPPER_FUZZTIME each, as CI does (.ci/run sets 5s).
// Without it the test says so and skips: the seed corpora run as plain
// tests in every `go test` anyway.
func TestFuzzTargets(t *testing.T) {
	d := os.Getenv("TCP_UPPER_FUZZTIME")
	if d == "" {
		t.Skip("set TCP_UPPER_FUZZTIME (for example 10s) to fuzz each target for that long")
	}
	if _, err := time.ParseDuration(d); err != nil {
		t.Fatalf("TCP_UPPER_FUZZTIME=%q: %v", d, err)
	}
	cmd := exec.Command("bash", "../scripts/fuzz.sh")
	cmd.Env = append(os.Environ(), "FUZZTIME="+d)
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("scripts/fuzz.sh: %v", err)
	}
	if !strings.Contains(string(out), "no crash") {
		t.Fatal("scripts/fuzz.sh did not report its targets")
	}
}
