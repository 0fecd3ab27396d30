package web

import (
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/internal/headless"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/netstack/control"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
	"github.com/tcp-upper/tcp-upper/tun"
)

// The flood: the figures.
const (
	floodRate  = 10000 // events a second
	floodFor   = 3 * time.Second
	floodConns = 1000 // connections the events are about
)

// TestWebViewTenThousandEventsPerSecond drives 10,000 events a second for
// 3 s, about 1,000 connections, into a real server's tracker (a stack on
// an in-memory link, its control socket, the web view and its page in
// headless Chromium) and asserts what the issue asks:
//
//   - the server never waits: the injecting side spends next to none of
//     its time in Inject (so it holds its rate), the tracker's queue loses
//     nothing, and a real connection's echo during the flood answers;
//   - the page stays live: that connection's close, made during the
//     flood, is on the page within 1 s (its ESTABLISHED → CLOSE-WAIT in
//     the events, and the table no longer listing it ESTABLISHED);
//   - what the page could not show is counted on it: the events it
//     received, the web view dropped for it and the server dropped for the
//     web view add up to exactly the events the tracker emitted, and a
//     drop makes the page's drop notice visible.
//
// It logs the figures docs/PICTURES.md reports: events a second delivered
// to the page, drops, and the CPU the server process (stack, tracker,
// control socket and web view are all in this test's process) and the
// browser used.
func TestWebViewTenThousandEventsPerSecond(t *testing.T) {
	// The server: a stack with its tracker, an echo server on port 9999,
	// its control socket; a client stack joined to it in memory.
	a, b := tun.Pipe("srv0", "cli0", 1500)
	srv, err := netstack.New(a, netstack.Options{Addr: netip.MustParsePrefix("10.0.2.2/24"), Inspect: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := netstack.New(b, netstack.Options{Addr: netip.MustParsePrefix("10.0.1.2/24")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ln, err := srv.Listen(9999)
	if err != nil {
		t.Fatal(err)
	}
	echo := app.NewServer(ln, app.ServerOptions{}, nil)
	go echo.Serve()
	defer echo.Shutdown(context.Background())
	path := filepath.Join(t.TempDir(), "ctl.sock")
	ctl, err := control.Listen(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	control.ServeStack(ctl, srv, control.Hello{Program: "test", TUN: "srv0", Addr: "10.0.2.2/24"})
	ctl.Serve()
	defer ctl.Close()
	tr := srv.Tracker()

	// The web view and its page.
	v := New(Options{Resolve: func() (string, error) { return path, nil }})
	vctx, vcancel := context.WithCancel(context.Background())
	viewDone := make(chan struct{})
	go func() { v.Run(vctx); close(viewDone) }()
	defer func() { vcancel(); <-viewDone }()
	hs := httptest.NewServer(v.Handler())
	// Closed after the browser (cleanups run last first): Close waits for
	// the page's event stream to end.
	t.Cleanup(hs.Close)
	ctx := headless.Open(t, hs.URL+"/")
	// Every event from now on reaches the page or is counted: the view's
	// stream has subscribed (the page's own subscription to the view
	// is in place once its status is up).
	for deadline := time.Now().Add(5 * time.Second); tr.Subscribers() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the web view did not subscribe to the events within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := tr.Stats().Events.Load(); n != 0 {
		t.Fatalf("%d events before the page was there: the count below would not add up", n)
	}

	// A real connection, established and echoing, in the table.
	dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
	conn, err := cli.Dial(dctx, netip.MustParseAddrPort("10.0.2.2:9999"))
	dcancel()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	roundTrip := func() time.Duration {
		start := time.Now()
		conn.SetDeadline(start.Add(5 * time.Second))
		if _, err := conn.Write([]byte("abc\n")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ABC\n" {
			t.Fatalf("echo: %q %v", buf, err)
		}
		return time.Since(start)
	}
	roundTrip()
	remote := conn.LocalAddr().String()
	row := fmt.Sprintf(`#conns tr[data-remote=%q] td.state`, remote)
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(row))); err != nil {
		t.Fatalf("connection %s not in the table: %v", remote, err)
	}
	// The page notes when the close shows: a row of the events table, and
	// the state in the connections table.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(() => {
		window.shown = {};
		const note = (what) => { if (!window.shown[what]) window.shown[what] = Date.now(); };
		new MutationObserver(() => {
			for (const r of document.querySelectorAll('#events tbody tr.ev-state'))
				if (r.textContent.includes(`+strconv.Quote(remote)+`) && r.textContent.includes('ESTABLISHED → CLOSE-WAIT')) { note('event'); break; }
		}).observe(document.querySelector('#events tbody'), {childList: true});
		new MutationObserver(() => {
			// The echo server closes at once: the table (fetched within
			// 200 ms of a state change) may show LAST-ACK or no row.
			const td = document.querySelector(`+strconv.Quote(row)+`);
			if (!td || td.textContent !== 'ESTABLISHED') note('table');
		}).observe(document.querySelector('#conns tbody'), {childList: true, subtree: true, characterData: true});
		window.frames = 0;
		const count = () => { window.frames++; requestAnimationFrame(count); };
		requestAnimationFrame(count);
		return true;
	})()`)); err != nil {
		t.Fatal(err)
	}

	// The flood: events about floodConns connections (none of them the
	// real one), injected at floodRate a second, paced by the clock.
	fake := make([]inspect.ConnID, floodConns)
	for i := range fake {
		fake[i] = inspect.ConnID{Local: netip.MustParseAddrPort("10.0.2.2:9999"),
			Remote: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 1, byte(3 + i/250)}), uint16(20000+i))}
	}
	cpu0, bcpu0 := selfCPU(), treeCPU(browserPID(ctx))
	pageBefore := counts(t, ctx)
	frames0, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`window.frames`))
	droppedBefore := tr.Stats().Dropped.Load()
	total := int(floodFor.Seconds() * floodRate)
	var injected int
	var inInject, slowest time.Duration
	var calls []time.Duration // each Inject call's time
	var closedAt time.Time
	var echoDuring time.Duration
	start := time.Now()
	for injected < total {
		el := time.Since(start)
		for want := min(total, int(el.Seconds()*floodRate)); injected < want; injected++ {
			t0 := time.Now()
			tr.Inject(inspect.Event{Time: t0, Kind: inspect.KindRetransmit, Conn: fake[injected%floodConns],
				Cause: "load test: event " + strconv.Itoa(injected),
				N:     inspect.Numbers{Known: true, SndUna: uint32(injected), SndNxt: uint32(injected) + 1448, Cwnd: 10, Ssthresh: 1 << 31, RTO: 200 * time.Millisecond}})
			d := time.Since(t0)
			inInject += d
			slowest = max(slowest, d)
			calls = append(calls, d)
		}
		if closedAt.IsZero() && el >= floodFor/2 {
			// Halfway: the real connection echoes, then the client
			// closes: the server's stack goes to CLOSE-WAIT.
			echoDuring = roundTrip()
			closedAt = time.Now()
			conn.(interface{ CloseWrite() error }).CloseWrite()
		}
		time.Sleep(time.Millisecond) // pacing, not a barrier
	}
	took := time.Since(start)
	frames, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`window.frames`))
	cpu, bcpu := selfCPU()-cpu0, treeCPU(browserPID(ctx))-bcpu0
	tr.Sync()
	emitted := tr.Stats().Events.Load()
	rate := float64(injected) / took.Seconds()

	// Everything the tracker emitted is on the page or counted as dropped
	// on the way: wait for the counts to settle there (drops are reported
	// to the page once a second).
	var page pageCounts
	for deadline := time.Now().Add(10 * time.Second); ; {
		page = counts(t, ctx)
		if page.Received+page.Dropped+page.Upstream == emitted || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	shown, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]float64](`window.shown`))
	if err != nil {
		t.Fatal(err)
	}
	delay := func(what string) time.Duration {
		if shown[what] == 0 {
			return -1
		}
		return time.UnixMilli(int64(shown[what])).Sub(closedAt).Round(time.Millisecond)
	}
	delivered := page.Received - pageBefore.Received
	t.Logf("injected %d events in %v: %.0f/s, %v of it in Inject (slowest call %v); tracker emitted %d in all, its queue dropped %d",
		injected, took.Round(time.Millisecond), rate, inInject.Round(time.Millisecond), slowest.Round(time.Microsecond), emitted, tr.Stats().Dropped.Load()-droppedBefore)
	t.Logf("the page received %d events during the flood (%.0f/s), %d of them not drawn (more than 100 in a frame), in %d frames (%.0f/s); dropped: %d by the web view for the page, %d by the server for the web view",
		delivered, float64(delivered)/took.Seconds(), page.NotDrawn-pageBefore.NotDrawn, frames-frames0, float64(frames-frames0)/took.Seconds(), page.Dropped, page.Upstream)
	t.Logf("echo round trip during the flood %v; the close on the page %v (events: CLOSE-WAIT) and %v (table: no longer ESTABLISHED) after the FIN",
		echoDuring.Round(time.Microsecond), delay("event"), delay("table"))
	t.Logf("CPU during the flood: server process (stack, tracker, control socket, web view) %v (%.0f%% of one core), browser %v (%.0f%%)",
		cpu.Round(time.Millisecond), 100*cpu.Seconds()/took.Seconds(), bcpu.Round(time.Millisecond), 100*bcpu.Seconds()/took.Seconds())

	// The server never waited: the injecting side spent next to none of
	// the flood in Inject (it only queues), so its rate is the clock's.
	// The slowest 0.1% of the calls are left out of the sum: a shared
	// machine that does not schedule the test for a while (one call took
	// 1.1 s once, under four other test runs) delays a call without
	// anything making it wait; a queue that made Inject wait would slow
	// far more than 0.1% of the calls.
	slices.Sort(calls)
	var inInjectMost time.Duration
	for _, d := range calls[:len(calls)-len(calls)/1000] {
		inInjectMost += d
	}
	if inInjectMost > took/10 {
		t.Errorf("%v of the %v flood spent in Inject (the slowest 0.1%% of calls left out): the injecting side was held up", inInjectMost, took)
	}
	if d := tr.Stats().Dropped.Load() - droppedBefore; d != 0 {
		t.Errorf("the tracker's queue dropped %d items: it fell behind", d)
	}
	if echoDuring > time.Second {
		t.Errorf("an echo took %v during the flood", echoDuring)
	}
	// The page stayed live: the table within 1 s; the event too, unless
	// it was among those dropped on the way (counted, as the issue asks:
	// on this shared 2-core machine a few hundred are, now and then).
	if d := delay("table"); d < 0 || d > time.Second {
		t.Errorf("the close in the table on the page after %v, want within 1s", d)
	}
	if d := delay("event"); (d < 0 && page.Dropped+page.Upstream == 0) || d > time.Second {
		t.Errorf("the close in the events on the page after %v, want within 1s", d)
	} else if d < 0 {
		t.Logf("the close's event was among the %d dropped on the way", page.Dropped+page.Upstream)
	}
	// What it could not show is counted on it.
	if page.Received+page.Dropped+page.Upstream != emitted {
		t.Errorf("the page counts %d received + %d dropped by the web view + %d dropped by the server = %d, the tracker emitted %d",
			page.Received, page.Dropped, page.Upstream, page.Received+page.Dropped+page.Upstream, emitted)
	}
	// What the page says is what it counted (read after its next frame,
	// which draws what is pending, and at one instant).
	shot, err := chromedp.Run(ctx, chromedp.Evaluate[struct {
		Text string
		C    pageCounts
	}](`new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(() => done({Text: document.getElementById('eventcount').textContent,
		C: {Received: eventCounts.received, NotDrawn: eventCounts.notDrawn, Dropped: eventCounts.dropped, Upstream: eventCounts.upstream}}))))`, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatal(err)
	}
	if c := shot.C; !strings.HasPrefix(shot.Text, fmt.Sprintf("%d events received, %d not drawn ", c.Received, c.NotDrawn)) ||
		!strings.Contains(shot.Text, fmt.Sprintf(", %d dropped by the web view for this page; %d events and segments dropped by the server for the web view", c.Dropped, c.Upstream)) {
		t.Errorf("the page says %q; it counted %+v", shot.Text, c)
	}
	notice, err := chromedp.Run(ctx, chromedp.Evaluate[string](`(e => e.hidden ? '' : e.textContent)(document.getElementById('dropped'))`))
	if err != nil {
		t.Fatal(err)
	}
	checkNotice(t, page, notice)

	// A burst the way cannot take whole: burst events queued at once
	// (fewer than the tracker's queue holds, more than the control
	// socket's and the page's queues). The drops are counted where they
	// happen and the page shows the same counts.
	const burst = 15000
	pageBefore = counts(t, ctx)
	for i := 0; i < burst; i++ {
		tr.Inject(inspect.Event{Time: time.Now(), Kind: inspect.KindRetransmit, Conn: fake[i%floodConns], Cause: "load test: burst"})
	}
	tr.Sync()
	emitted = tr.Stats().Events.Load()
	for deadline := time.Now().Add(10 * time.Second); ; {
		page = counts(t, ctx)
		if page.Received+page.Dropped+page.Upstream == emitted || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	var viewDropped uint64
	v.mu.Lock()
	for c := range v.clients {
		viewDropped += c.droppedEvents.Load()
	}
	v.mu.Unlock()
	t.Logf("a burst of %d events: the page received %d; dropped %d by the web view for the page (its count %d), %d by the server for the web view (the tracker's count %d)",
		burst, page.Received-pageBefore.Received, page.Dropped-pageBefore.Dropped, viewDropped, page.Upstream-pageBefore.Upstream, tr.Stats().EventsDropped.Load())
	if page.Received+page.Dropped+page.Upstream != emitted {
		t.Errorf("after the burst the page counts %d received + %d + %d dropped, the tracker emitted %d", page.Received, page.Dropped, page.Upstream, emitted)
	}
	if page.Dropped != viewDropped || page.Upstream != tr.Stats().EventsDropped.Load() {
		t.Errorf("the page shows %d and %d dropped, the web view counted %d and the tracker %d", page.Dropped, page.Upstream, viewDropped, tr.Stats().EventsDropped.Load())
	}
	if page.Dropped+page.Upstream == pageBefore.Dropped+pageBefore.Upstream {
		t.Errorf("a burst of %d events went through whole: the drop path was not exercised", burst)
	}
	notice, err = chromedp.Run(ctx, chromedp.Evaluate[string](`(e => e.hidden ? '' : e.textContent)(document.getElementById('dropped'))`))
	if err != nil {
		t.Fatal(err)
	}
	checkNotice(t, page, notice)
}

// checkNotice checks the page's notice of what was lost on the way (the
// #dropped paragraph): each count that is not zero, named for what it
// counts, and none when nothing was lost.
func checkNotice(t *testing.T, page pageCounts, notice string) {
	t.Helper()
	if page.Dropped+page.Upstream == 0 {
		if notice != "" {
			t.Errorf("nothing lost, the page says %q", notice)
		}
		return
	}
	if page.Dropped > 0 && !strings.HasPrefix(notice, fmt.Sprintf("%d events", page.Dropped)) {
		t.Errorf("the web view dropped %d events for the page, the page's notice says %q", page.Dropped, notice)
	}
	if page.Upstream > 0 && !strings.Contains(notice, fmt.Sprintf("%d events and segments dropped by the server", page.Upstream)) {
		t.Errorf("the server dropped %d events and segments for the web view, the page's notice says %q", page.Upstream, notice)
	}
}

type pageCounts struct {
	Received, NotDrawn, Dropped, Upstream uint64
}

func counts(t *testing.T, ctx context.Context) pageCounts {
	t.Helper()
	c, err := chromedp.Run(ctx, chromedp.Evaluate[pageCounts](`({Received: eventCounts.received, NotDrawn: eventCounts.notDrawn, Dropped: eventCounts.dropped, Upstream: eventCounts.upstream})`))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// selfCPU is the CPU time this process has used (user and system).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func browserPID(ctx context.Context) int {
	if c := chromedp.FromContext(ctx); c != nil && c.Browser != nil && c.Browser.Process() != nil {
		return c.Browser.Process().Pid
	}
	return 0
}

// treeCPU is the CPU time process pid and its descendants have used
// (Chromium's renderer does the page's work), from /proc.
func treeCPU(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	type proc struct {
		ppid  int
		ticks int64
	}
	procs := map[int]proc{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		id, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// Fields after the command's closing parenthesis: state ppid ...
		// utime is the 14th field, stime the 15th.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) < 13 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		procs[id] = proc{ppid, ut + st}
	}
	var total int64
	for id, p := range procs {
		for a := id; a != 0; a = procs[a].ppid {
			if a == pid {
				total += p.ticks
				break
			}
			if _, ok := procs[a]; !ok {
				break
			}
		}
	}
	return time.Duration(total) * time.Second / 100 // USER_HZ
}
