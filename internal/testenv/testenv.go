// Package testenv lets tests say what they need (root, a TUN device, a
// program) and skip without it, except where TCP_UPPER_REQUIRE_ROOT=1 (as
// .ci/run sets): there a missing requirement fails the test, so nothing is
// silently skipped in CI.
package testenv

import (
	"os"
	"os/exec"
	"testing"

	"github.com/tcp-upper/tcp-upper/lab"
)

// Strict reports whether skips are failures.
func Strict() bool { return os.Getenv("TCP_UPPER_REQUIRE_ROOT") == "1" }

func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if Strict() {
		t.Fatalf("TCP_UPPER_REQUIRE_ROOT=1 but: "+format, args...)
	}
	t.Skipf(format, args...)
}

// RequireRoot needs the privileges to build namespaces and a TUN device.
func RequireRoot(t testing.TB) {
	t.Helper()
	if err := lab.CheckPrivileges(); err != nil {
		unavailable(t, "needs root: %v", err)
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		unavailable(t, "needs /dev/net/tun: %v", err)
	}
}

// RequireTool needs a program on PATH.
func RequireTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		unavailable(t, "needs %s on PATH (apt-get install %s)", name, name)
	}
}
