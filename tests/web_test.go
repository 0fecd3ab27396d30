package tests

import (
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tcp-upper/tcp-upper/internal/headless"
	"github.com/tcp-upper/tcp-upper/lab"
)

// TestWebView drives tcp-upper-lab web in a real browser (headless
// Chromium): a connection opened in the lab appears in the table with its
// state; its state change shows within 1 s; its graphs have data; a change
// request without the token is refused; the page says so when the server
// goes away and picks it up again when it is back.
func TestWebView(t *testing.T) {
	l := newLab(t)
	ctl := t.TempDir() + "/ctl.sock"
	srv := startServer(t, l, "--control", ctl)
	web := startIn(t, nil, "", bin("tcp-upper-lab"), "web", "--control", ctl, "--listen", "127.0.0.1:0", "--allow-control")
	if !web.stdout.waitFor("serving http://", 10*time.Second) {
		t.Fatalf("web did not start: %q %q", web.stdout.String(), web.stderr.String())
	}
	m := regexp.MustCompile(`serving (http://127\.0\.0\.1:\d+)/`).FindStringSubmatch(web.stdout.String())
	if m == nil {
		t.Fatalf("web printed %q: want a loopback address", web.stdout.String())
	}
	url := m[1]
	if !web.stdout.waitFor("changes need the token ", 5*time.Second) {
		t.Fatalf("no token printed: %q", web.stdout.String())
	}

	ctx := headless.Open(t, url+"/")

	// A connection from ant: its row appears, ESTAB.
	c := dialAnt(t, l, serverAddr)
	port := c.LocalAddr().(*net.TCPAddr).Port
	remote := fmt.Sprintf("%s:%d", lab.AntAddr.Addr(), port)
	row := fmt.Sprintf(`#conns tr[data-remote=%q]`, remote)
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(row))); err != nil {
		t.Fatalf("connection %s not in the table: %v", remote, err)
	}
	state, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(row+" td.state")))
	if err != nil {
		t.Fatal(err)
	}
	if state != "ESTABLISHED" && state != "ESTAB" {
		t.Errorf("state %q, want ESTABLISHED", state)
	}
	// Some data, so the graphs have points, then click the row.
	if _, err := c.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	io.ReadFull(c, make([]byte, 6))
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(row)), chromedp.WaitVisible(chromedp.CSS(`#graph-cwnd svg polyline.cwnd`))); err != nil {
		t.Fatalf("graphs: %v", err)
	}
	lines, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('#graphs polyline').length`))
	if err != nil {
		t.Fatal(err)
	}
	if lines < 2 {
		t.Errorf("%d lines in the graphs, want cwnd and srtt/rto at least", lines)
	}
	// Its ladder: an arrow per segment (the page fetches it again with
	// each table, every second), the states between them.
	arrows := regexp.MustCompile(`(?s)-+ S 0 win \d+ mss \d+[^\n]*>\|.*\| SYN-RCVD.*\|<-+ S\. 0 ack 1 win \d+ mss \d+[^\n]*\|.*>\|.*\| ESTABLISHED.*P\. 1:7\(6\) ack 1 win \d+ -+>\|.*\|<-+ P\. 1:7\(6\) ack 7 win \d+ -+\|`)
	var ladder string
	for start := time.Now(); time.Since(start) < 3*time.Second; time.Sleep(100 * time.Millisecond) {
		if ladder, err = chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`#ladder`))); err != nil {
			t.Fatal(err)
		}
		if arrows.MatchString(ladder) {
			break
		}
	}
	if !arrows.MatchString(ladder) {
		t.Errorf("ladder lacks the segments' arrows and the states in order:\n%s", ladder)
	}

	// A state change shows within 1 s: the client closes, the stack goes
	// to CLOSE-WAIT.
	closed := time.Now()
	c.(interface{ CloseWrite() error }).CloseWrite()
	var seen bool
	for time.Since(closed) < 1500*time.Millisecond && !seen {
		texts, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll('#events tr.ev-state')).map(r => r.textContent)`))
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range texts {
			seen = seen || strings.Contains(s, remote) && strings.Contains(s, "ESTABLISHED → CLOSE-WAIT")
		}
	}
	took := time.Since(closed)
	t.Logf("ESTABLISHED → CLOSE-WAIT on the page %v after the client's FIN", took)
	if !seen || took > time.Second {
		t.Errorf("ESTABLISHED → CLOSE-WAIT on the page: seen %v after %v, want within 1s", seen, took)
	}

	// A change without the token is refused (403), with it accepted.
	codes, err := chromedp.Run(ctx, chromedp.Evaluate[[]int](`Promise.all([
		fetch('/fault', {method: 'POST', body: JSON.stringify({op: 'clear'})}).then(r => r.status),
		fetch('/fault', {method: 'POST', headers: {'X-Token': 'wrong'}, body: JSON.stringify({op: 'clear'})}).then(r => r.status),
		fetch('/fault', {method: 'GET'}).then(r => r.status),
		fetch('/nothing-here').then(r => r.status)])`, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(codes) != "[403 403 405 404]" {
		t.Errorf("status codes %v, want [403 403 405 404]", codes)
	}
	if !web.stderr.waitFor(`status=403`, 2*time.Second) {
		t.Errorf("no log line for the refused request: %q", web.stderr.String())
	}

	// The server goes away: the page says so; it comes back: the page
	// connects again.
	srv.stop(t, syscall.SIGTERM, 10*time.Second)
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`#status.down`))); err != nil {
		t.Fatalf("page did not notice the server going away: %v", err)
	}
	startServer(t, l, "--control", ctl)
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`#status.up`))); err != nil {
		t.Fatalf("page did not reconnect: %v", err)
	}
}

