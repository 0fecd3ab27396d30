package tests

import (
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/compare"
	"github.com/tcp-upper/tcp-upper/lab"
)

// compareLabs lists the namespaces of compare labs (tcpuc...).
func compareLabs() map[string]bool {
	m := map[string]bool{}
	entries, _ := os.ReadDir(lab.NetNSDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "tcpuc") {
			m[e.Name()] = true
		}
	}
	return m
}

// TestCompare runs tcp-upper-lab compare as root on the probes our gVisor
// patches fix (an ACK above SND.NXT or too old, PAWS, a SYN in TIME-WAIT,
// the ACK of a FIN, a reordered older segment's window: 0003, 0004, 0006,
// 0014, 0015) and on a few basic ones, and asserts that our stack
// does what the kernel does in each, as the RFC requires; then that the
// compare lab and its servers are gone.
func TestCompare(t *testing.T) {
	requireRoot(t)
	before := compareLabs()
	want := map[string]string{
		"ack-above-snd-nxt": "ACK, data dropped", // RFC 5961 5.2, patch 0003
		"old-ack":           "ACK, data dropped", // RFC 5961 5.2, patch 0003
		"paws":              "ACK, data dropped", // RFC 7323 5.3, patch 0004
		// RFC 6191, patch 0006: the newer timestamp, not the lower
		// sequence number, decides.
		"time-wait-reconnect": "SYN-ACK: new connection",
		"closed-port":         "RST",
		"rst-exact":           "reset",
		"syn-options":         "MSS 1460",
		// Linux's tcp_fin, patch 0014: the ACK of the client's FIN
		// rides on the server's FIN.
		"passive-close": "FIN and ACK in one segment",
		// RFC 9293 3.10.7.4, patch 0015: the window of an older
		// segment, reordered behind a newer one, is not taken.
		"reordered-window": "newer window kept: echoed 200",
	}
	var names []string
	for n := range want {
		names = append(names, n)
	}
	code, out, stderr := runCmd(t, 60*time.Second, nil, bin("tcp-upper-lab"), "compare", "--json", "--only", strings.Join(names, ","))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep compare.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("JSON: %v\n%s", err, out)
	}
	if len(rep.Probes) != len(want) {
		t.Errorf("%d rows, want %d: %s", len(rep.Probes), len(want), out)
	}
	for _, p := range rep.Probes {
		w, ok := want[p.Name]
		if !ok {
			t.Errorf("row %q was not asked for", p.Name)
			continue
		}
		if !p.Same || p.Kernel != p.Netstack || p.Verdict != "" {
			t.Errorf("%s: kernel %q, netstack %q (same %v, verdict %q): want the same", p.Name, p.Kernel, p.Netstack, p.Same, p.Verdict)
		}
		if !strings.HasPrefix(p.Kernel, w) {
			t.Errorf("%s: kernel did %q, want %q", p.Name, p.Kernel, w)
		}
		if p.RFC == "" {
			t.Errorf("%s: no RFC clause", p.Name)
		}
	}
	for ns := range compareLabs() {
		if !before[ns] {
			t.Errorf("compare left namespace %s", ns)
		}
	}
	if pids := running(bin("tcp-upper-server")); len(pids) > 0 {
		t.Errorf("compare left servers running: pids %v", pids)
	}
}

// running lists the processes running the program at path (the tests'
// own build, so no one else's).
func running(path string) []int {
	var pids []int
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if exe, err := os.Readlink("/proc/" + d.Name() + "/exe"); err == nil && strings.TrimSuffix(exe, " (deleted)") == path {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestCompareErrors: an unknown probe gives one line (a missing root: see
// TestLabCommandsNeedRoot).
func TestCompareErrors(t *testing.T) {
	code, _, stderr := runCmd(t, 10*time.Second, nil, bin("tcp-upper-lab"), "compare", "--only", "paws,nope")
	if code != 2 {
		t.Errorf("--only nope: exit %d, want 2", code)
	}
	oneLine(t, "--only nope", stderr, "tcp-upper-lab compare", "rst-exact")
}
