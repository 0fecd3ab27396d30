package netstack_test

import (
	"context"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/tun"
)

// BenchmarkRR is a 16-byte request/response on one connection between two
// stacks joined in memory, the server's connection tracker off and on:
// what the tracker costs each round trip in CPU time and allocations,
// without the TUN, the kernel or the other CPU's noise (the lab's rr is
// tcp-upper-lab bench).
//
//	go test ./netstack -run '^$' -bench RR -benchtime 20000x
func BenchmarkRR(b *testing.B) {
	for _, m := range []struct {
		name    string
		inspect bool
	}{{"tracker=off", false}, {"tracker=on", true}} {
		b.Run(m.name, func(b *testing.B) {
			a, c := tun.Pipe("srv0", "cli0", 1500)
			srv, err := netstack.New(a, netstack.Options{Addr: netip.MustParsePrefix("10.0.2.2/24"), Inspect: m.inspect}, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer srv.Close()
			cli, err := netstack.New(c, netstack.Options{Addr: netip.MustParsePrefix("10.0.1.2/24")}, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer cli.Close()
			ln, err := srv.Listen(9999)
			if err != nil {
				b.Fatal(err)
			}
			server := app.NewServer(ln, app.ServerOptions{}, nil)
			go server.Serve()
			defer server.Shutdown(context.Background())
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := cli.Dial(ctx, netip.MustParseAddrPort("10.0.2.2:9999"))
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			msg := []byte("ping pong 16b ok")
			got := make([]byte, len(msg))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := conn.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(conn, got); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if tr := srv.Tracker(); tr != nil {
				tr.Sync()
				if d := tr.Stats().Dropped.Load(); d != 0 {
					b.Fatalf("the tracker dropped %d items", d)
				}
			}
		})
	}
}