// TestLiveLadder: ladder --control draws a running server's connection as
// it happens: its number, its states at the server's side, in order, at
// --width 110 and at the default 80 columns (where a label that does not
// fit goes on the line above its arrow); trace --explain puts the rule
// under each event.
func TestLiveLadder(t *testing.T) {
	l := newLab(t)
	ctl := t.TempDir() + "/ctl.sock"
	startServer(t, l, "--control", ctl)
	p := startIn(t, nil, "", bin("tcp-upper-lab"), "ladder", "--control", ctl, "--width", "110")
	p80 := startIn(t, nil, "", bin("tcp-upper-lab"), "ladder", "--control", ctl)
	tr := startIn(t, nil, "", bin("tcp-upper-lab"), "trace", "--control", ctl, "--explain")
	if !p.stderr.waitFor("attached to tcp-upper-server", 10*time.Second) || !p80.stderr.waitFor("attached to tcp-upper-server", 10*time.Second) ||
		!tr.stderr.waitFor("attached to", 10*time.Second) {
		t.Fatalf("ladder or trace did not attach: %q %q %q", p.stderr.String(), p80.stderr.String(), tr.stderr.String())
	}
	c := dialAnt(t, l, serverAddr)
	remote := fmt.Sprintf("%s:%d", lab.AntAddr.Addr(), c.LocalAddr().(*net.TCPAddr).Port)
	for _, want := range []string{"#1 is " + remote + " (peer)", "#1 |", "| ESTABLISHED"} {
		if !p.stdout.waitFor(want, 5*time.Second) {
			t.Fatalf("no %q in:\n%s", want, p.stdout.String())
		}
	}
	if _, err := c.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	io.ReadFull(c, make([]byte, 6))
	c.Close()
	if !p.stdout.waitFor("| CLOSED", 5*time.Second) {
		t.Fatalf("the close did not show:\n%s", p.stdout.String())
	}
	// An arrow per segment, in order, the server's states between them
	// at their heights: the handshake, the data and its echo, the close.
	arrows := regexp.MustCompile(`(?s)#1 \|-+ S 0 win \d+ [^\n]*>\|\n[^\n]*#1 \| +\| SYN-RCVD\n.*#1 \|<-+ S\. 0 ack 1 win \d+ [^\n]*\|\n.*#1 \|-+ \. ack 1 win \d+ -+>\|\n[^\n]*#1 \| +\| ESTABLISHED\n` +
		`.*#1 \|-+ P\. 1:7\(6\) ack 1 win \d+ -+>\|\n.*#1 \|<-+ P\. 1:7\(6\) ack 7 win \d+ -+\|\n` +
		`.*#1 \|-+ F\. 7 ack 7 win \d+ -+>\|\n.*\| CLOSE-WAIT\n.*\| LAST-ACK\n.*#1 \|<-+ F\. 7 ack 8 win \d+ -+\|\n.*#1 \|-+ \. ack 8 win \d+ -+>\|\n[^\n]*#1 \| +\| CLOSED\n`)
	p.stdout.waitFor("ack 8 win", 2*time.Second)
	t.Logf("live ladder:\n%s", p.stdout.String())
	if !arrows.MatchString(p.stdout.String()) {
		t.Errorf("live ladder lacks the arrows and states in order:\n%s", p.stdout.String())
	}
	// trace --explain: each state change with its rule under it.
	if !tr.stdout.waitFor("LISTEN -> SYN-RCVD", 5*time.Second) || !tr.stdout.waitFor("    why: RFC 9293 3.5, 3.10.7.2:", 5*time.Second) {
		t.Errorf("trace --explain printed:\n%s", tr.stdout.String())
	}
	out := p.stdout.String()
	if i, j := strings.Index(out, "| SYN-RCVD"), strings.Index(out, "| CLOSE-WAIT"); i < 0 || j < i {
		t.Errorf("states out of order:\n%s", out)
	}
	for _, ln := range strings.Split(out, "\n") {
		if len([]rune(ln)) > 110 {
			t.Errorf("line wider than --width 110: %q", ln)
		}
	}

	// At the default 80 columns: the same arrows and states in order,
	// each label on its arrow or on the line above it (labels cut to fit
	// end in ~: their starts are matched).
	seg := func(fromClient bool, label string) string {
		if fromClient {
			return `(?:#1 \|-* ` + label + `[^\n]* -*>\||\| +` + label + `[^\n]*\n[^\n]*#1 \|-+>\|)`
		}
		return `(?:#1 \|<-* ` + label + `[^\n]* -*\||\| +` + label + `[^\n]*\n[^\n]*#1 \|<-+\|)`
	}
	state := func(s string) string { return `\| ` + s + `\n` }
	steps := []string{
		seg(true, `S 0 win \d+`), state("SYN-RCVD"), seg(false, `S\. 0 ack 1 win \d+`), seg(true, `\. ack 1 win \d+`), state("ESTABLISHED"),
		seg(true, `P\. 1:7\(6\) ack 1 win`), seg(false, `P\. 1:7\(6\) ack 7 win`),
		seg(true, `F\. 7 ack 7 win`), state("CLOSE-WAIT"), state("LAST-ACK"), seg(false, `F\. 7 ack 8 win`), seg(true, `\. ack 8 win`), state("CLOSED"),
	}
	arrows80 := regexp.MustCompile(`(?s)` + strings.Join(steps, `.*`))
	p80.stdout.waitFor("| CLOSED", 5*time.Second)
	out80 := p80.stdout.String()
	t.Logf("live ladder at 80 columns:\n%s", out80)
	if !arrows80.MatchString(out80) {
		t.Errorf("live ladder at 80 columns lacks the arrows and states in order:\n%s", out80)
	}
	for _, ln := range strings.Split(out80, "\n") {
		if len([]rune(ln)) > 80 {
			t.Errorf("line wider than the default 80 columns: %q", ln)
		}
	}
}

