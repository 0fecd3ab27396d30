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

// shortExchanges runs an uppercase server with opts on srv, makes n
// sequential 16-byte exchanges with it from cli, checking every echo, and
// shuts the server down; it returns the server, for its counts.
func shortExchanges(t *testing.T, srv, cli *netstack.Stack, opts app.ServerOptions, n int) *app.Server {
	t.Helper()
	ln, err := srv.Listen(9999)
	if err != nil {
		t.Fatal(err)
	}
	server := app.NewServer(ln, opts, nil)
	go server.Serve()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := cli.Dial(ctx, netip.MustParseAddrPort("10.0.2.2:9999"))
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
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
	return server
}

// TestShortRequestsAnsweredInPlace: on our stack a connection exchanging
// short requests is answered by the goroutine that delivered each request
// from the device, right after it (app.TryConn, tunlink's Soon): of 200
// sequential exchanges, all but the first few are answered in place and
// the readiness runs on the reader, not on a goroutine of its own. With
// HandOff, none is; the echo is right either way. It needs gVisor patch
// 0010: upstream processes every segment on a processor goroutine, and the
// readiness comes from there.
func TestShortRequestsAnsweredInPlace(t *testing.T) {
	forLinks(t, func(t *testing.T, l link) {
		for _, handOff := range []bool{false, true} {
			srv, cli := pair(t, l, netstack.Options{}, netstack.Options{})
			const n = 200
			server := shortExchanges(t, srv, cli, app.ServerOptions{HandOff: handOff}, n)
			m := counters(srv)
			inPlace, reader, spawned := server.InPlace(), m["link.ready_after_delivery"], m["link.ready_on_goroutine"]
			t.Logf("hand-off %v: %d of %d answered in place; readiness %d on the reader, %d on goroutines", handOff, inPlace, n, reader, spawned)
			if handOff {
				if inPlace != 0 {
					t.Errorf("hand-off: %d requests answered in place, want 0", inPlace)
				}
				continue
			}
			if inPlace < n-10 {
				t.Errorf("%d of %d requests answered in place, want all but the first few", inPlace, n)
			}
			if reader < n-10 || spawned > 10 {
				t.Errorf("readiness: %d on the reader, %d on goroutines; want nearly all of %d on the reader", reader, spawned, n)
			}
		}
	})
}
