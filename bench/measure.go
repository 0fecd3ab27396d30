package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tcp-upper/tcp-upper/app"
)

// target is where a measurement's connections go.
type target struct {
	addr string
	// do runs fn with the calling thread in the client's network
	// namespace: sockets fn creates live there for good.
	do func(fn func() error) error
	// ownNS says that namespace is the bench's own (Env.OwnClientNS).
	ownNS bool
}

// dialTimeout bounds each connection attempt.
const dialTimeout = 5 * time.Second

// dial opens one connection from the client's namespace.
func (t target) dial(ctx context.Context) (net.Conn, error) {
	var c net.Conn
	err := t.do(func() error {
		var err error
		c, err = dialHere(ctx, t.addr)
		return err
	})
	return c, err
}

// dialHere dials addr from the calling thread's namespace.
func dialHere(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: dialTimeout}
	c, err := d.DialContext(ctx, "tcp4", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return c, nil
}

// mb is bytes per second in MB/s (10^6 bytes).
func mb(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds() / 1e6
}

// payload is what a bulk client writes: a block of pseudo-random bytes sent
// over and over, and its uppercased echo. Both are stored twice in a row, so
// any window of up to one period starting inside the first copy is
// contiguous: checking a read is one bytes.Equal at memory speed.
type payload struct {
	period     int
	data, want []byte
}

// payloadPeriod is not a power of two, so a window misplaced by a power
// of two in the echo would not line up with the expected bytes.
const payloadPeriod = 1<<20 - 13

func newPayload(seed uint64) *payload {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	src := rand.NewChaCha8(s)
	p := &payload{period: payloadPeriod, data: make([]byte, 2*payloadPeriod)}
	src.Read(p.data[:payloadPeriod])
	copy(p.data[payloadPeriod:], p.data[:payloadPeriod])
	p.want = bytes.Clone(p.data)
	app.Upper(p.want)
	return p
}

// echoResult is one connection's bulk echo.
type echoResult struct {
	sent    int64
	elapsed time.Duration
}

// echo writes p's data to c in writes of up to one period until total
// bytes or d, then half-closes, while reading the echo back at once until
// the server closes after our EOF; with check, every byte read is compared
// with the uppercased data (one bytes.Equal per read). Every byte sent must
// come back. elapsed runs until the last byte of the echo.
func echo(ctx context.Context, c net.Conn, total int64, d time.Duration, p *payload, check bool) (echoResult, error) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	// The watchdog: nothing may take much longer than d.
	c.SetDeadline(time.Now().Add(d + 15*time.Second))
	start := time.Now()
	end := start.Add(d)
	var sent int64
	werr := make(chan error, 1)
	go func() {
		off := 0
		for sent < total && time.Now().Before(end) {
			n := int(min(int64(p.period), total-sent))
			m, err := c.Write(p.data[off : off+n])
			sent += int64(m)
			off = (off + m) % p.period
			if err != nil {
				werr <- fmt.Errorf("write after %d bytes: %w", sent, err)
				return
			}
		}
		werr <- c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	var got int64
	var rerr error
	buf := make([]byte, 256<<10)
	off := 0
	for {
		n, err := c.Read(buf)
		if n > 0 && check && !bytes.Equal(buf[:n], p.want[off:off+n]) {
			i := 0
			for buf[i] == p.want[off+i] {
				i++
			}
			rerr = fmt.Errorf("echo byte %d is %#02x, want %#02x", got+int64(i), buf[i], p.want[off+i])
			c.SetDeadline(time.Now())
			break
		}
		got += int64(n)
		off = (off + n) % p.period
		if err == io.EOF {
			break
		}
		if err != nil {
			rerr = fmt.Errorf("read the echo after %d bytes: %w", got, err)
			break
		}
	}
	elapsed := time.Since(start)
	if err := <-werr; err != nil && rerr == nil {
		rerr = err
	}
	if rerr == nil && got != sent {
		rerr = fmt.Errorf("sent %d bytes, %d came back", sent, got)
	}
	if rerr == nil && got == 0 {
		rerr = fmt.Errorf("nothing echoed in %v", d)
	}
	if rerr == nil && ctx.Err() != nil {
		rerr = ctx.Err()
	}
	return echoResult{sent, elapsed}, rerr
}

// bulkResult is a bulk figure: payload rate, the machine's CPU per GB
// moved and the client's CPU share.
type bulkResult struct {
	mbps, cpuPerGB, clientCPU float64
}

func (r bulkResult) values() []float64 { return []float64{r.mbps, r.cpuPerGB, r.clientCPU} }

