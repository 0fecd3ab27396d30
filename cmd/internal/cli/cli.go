// Package cli holds what the three programs share on the command line:
// flag values that validate themselves, the one-line error, and logging.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrUsage marks an error in the command line; programs exit 2 on it.
var ErrUsage = errors.New("usage")

// Usagef returns a command-line error.
func Usagef(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrUsage}, args...)...)
}

// Exit prints err as one line "prog: message" and returns the exit code:
// 0 for nil, 2 for command-line errors, 1 otherwise.
func Exit(stderr io.Writer, prog string, err error) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	msg := err.Error()
	msg = strings.TrimPrefix(msg, ErrUsage.Error()+": ")
	msg = strings.Join(strings.Fields(strings.ReplaceAll(msg, "\n", " ")), " ")
	fmt.Fprintf(stderr, "%s: %s\n", prog, msg)
	if errors.Is(err, ErrUsage) {
		return 2
	}
	return 1
}

// NewFlagSet returns a flag set that reports errors instead of exiting and
// prints its usage to w on -h.
func NewFlagSet(prog string, w io.Writer, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(prog, flag.ContinueOnError)
	fs.SetOutput(w)
	fs.Usage = func() {
		fs.SetOutput(w)
		fmt.Fprintf(w, "usage: %s\n\nflags:\n", usage)
		fs.PrintDefaults()
	}
	return fs
}

// Parse parses args and turns flag errors into one-line usage errors (the
// flag package has already printed its own message for -h).
func Parse(fs *flag.FlagSet, args []string) error {
	usage := fs.Usage
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.Usage = usage
	if errors.Is(err, flag.ErrHelp) {
		usage()
		return err
	}
	if err != nil {
		if msg := parseError(fs, err); msg != "" {
			return Usagef("%s", msg)
		}
		return Usagef("%v (see %s -h)", err, fs.Name())
	}
	if fs.NArg() > 0 {
		return Usagef("unexpected argument %q (see %s -h)", fs.Arg(0), fs.Name())
	}
	return nil
}

var parseErrorRE = regexp.MustCompile(`^invalid (?:boolean )?value (".*") for (?:flag )?-([^:]+): parse error$`)

// parseError rewrites the flag package's bare "parse error" for a value of
// the wrong form into what the form is: "bad --time-wait "5": want a
// duration such as 10s, 500ms or 1m30s". "" when err is not such an error.
func parseError(fs *flag.FlagSet, err error) string {
	m := parseErrorRE.FindStringSubmatch(err.Error())
	if m == nil {
		return ""
	}
	f := fs.Lookup(m[2])
	if f == nil {
		return ""
	}
	g, ok := f.Value.(flag.Getter)
	if !ok {
		return ""
	}
	var want string
	switch g.Get().(type) {
	case time.Duration:
		want = "a duration such as 10s, 500ms or 1m30s (a number needs its unit)"
	case int, int64, uint, uint64:
		want = "a whole number"
	case float64:
		want = "a number"
	case bool:
		want = "true or false (--" + f.Name + "=false)"
	default:
		return ""
	}
	return fmt.Sprintf("bad --%s %s: want %s", f.Name, m[1], want)
}

// Port is a TCP port flag value (1-65535).
type Port uint16

// String implements flag.Value.
func (p *Port) String() string { return strconv.Itoa(int(*p)) }

// Set implements flag.Value.
func (p *Port) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("bad port %q: want a number from 1 to 65535", s)
	}
	*p = Port(n)
	return nil
}

// Prefix is an address-with-prefix flag value such as 10.0.2.2/24.
type Prefix struct{ netip.Prefix }

// String implements flag.Value.
func (p *Prefix) String() string {
	if !p.IsValid() {
		return ""
	}
	return p.Prefix.String()
}

// Set implements flag.Value.
func (p *Prefix) Set(s string) error {
	v, err := ParseHostPrefix(s)
	if err != nil {
		return err
	}
	p.Prefix = v
	return nil
}

// ParseHostPrefix parses an IPv4 host address with its prefix length, such
// as 10.0.2.2/24, and rejects network and broadcast addresses.
func ParseHostPrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("bad address %q: want IPv4 address/prefix such as 10.0.2.2/24", s)
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("bad address %q: only IPv4 is supported", s)
	}
	if p.Bits() < 1 || p.Bits() > 30 {
		return netip.Prefix{}, fmt.Errorf("bad address %q: prefix /%d leaves no room for two hosts (use /1 to /30)", s, p.Bits())
	}
	if p.Addr() == p.Masked().Addr() {
		return netip.Prefix{}, fmt.Errorf("bad address %q: that is the network address of %s, not a host", s, p.Masked())
	}
	if p.Addr() == LastAddr(p) {
		return netip.Prefix{}, fmt.Errorf("bad address %q: that is the broadcast address of %s, not a host", s, p.Masked())
	}
	return p, nil
}

// LastAddr is the highest address of p's network (the broadcast address).
func LastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// FirstHost is the lowest host address of p's network (10.0.2.1/24 for
// 10.0.2.2/24), with p's prefix length.
func FirstHost(p netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(p.Masked().Addr().Next(), p.Bits())
}

// Logger returns a text logger on w at the given level name.
func Logger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, Usagef("bad --log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// Only checks a --only list (NAME[,NAME]..., spaces allowed around the
// commas) against the names known and returns it, each name once, in the
// list's order; an empty list is nil. An unknown name is an error that lists the known
// ones: unknown probe "nope": want one of ...
func Only(s string, known []string, what string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	var out []string
	for _, n := range strings.Split(s, ",") {
		n = strings.TrimSpace(n)
		if !slices.Contains(known, n) {
			return nil, fmt.Errorf("unknown %s %q: want one of %s", what, n, strings.Join(known, ", "))
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, nil
}
