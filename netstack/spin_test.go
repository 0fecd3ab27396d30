package netstack_test

import (
	"context"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/netstack"
)

// TestTunSpinServes: with Options.TunSpin the server's reader polls the
// empty device between requests and finds next ones there (link.spins_in
// counts more spins than link.spin_parks_in, the spins that ran out),
// every echo is right, and short requests are still answered in place.
func TestTunSpinServes(t *testing.T) {
	forLinks(t, func(t *testing.T, l link) {
		srv, cli := pair(t, l, netstack.Options{TunSpin: 2 * time.Millisecond}, netstack.Options{})
		ln, err := srv.Listen(9999)
		if err != nil {
			t.Fatal(err)
		}
		server := app.NewServer(ln, app.ServerOptions{}, nil)
		go server.Serve()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := cli.Dial(ctx, netip.MustParseAddrPort("10.0.2.2:9999"))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(20 * time.Second))
		const n = 200
		got := make([]byte, 16)
		for i := range n {
			msg := []byte("request number " + string(rune('a'+i%26)))[:16]
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatal(err)
			}
			if string(got) != string(upper(msg)) {
				t.Fatalf("exchange %d: echo %q for %q", i, got, msg)
			}
		}
		c.Close()
		if err := server.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		m := counters(srv)
		spins, parks := m["link.spins_in"], m["link.spin_parks_in"]
		t.Logf("%d spins, %d ran out; %d of %d answered in place", spins, parks, server.InPlace(), n)
		if spins == 0 || parks >= spins {
			t.Errorf("%d spins, %d of them ran out: want spins that found a packet", spins, parks)
		}
		if server.InPlace() < n-10 {
			t.Errorf("%d of %d requests answered in place, want all but the first few", server.InPlace(), n)
		}
	})
}