// measureBulk runs fn (n connections' echoes) between CPU readings.
func measureBulk(fn func() (bytes int64, longest time.Duration, err error)) (bulkResult, error) {
	m, err := startCPU()
	if err != nil {
		return bulkResult{}, err
	}
	n, longest, err := fn()
	if err != nil {
		return bulkResult{}, err
	}
	u, err := m.stop()
	if err != nil {
		return bulkResult{}, err
	}
	return bulkResult{mbps: mb(n, longest), cpuPerGB: u.perGB(n), clientCPU: u.selfShare()}, nil
}

// bulk is one connection's echo: pseudo-random payload written in writes
// of up to 1 MiB while the uppercased echo is read back and checked byte
// for byte at memory speed. MB/s of payload (each byte goes both ways).
func bulk(ctx context.Context, t target, total int64, d time.Duration, seed uint64) (bulkResult, error) {
	return bulkParallel(ctx, t, 1, total, d, seed)
}

// bulkOneway is bulk without the check: the client's least work.
func bulkOneway(ctx context.Context, t target, total int64, d time.Duration, seed uint64) (bulkResult, error) {
	return bulkConns(ctx, t, 1, total, d, seed, false)
}

// bulkParallel runs n bulk connections at once, total/n bytes each, and
// returns their aggregate: the payload of all over the longest's time.
func bulkParallel(ctx context.Context, t target, n int, total int64, d time.Duration, seed uint64) (bulkResult, error) {
	return bulkConns(ctx, t, n, total, d, seed, true)
}

func bulkConns(ctx context.Context, t target, n int, total int64, d time.Duration, seed uint64, check bool) (bulkResult, error) {
	name := "bulk"
	switch {
	case n > 1:
		name = "bulk-parallel"
	case !check:
		name = "bulk-oneway"
	}
	p := newPayload(seed)
	conns := make([]net.Conn, 0, n)
	err := t.do(func() error {
		for range n {
			c, err := dialHere(ctx, t.addr)
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	})
	if err != nil {
		for _, c := range conns {
			c.Close()
		}
		return bulkResult{}, fmt.Errorf("%s: %w", name, err)
	}
	r, err := measureBulk(func() (int64, time.Duration, error) {
		var wg sync.WaitGroup
		res := make([]echoResult, n)
		errs := make([]error, n)
		for i, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res[i], errs[i] = echo(ctx, c, total/int64(n), d, p, check)
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return 0, 0, err
		}
		var sum int64
		var longest time.Duration
		for _, r := range res {
			sum += r.sent
			longest = max(longest, r.elapsed)
		}
		return sum, longest, nil
	})
	if err != nil {
		return bulkResult{}, fmt.Errorf("%s: %w", name, err)
	}
	return r, nil
}

// rrMsg is the request of rr and connrate: 16 bytes.
var rrMsg = []byte("ping pong 16b ok")