// TestWebViewThousandConnections: with 1,000 connections open the page's
// table lists them all, ESTABLISHED, within 5 s and nothing was dropped on
// the way.
func TestWebViewThousandConnections(t *testing.T) {
	l := newLab(t)
	ctl := t.TempDir() + "/ctl.sock"
	startServer(t, l, "--control", ctl)
	web := startIn(t, nil, "", bin("tcp-upper-lab"), "web", "--control", ctl, "--listen", "127.0.0.1:0")
	if !web.stdout.waitFor("serving http://", 10*time.Second) {
		t.Fatalf("web did not start: %q", web.stderr.String())
	}
	url := regexp.MustCompile(`http://127\.0\.0\.1:\d+`).FindString(web.stdout.String())
	ctx := headless.Open(t, url+"/")
	const n = 1000
	start := time.Now()
	for i := 0; i < n; i++ {
		dialAnt(t, l, serverAddr)
	}
	opened := time.Since(start)
	var rows int
	for time.Since(start) < opened+5*time.Second {
		var err error
		rows, err = chromedp.Run(ctx, chromedp.Evaluate[int](`Array.from(document.querySelectorAll('#conns td.state')).filter(td => td.textContent === 'ESTABLISHED').length`))
		if err != nil {
			t.Fatal(err)
		}
		if rows >= n {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%d connections opened in %v; the page listed %d of them %v after the last", n, opened.Round(time.Millisecond), rows, (time.Since(start) - opened).Round(time.Millisecond))
	if rows < n {
		states, _ := chromedp.Run(ctx, chromedp.Evaluate[map[string]int](`Array.from(document.querySelectorAll('#conns td.state')).reduce((m, td) => (m[td.textContent] = (m[td.textContent] || 0) + 1, m), {})`))
		t.Errorf("the page lists %d connections ESTABLISHED, want %d (states on the page: %v)", rows, n, states)
	}
	// What one table costs the server at this size.
	ssStart := time.Now()
	code, out, _ := runCmd(t, 10*time.Second, nil, bin("tcp-upper-lab"), "ss", "--control", ctl)
	t.Logf("tcp-upper-lab ss with %d connections: %d lines in %v (exit %d)", n, strings.Count(out, "\n"), time.Since(ssStart).Round(time.Millisecond), code)
	dropped, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`!document.getElementById('dropped').hidden`))
	if err != nil || dropped {
		t.Errorf("the page dropped updates (%v)", err)
	}
	events, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('#events tbody tr').length`))
	if events == 0 {
		t.Error("no events on the page")
	}
}
