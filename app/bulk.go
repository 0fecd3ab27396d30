package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"time"
)

// BulkOptions configure a bulk echo run.
type BulkOptions struct {
	// Total is how many bytes to send (and expect back).
	Total int64
	// Chunk is the size of each write (default 1 MiB).
	Chunk int
	// Seed picks the pseudo-random payload; the reader regenerates it to
	// check every byte of the echo.
	Seed uint64
	// StallAfter is how long neither direction may make progress before
	// the run is declared stalled (default 10s).
	StallAfter time.Duration
	// Verify checks every echoed byte (default on; off measures raw speed).
	NoVerify bool
}

// BulkResult reports a bulk run.
type BulkResult struct {
	Sent, Received int64
	Elapsed        time.Duration
}

// ErrStalled means neither direction moved for StallAfter.
var ErrStalled = errors.New("transfer stalled")

// Bulk writes Total pseudo-random bytes to conn in Chunk-sized writes while
// reading the uppercased echo back at full speed, both at once, and checks
// every byte. A watchdog fails the run with ErrStalled when neither
// direction makes progress for StallAfter. It closes conn when done.
func Bulk(ctx context.Context, conn net.Conn, o BulkOptions) (BulkResult, error) {
	if o.Chunk <= 0 {
		o.Chunk = 1 << 20
	}
	if o.StallAfter <= 0 {
		o.StallAfter = 10 * time.Second
	}
	var sent, recvd atomic.Int64
	start := time.Now()
	werr := make(chan error, 1)
	rerr := make(chan error, 1)

	go func() {
		src := rand.NewChaCha8(seedBytes(o.Seed))
		buf := make([]byte, o.Chunk)
		for left := o.Total; left > 0; {
			n := int64(len(buf))
			if n > left {
				n = left
			}
			src.Read(buf[:n])
			m, err := conn.Write(buf[:n])
			sent.Add(int64(m))
			if err != nil {
				werr <- fmt.Errorf("write after %d bytes: %w", sent.Load(), err)
				return
			}
			left -= n
		}
		werr <- nil
	}()
	go func() {
		src := rand.NewChaCha8(seedBytes(o.Seed))
		buf := make([]byte, 256<<10)
		want := make([]byte, len(buf))
		for recvd.Load() < o.Total {
			n, err := conn.Read(buf)
			if n > 0 {
				if !o.NoVerify {
					src.Read(want[:n])
					Upper(want[:n])
					for i := 0; i < n; i++ {
						if buf[i] != want[i] {
							rerr <- fmt.Errorf("byte %d of the echo is 0x%02x, want 0x%02x", recvd.Load()+int64(i), buf[i], want[i])
							return
						}
					}
				}
				recvd.Add(int64(n))
			}
			if err != nil {
				if errors.Is(err, io.EOF) && recvd.Load() >= o.Total {
					break
				}
				rerr <- fmt.Errorf("read after %d bytes: %w", recvd.Load(), err)
				return
			}
		}
		rerr <- nil
	}()

	res := func() BulkResult {
		return BulkResult{Sent: sent.Load(), Received: recvd.Load(), Elapsed: time.Since(start)}
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	lastProgress, lastS, lastR := time.Now(), int64(-1), int64(-1)
	wdone, rdone := false, false
	for !(wdone && rdone) {
		select {
		case err := <-werr:
			wdone = true
			if err != nil {
				conn.Close()
				return res(), err
			}
		case err := <-rerr:
			rdone = true
			if err != nil {
				conn.Close()
				return res(), err
			}
		case <-ctx.Done():
			conn.Close()
			return res(), ctx.Err()
		case <-tick.C:
			s, r := sent.Load(), recvd.Load()
			if s != lastS || r != lastR {
				lastS, lastR, lastProgress = s, r, time.Now()
			} else if time.Since(lastProgress) > o.StallAfter {
				conn.Close()
				return res(), fmt.Errorf("%w: no progress for %v (sent %d, received %d of %d)", ErrStalled, o.StallAfter, s, r, o.Total)
			}
		}
	}
	r := res()
	conn.Close()
	return r, nil
}

func seedBytes(seed uint64) [32]byte {
	var b [32]byte
	for i := 0; i < 8; i++ {
		b[i] = byte(seed >> (8 * i))
	}
	return b
}
