package netstack_test

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/app"
	"github.com/tcp-upper/tcp-upper/internal/leakcheck"
	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/tun"
)

// link is a way of joining two stacks in memory: like plain TUNs (one wire
// segment per packet, full checksums) or like TUNs with offloads (TCP
// super-segments of up to 64 KiB, partial checksums).
type link struct {
	name string
	pipe func(nameA, nameB string, mtu int) (*tun.PipeDevice, *tun.PipeDevice)
}

var (
	plainLink   = link{"plain", tun.Pipe}
	offloadLink = link{"offload", tun.OffloadPipe}
)

// forLinks runs f once for each link, as subtests: everything the data path
// must guarantee holds with and without offloads.
func forLinks(t *testing.T, f func(t *testing.T, l link)) {
	for _, l := range []link{plainLink, offloadLink} {
		t.Run(l.name, func(t *testing.T) { f(t, l) })
	}
}

// pair builds two stacks joined in memory by l, closed when the test ends.
// An Options without Addr gets the lab's: server 10.0.2.2/24, client
// 10.0.1.2/24.
func pair(t *testing.T, l link, srvOpts, cliOpts netstack.Options) (srv, cli *netstack.Stack) {
	t.Helper()
	if !srvOpts.Addr.IsValid() {
		srvOpts.Addr = netip.MustParsePrefix("10.0.2.2/24")
	}
	if !cliOpts.Addr.IsValid() {
		cliOpts.Addr = netip.MustParsePrefix("10.0.1.2/24")
	}
	a, b := l.pipe("srv0", "cli0", 1500)
	var err error
	if srv, err = netstack.New(a, srvOpts, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	if cli, err = netstack.New(b, cliOpts, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cli.Close)
	return srv, cli
}

// echo runs the uppercase service on srv's port 9999 until the test ends
// and dials it from cli; ctx bounds the dial.
func echo(ctx context.Context, t *testing.T, srv, cli *netstack.Stack, opts app.ServerOptions) net.Conn {
	t.Helper()
	ln, err := srv.Listen(9999)
	if err != nil {
		t.Fatal(err)
	}
	server := app.NewServer(ln, opts, nil)
	go server.Serve()
	t.Cleanup(func() { server.Shutdown(context.Background()) })
	conn, err := cli.Dial(ctx, netip.MustParseAddrPort("10.0.2.2:9999"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestSessionInMemory(t *testing.T) { forLinks(t, testSessionInMemory) }

func testSessionInMemory(t *testing.T, l link) {
	leakcheck.Check(t)
	srv, cli := pair(t, l, netstack.Options{}, netstack.Options{})
	ln, err := srv.Listen(9999)
	if err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	s := app.NewServer(ln, app.ServerOptions{Out: &out}, nil)
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := cli.Dial(ctx, netip.MustParseAddrPort("10.0.2.2:9999"))
	if err != nil {
		t.Fatal(err)
	}
	local := conn.LocalAddr().String()
	var replies bytes.Buffer
	in := app.NewPipeLines(strings.NewReader("abc\nhello world!\nfasionchan.com\n"))
	if err := app.Session(conn, in, &replies); err != nil {
		t.Fatal(err)
	}
	if got, want := replies.String(), "ABC\nHELLO WORLD!\nFASIONCHAN.COM\n"; got != want {
		t.Fatalf("replies %q, want %q", got, want)
	}
	waitFor(t, func() bool { return strings.Contains(out.String(), local+" disconnected") })
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	want := "listening at port: 0.0.0.0:9999, waiting for connections...\n" +
		local + " connected\n" + local + " disconnected\n"
	if out.String() != want {
		t.Fatalf("server printed %q, want %q", out.String(), want)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestListenPortInUse(t *testing.T) {
	leakcheck.Check(t)
	srv, _ := pair(t, plainLink, netstack.Options{}, netstack.Options{})
	ln, err := srv.Listen(9999)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = srv.Listen(9999)
	if err == nil || !strings.Contains(err.Error(), "listen on 0.0.0.0:9999 in the user-space stack") || !strings.Contains(err.Error(), "port is in use") {
		t.Fatalf("second listen: %v", err)
	}
}