// rr is a 16-byte request/response ping-pong on one connection, up to
// count exchanges or d: it returns the p50 and p99 round-trip times in µs.
func rr(ctx context.Context, t target, count int, d time.Duration) (p50, p99 float64, err error) {
	c, err := t.dial(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	c.SetDeadline(time.Now().Add(d + 10*time.Second))
	want := bytes.Clone(rrMsg)
	app.Upper(want)
	got := make([]byte, len(rrMsg))
	lat := make([]time.Duration, 0, count)
	const warmup = 50
	end := time.Now().Add(d)
	for i := 0; i < count+warmup && time.Now().Before(end); i++ {
		t0 := time.Now()
		if _, err := c.Write(rrMsg); err != nil {
			return 0, 0, fmt.Errorf("rr: write: %w", err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			return 0, 0, fmt.Errorf("rr: read: %w", err)
		}
		rtt := time.Since(t0)
		if !bytes.Equal(got, want) {
			return 0, 0, fmt.Errorf("rr: echo %q, want %q", got, want)
		}
		if i >= warmup {
			lat = append(lat, rtt)
		}
	}
	if len(lat) == 0 {
		return 0, 0, fmt.Errorf("rr: no exchange within %v", d)
	}
	slices.Sort(lat)
	return quantileUS(lat, 0.50), quantileUS(lat, 0.99), nil
}

// exchange sends rrMsg on c and checks the echo.
func exchange(c net.Conn) error {
	if _, err := c.Write(rrMsg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got := make([]byte, len(rrMsg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	want := bytes.Clone(rrMsg)
	app.Upper(want)
	if !bytes.Equal(got, want) {
		return fmt.Errorf("echo %q, want %q", got, want)
	}
	return nil
}

// portSlice is the client's ephemeral port range for one connrate
// measurement: a slice of its own, so its TIME-WAIT ports (the client
// closes first) never meet another measurement's, and every round starts
// from the same state.
type portSlice struct{ lo, hi int }

// Ephemeral ports of the client's namespace: the others' below connPorts,
// connrate's slices from it up.
const (
	firstPort = 1024
	connPorts = 33024
	lastPort  = 65535
)

// connSlice is measurement i of n's slice of connrate's ports.
func connSlice(i, n int) portSlice {
	per := (lastPort - connPorts + 1) / n
	lo := connPorts + i*per
	return portSlice{lo, lo + per - 1}
}

// setPortRange writes the calling thread's namespace's ephemeral range.
func setPortRange(lo, hi int) error {
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", fmt.Appendf(nil, "%d %d\n", lo, hi), 0o644); err != nil {
		return fmt.Errorf("client namespace: set the ephemeral port range: %w", err)
	}
	return nil
}

// timeWait is the number of TIME-WAIT sockets in the calling thread's
// namespace (/proc/thread-self/net/sockstat: /proc/self/net would show the
// main thread's namespace).
func timeWait() (int, error) {
	b, err := os.ReadFile("/proc/thread-self/net/sockstat")
	if err != nil {
		return 0, fmt.Errorf("read sockstat: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "TCP: "); ok {
			f := strings.Fields(rest)
			for i := 0; i+1 < len(f); i += 2 {
				if f[i] == "tw" {
					return strconv.Atoi(f[i+1])
				}
			}
		}
	}
	return 0, errors.New("no TCP tw in sockstat")
}

// connResult is connrate's figure: connections per second and each
// connection's time (connect, exchange, close) at p50 and p99, in µs.
type connResult struct {
	rate, p50, p99 float64
	note           string
}

// connrate opens a connection, makes one 16-byte exchange and closes it
// (the client closes first), up to count times or for d, one after the
// other. With ports (a namespace of the bench's own), the client's
// ephemeral range is that slice during the measurement, count is capped at
// half of it (so finding a free port stays as cheap in every round) and
// the note says how many TIME-WAIT sockets the client had at the start.
func connrate(ctx context.Context, t target, count int, d time.Duration, ports *portSlice) (connResult, error) {
	var lat []time.Duration
	var elapsed time.Duration
	var note string
	err := t.do(func() error {
		if ports != nil {
			tw, err := timeWait()
			if err != nil {
				return err
			}
			count = min(count, (ports.hi-ports.lo+1)/2)
			if err := setPortRange(ports.lo, ports.hi); err != nil {
				return err
			}
			defer setPortRange(firstPort, connPorts-1)
			note = fmt.Sprintf("client ports %d-%d, none used before; %d TIME-WAIT in the client's namespace at the start", ports.lo, ports.hi, tw)
		}
		lat = make([]time.Duration, 0, count)
		start := time.Now()
		end := start.Add(d)
		for len(lat) < count && time.Now().Before(end) {
			if err := ctx.Err(); err != nil {
				return err
			}
			t0 := time.Now()
			c, err := dialHere(ctx, t.addr)
			if err != nil {
				return err
			}
			c.SetDeadline(time.Now().Add(dialTimeout))
			err = exchange(c)
			c.Close()
			if err != nil {
				return fmt.Errorf("connection %d: %w", len(lat)+1, err)
			}
			lat = append(lat, time.Since(t0))
		}
		elapsed = time.Since(start)
		return nil
	})
	if err != nil {
		return connResult{}, fmt.Errorf("connrate: %w", err)
	}
	if len(lat) == 0 {
		return connResult{}, fmt.Errorf("connrate: no connection within %v", d)
	}
	slices.Sort(lat)
	return connResult{rate: float64(len(lat)) / elapsed.Seconds(), p50: quantileUS(lat, 0.5), p99: quantileUS(lat, 0.99), note: note}, nil
}

// idleMemory opens n connections, checks each one's echo once, lets the
// server settle and returns its RSS growth per connection in KiB (rss reads
// the server's resident set in KiB). The connections are closed before it
// returns.
func idleMemory(ctx context.Context, t target, n int, settle time.Duration, rss func() (int64, error)) (float64, error) {
	sleep(ctx, settle)
	before, err := rss()
	if err != nil {
		return 0, err
	}
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	err = t.do(func() error {
		deadline := time.Now().Add(60 * time.Second)
		for len(conns) < n {
			if err := ctx.Err(); err != nil {
				return err
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("only %d of %d connections within 60s", len(conns), n)
			}
			c, err := dialHere(ctx, t.addr)
			if err != nil {
				return fmt.Errorf("connection %d: %w", len(conns)+1, err)
			}
			conns = append(conns, c)
			c.SetDeadline(time.Now().Add(dialTimeout))
			if err := exchange(c); err != nil {
				return fmt.Errorf("connection %d: %w", len(conns), err)
			}
			c.SetDeadline(time.Time{})
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("idle-memory: %w", err)
	}
	sleep(ctx, settle)
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	after, err := rss()
	if err != nil {
		return 0, err
	}
	return float64(after-before) / float64(n), nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
