package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/app"
)

// loopback runs the echo server on 127.0.0.1 in this process and returns a
// target for it.
func loopback(t *testing.T) target {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := app.NewServer(ln, app.ServerOptions{}, nil)
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-served
	})
	return target{addr: ln.Addr().String(), do: func(fn func() error) error { return fn() }}
}

func TestMeasurementsOnLoopback(t *testing.T) {
	tg := loopback(t)
	ctx := context.Background()
	d := 300 * time.Millisecond
	if v, err := bulk(ctx, tg, 8<<20, d, 1); err != nil || v <= 0 {
		t.Errorf("bulk = %v, %v", v, err)
	}
	if v, err := bulkOneway(ctx, tg, 8<<20, d); err != nil || v <= 0 {
		t.Errorf("bulk-oneway = %v, %v", v, err)
	}
	if v, err := bulkParallel(ctx, tg, 4, 8<<20, d, 1); err != nil || v <= 0 {
		t.Errorf("bulk-parallel = %v, %v", v, err)
	}
	p50, p99, err := rr(ctx, tg, 500, d)
	if err != nil || p50 <= 0 || p99 < p50 {
		t.Errorf("rr = %v, %v, %v", p50, p99, err)
	}
	if v, err := connrate(ctx, tg, 50, d); err != nil || v <= 0 {
		t.Errorf("connrate = %v, %v", v, err)
	}
	// A fake RSS that grows 10 KiB per connection opened.
	var conns int64
	rss := func() (int64, error) { return 1000 + 10*conns, nil }
	counting := target{addr: tg.addr, do: func(fn func() error) error {
		err := fn()
		conns = 100
		return err
	}}
	if v, err := idleMemory(ctx, counting, 100, time.Millisecond, rss); err != nil || v != 10 {
		t.Errorf("idle-memory = %v, %v, want 10", v, err)
	}
}

// A time cap ends a bulk transfer early without failing it.
func TestBulkTimeCap(t *testing.T) {
	tg := loopback(t)
	start := time.Now()
	if _, err := bulk(context.Background(), tg, 1<<40, 200*time.Millisecond, 1); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("a 200ms cap took %v", el)
	}
	if _, err := bulkOneway(context.Background(), tg, 1<<40, 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
}

func TestCanceled(t *testing.T) {
	tg := loopback(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := connrate(ctx, tg, 10, time.Second); err == nil {
		t.Error("connrate on a canceled context succeeded")
	}
	if _, err := bulk(ctx, tg, 1<<20, time.Second, 1); err == nil {
		t.Error("bulk on a canceled context succeeded")
	}
}

func TestStat(t *testing.T) {
	s := newStat([]float64{3, 1, 2})
	if s.Min != 1 || s.Median != 2 || s.Max != 3 {
		t.Errorf("newStat = %+v", s)
	}
	if s := newStat([]float64{4, 1, 2, 3}); s.Median != 2.5 {
		t.Errorf("median of 4 = %v", s.Median)
	}
}

func TestParseOnly(t *testing.T) {
	got, err := ParseOnly("rr, connrate,rr")
	if err != nil || !slices.Equal(got, []string{"rr", "connrate"}) {
		t.Errorf("ParseOnly = %v, %v", got, err)
	}
	if _, err := ParseOnly("rr,nope"); err == nil || !strings.Contains(err.Error(), "bulk-oneway") {
		t.Errorf("ParseOnly(nope) error %v should list the names", err)
	}
}

func TestSplitArgs(t *testing.T) {
	got, err := SplitArgs(` --offload  --fault "in rst drop port=1" --x='a b'c `)
	want := []string{"--offload", "--fault", "in rst drop port=1", "--x=a bc"}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("SplitArgs = %q, %v; want %q", got, err, want)
	}
	if _, err := SplitArgs(`--fault "in`); err == nil {
		t.Error("unterminated quote accepted")
	}
}

func TestReport(t *testing.T) {
	f := &Figure{Name: "rr-p50", Unit: "µs", Base: Side{"kernel", newStat([]float64{20, 30})}, Test: Side{"netstack", newStat([]float64{40, 30})}, Ratio: newStat([]float64{2, 1})}
	f.Target = &Target{Of: "ratio", Op: "<=", Value: 1.5}
	f.Target.check(f)
	if !f.Target.Met {
		t.Errorf("median ratio 1.5 should meet <= 1.5")
	}
	o := &Figure{Name: "trace-overhead", Unit: "MB/s", Base: Side{"off", newStat([]float64{100})}, Test: Side{"on", newStat([]float64{80})}, Ratio: newStat([]float64{0.8}), Overhead: true,
		Target: &Target{Of: "ratio", Op: ">=", Value: 0.9}}
	o.Target.check(o)
	r := &Report{Date: time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC), Rounds: 2, Figures: []*Figure{f, o}}
	var b bytes.Buffer
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"netstack/kernel", "20.0 / 25.0 / 30.0", "<= 1.5: met", "on/off", ">= 0.9: missed", "0.80"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	if err := r.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || len(back.Figures) != 2 || back.Figures[0].Test.Median != 35 {
		t.Errorf("JSON round trip: %v %+v", err, back.Figures)
	}
}
