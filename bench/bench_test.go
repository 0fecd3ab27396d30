package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
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
	// CPU per GB may read 0 here: /proc/stat counts in 10 ms ticks and a
	// loopback transfer of 8 MiB can take less (TestCPUMeter checks the
	// meter itself).
	okBulk := func(r bulkResult) bool { return r.mbps > 0 && r.cpuPerGB >= 0 && r.clientCPU > 0 }
	if v, err := bulk(ctx, tg, 8<<20, d, 1); err != nil || !okBulk(v) {
		t.Errorf("bulk = %+v, %v", v, err)
	}
	if v, err := bulkOneway(ctx, tg, 8<<20, d, 1); err != nil || !okBulk(v) {
		t.Errorf("bulk-oneway = %+v, %v", v, err)
	}
	if v, err := bulkParallel(ctx, tg, 4, 8<<20, d, 1); err != nil || !okBulk(v) {
		t.Errorf("bulk-parallel = %+v, %v", v, err)
	}
	p50, p99, err := rr(ctx, tg, 500, d)
	if err != nil || p50 <= 0 || p99 < p50 {
		t.Errorf("rr = %v, %v, %v", p50, p99, err)
	}
	if v, err := connrate(ctx, tg, 50, d, nil); err != nil || v.rate <= 0 || v.p50 <= 0 || v.p99 < v.p50 {
		t.Errorf("connrate = %+v, %v", v, err)
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
	if _, err := bulkOneway(context.Background(), tg, 1<<40, 200*time.Millisecond, 1); err != nil {
		t.Fatal(err)
	}
}

func TestCanceled(t *testing.T) {
	tg := loopback(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := connrate(ctx, tg, 10, time.Second, nil); err == nil {
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
	for _, want := range []string{"not pinned", "netstack/kernel", "20.0 / 25.0 / 30.0", "<= 1.5: met", "on/off", ">= 0.9: missed", "0.80"} {
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

// A wrong byte anywhere in the echo fails bulk, naming its offset; the
// same server with the byte right passes.
func TestBulkChecksEveryByte(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const bad = 3<<20 + 12345 // in the fourth period
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64<<10)
		var off int64
		for {
			n, err := c.Read(buf)
			app.Upper(buf[:n])
			if off <= bad && bad < off+int64(n) {
				buf[bad-off] ^= 0x40
			}
			off += int64(n)
			if _, werr := c.Write(buf[:n]); werr != nil || err != nil {
				return
			}
		}
	}()
	tg := target{addr: ln.Addr().String(), do: func(fn func() error) error { return fn() }}
	_, err = bulk(context.Background(), tg, 8<<20, 5*time.Second, 7)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("echo byte %d ", bad)) {
		t.Fatalf("bulk with byte %d flipped: %v", bad, err)
	}
	if _, err := bulk(context.Background(), loopback(t), 8<<20, 5*time.Second, 7); err != nil {
		t.Fatalf("bulk on a correct server: %v", err)
	}
}

func TestPayload(t *testing.T) {
	p := newPayload(1)
	if !bytes.Equal(p.data[:p.period], p.data[p.period:]) || bytes.Equal(p.data, newPayload(2).data) {
		t.Error("payload: not two copies of one period, or not seeded")
	}
	w := bytes.Clone(p.data)
	app.Upper(w)
	if !bytes.Equal(w, p.want) {
		t.Error("want is not the uppercased data")
	}
}

// The reflector's turn-around: a request from the kernel's ping becomes a
// reply whose checksums verify.
func TestReflect(t *testing.T) {
	req := make([]byte, 8+16)
	req[0] = 8
	binary.BigEndian.PutUint16(req[4:], 0x1234)
	binary.BigEndian.PutUint16(req[6:], 7)
	copy(req[8:], rrMsg)
	binary.BigEndian.PutUint16(req[2:], checksum(req))
	ip := []byte{0x45, 0, 0, byte(20 + len(req)), 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 0, 1, 2, 10, 0, 2, 2}
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	p := append(ip, req...)
	if !echoRequestTo(p, [4]byte{10, 0, 2, 2}) || echoRequestTo(p, [4]byte{10, 0, 2, 3}) {
		t.Fatal("echoRequestTo: wrong verdict")
	}
	reflect(p)
	if checksum(p[:20]) != 0 || checksum(p[20:]) != 0 {
		t.Errorf("reply checksums do not verify: % x", p)
	}
	if [4]byte(p[12:16]) != [4]byte{10, 0, 2, 2} || [4]byte(p[16:20]) != [4]byte{10, 0, 1, 2} || p[20] != 0 {
		t.Errorf("reply: % x", p)
	}
	if echoRequestTo(p, [4]byte{10, 0, 1, 2}) {
		t.Error("a reply taken for a request")
	}
}

func TestConnSlices(t *testing.T) {
	n := 6
	prev := connPorts - 1
	for i := range n {
		s := connSlice(i, n)
		if s.lo != prev+1 || s.hi < s.lo || s.hi > lastPort {
			t.Errorf("slice %d of %d: %+v after %d", i, n, s, prev)
		}
		prev = s.hi
	}
}

// The CPU meter sees this process burn CPU: it spins until it has used
// 200 ms of CPU (however long that takes on a busy machine), and the
// meter's own share and the machine's busy time both show it.
func TestCPUMeter(t *testing.T) {
	m, err := startCPU()
	if err != nil {
		t.Fatal(err)
	}
	x := 1
	start := selfCPU()
	for deadline := time.Now().Add(10 * time.Second); selfCPU()-start < 200*time.Millisecond && time.Now().Before(deadline); {
		for i := 0; i < 1e5; i++ {
			x = x*31 + 7
		}
	}
	u, err := m.stop()
	if err != nil {
		t.Fatal(err)
	}
	// /proc/stat counts in 10 ms ticks.
	if u.Self < 190*time.Millisecond || u.Machine < u.Self-20*time.Millisecond || u.perGB(1e9) != u.Machine.Seconds() {
		t.Errorf("spinning for 200ms of CPU: %+v (self %.0f%%) x=%d", u, u.selfShare(), x)
	}
}
