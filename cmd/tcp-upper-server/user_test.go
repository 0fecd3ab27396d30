package main

import (
	"bytes"
	"errors"
	"os/user"
	"strings"
	"syscall"
	"testing"

	"github.com/tcp-upper/tcp-upper/cmd/internal/cli"
)

func TestUserFlag(t *testing.T) {
	if _, err := user.Lookup("nobody"); err != nil {
		t.Skipf("no user nobody here: %v", err)
	}
	c, err := parseFlags([]string{"--user", "nobody"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.user == nil || c.user.name != "nobody" || c.user.uid == 0 || len(c.user.groups) == 0 {
		t.Fatalf("--user nobody: %+v", c.user)
	}
	if c, err := parseFlags(nil, &bytes.Buffer{}); err != nil || c.user != nil {
		t.Fatalf("no --user: %+v %v", c, err)
	}
	_, err = parseFlags([]string{"--user", "no-such-user-tcpu"}, &bytes.Buffer{})
	if !errors.Is(err, cli.ErrUsage) || !strings.Contains(err.Error(), `bad --user "no-such-user-tcpu": no such user`) {
		t.Fatalf("unknown user: %v", err)
	}
}

// TestDropNoop: no --user, or --user naming whoever we already are, changes
// nothing (and needs no privileges).
func TestDropNoop(t *testing.T) {
	var none *account
	if err := none.drop(); err != nil {
		t.Fatalf("nil account: %v", err)
	}
	self := &account{name: "self", uid: syscall.Getuid(), gid: syscall.Getgid()}
	if err := self.drop(); err != nil {
		t.Fatalf("dropping to ourselves: %v", err)
	}
}
