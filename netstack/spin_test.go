package netstack_test

import (
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
		const n = 200
		server := shortExchanges(t, srv, cli, app.ServerOptions{}, n)
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
