package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
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

// timeCapped runs app.Bulk until total bytes have echoed or d has passed,
// whichever comes first. A run cut by d counts what was checked by then.
func timeCapped(ctx context.Context, c net.Conn, total int64, d time.Duration, seed uint64) (app.BulkResult, error) {
	bctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	res, err := app.Bulk(bctx, c, app.BulkOptions{Total: total, Seed: seed, StallAfter: 10 * time.Second})
	if err != nil && errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		err = nil
	}
	if err == nil && res.Received == 0 {
		err = fmt.Errorf("nothing echoed in %v", d)
	}
	return res, err
}

// bulk is one connection's bidirectional echo (app.Bulk: pseudo-random
// payload written in 1 MiB chunks while the uppercased echo is read back
// and checked byte for byte), in MB/s each way.
func bulk(ctx context.Context, t target, total int64, d time.Duration, seed uint64) (float64, error) {
	c, err := t.dial(ctx)
	if err != nil {
		return 0, err
	}
	res, err := timeCapped(ctx, c, total, d, seed)
	if err != nil {
		return 0, fmt.Errorf("bulk: %w", err)
	}
	return mb(res.Received, res.Elapsed), nil
}

// bulkParallel runs n bulk connections at once, total/n bytes each, and
// returns their aggregate MB/s each way.
func bulkParallel(ctx context.Context, t target, n int, total int64, d time.Duration, seed uint64) (float64, error) {
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
		return 0, err
	}
	var wg sync.WaitGroup
	res := make([]app.BulkResult, n)
	errs := make([]error, n)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i], errs[i] = timeCapped(ctx, c, total/int64(n), d, seed+uint64(i))
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, fmt.Errorf("bulk-parallel: %w", err)
	}
	var sum int64
	var longest time.Duration
	for _, r := range res {
		sum += r.Received
		longest = max(longest, r.Elapsed)
	}
	return mb(sum, longest), nil
}

// bulkOneway is the server's receive path with the least client work: the
// client writes one fixed 1 MiB buffer over and over (no payload to
// generate or check) until total bytes or d, then half-closes; the server
// echoes everything, so the client drains the echo into a discard buffer,
// counting it, until the server closes after the EOF. The figure is the
// payload sent per second, counted when its echo is back (every byte must
// be).
func bulkOneway(ctx context.Context, t target, total int64, d time.Duration) (float64, error) {
	c, err := t.dial(ctx)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	// The watchdog: nothing may take much longer than d.
	c.SetDeadline(time.Now().Add(d + 15*time.Second))
	buf := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog 0123456789.\n"), (1<<20)/56+1)[:1<<20]
	start := time.Now()
	end := start.Add(d)
	var sent int64
	werr := make(chan error, 1)
	go func() {
		for sent < total && time.Now().Before(end) {
			n, err := c.Write(buf[:min(int64(len(buf)), total-sent)])
			sent += int64(n)
			if err != nil {
				werr <- fmt.Errorf("write after %d bytes: %w", sent, err)
				return
			}
		}
		werr <- c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	got, rerr := io.CopyBuffer(io.Discard, onlyReader{c}, make([]byte, 256<<10))
	elapsed := time.Since(start)
	if err := <-werr; err != nil {
		return 0, fmt.Errorf("bulk-oneway: %w", err)
	}
	if rerr != nil {
		return 0, fmt.Errorf("bulk-oneway: read the echo after %d bytes: %w", got, rerr)
	}
	if got != sent {
		return 0, fmt.Errorf("bulk-oneway: sent %d bytes, %d came back", sent, got)
	}
	return mb(sent, elapsed), nil
}

// onlyReader hides a conn's WriteTo/ReadFrom so io.CopyBuffer uses the
// given buffer.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

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
	us := func(q float64) float64 {
		return float64(lat[int(q*float64(len(lat)-1))].Nanoseconds()) / 1e3
	}
	return us(0.50), us(0.99), nil
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

// connrate opens a connection, makes one 16-byte exchange and closes it
// (the client closes first), up to count times or for d, one after the
// other: connections per second.
func connrate(ctx context.Context, t target, count int, d time.Duration) (float64, error) {
	n := 0
	var elapsed time.Duration
	err := t.do(func() error {
		start := time.Now()
		end := start.Add(d)
		for n < count && time.Now().Before(end) {
			if err := ctx.Err(); err != nil {
				return err
			}
			c, err := dialHere(ctx, t.addr)
			if err != nil {
				return err
			}
			c.SetDeadline(time.Now().Add(dialTimeout))
			err = exchange(c)
			c.Close()
			if err != nil {
				return fmt.Errorf("connection %d: %w", n+1, err)
			}
			n++
		}
		elapsed = time.Since(start)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("connrate: %w", err)
	}
	return float64(n) / elapsed.Seconds(), nil
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
