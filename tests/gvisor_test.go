package tests

import (
	"os/exec"
	"strings"
	"testing"
)

// TestGvisorCopyIsUpstreamPlusPatches proves third_party/gvisor is the
// pinned upstream module plus third_party/patches/gvisor and nothing else.
func TestGvisorCopyIsUpstreamPlusPatches(t *testing.T) {
	out, err := exec.Command("../scripts/gvisor-vendor.sh", "--check").CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("%s", out)
}

// TestWindowFixIsNeeded runs the deterministic zero-window regression test
// against pristine upstream gVisor and expects it to fail: the test really
// tests the patch, and the patch is still needed.
func TestWindowFixIsNeeded(t *testing.T) {
	cmd := exec.Command("../scripts/unpatched.sh", "go", "test", "-count=1", "-run", "TestReceiveWindowShrinkAcceptsInFlight", "./netstack/")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("the regression test passes on unpatched gVisor: the patch may no longer be needed, or the test no longer reproduces the bug:\n%s", out)
	}
	for _, want := range []string{"the server dropped", "the server ignored the peer's ACK"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("unpatched run did not fail with %q:\n%s", want, out)
		}
	}
}
