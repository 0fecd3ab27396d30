// Package fault is the fault-injection link layer: it sits between the TUN
// and the stack and drops, delays, duplicates, reorders, corrupts,
// truncates, rate-limits or blackholes the packets its rules match, in
// either direction, with every random choice drawn from one seed.
//
// A rule reads DIR MATCH ACTION [ARG] [OPTIONS], for example
//
//	in syn drop count=2
//	out data delay 200ms jitter=50ms
//	both any drop prob=0.15
//	in data drop nth=3 port=9999
package fault

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Dir is the direction a rule applies to.
type Dir uint8

// Directions: In is TUN → stack, Out is stack → TUN.
const (
	In Dir = 1 << iota
	Out
	Both = In | Out
)

func (d Dir) String() string {
	switch d {
	case In:
		return "in"
	case Out:
		return "out"
	}
	return "both"
}

// Match selects packets.
type Match uint8

// What a rule can match.
const (
	Any    Match = iota
	Syn          // SYN without ACK
	SynAck       // SYN with ACK
	Ack          // a pure ACK: no data, no SYN, FIN or RST
	Data         // a segment carrying data
	Fin          // FIN set
	Rst          // RST set
)

var matchNames = []string{"any", "syn", "syn-ack", "ack", "data", "fin", "rst"}

func (m Match) String() string { return matchNames[m] }

// Action is what a rule does to a packet.
type Action uint8

// Actions.
const (
	Drop Action = iota
	Delay
	Dup
	Reorder
	Corrupt
	Truncate
	Rate
	Blackhole
)

var actionNames = []string{"drop", "delay", "dup", "reorder", "corrupt", "truncate", "rate", "blackhole"}

func (a Action) String() string { return actionNames[a] }

// Rule is one parsed rule.
type Rule struct {
	Dir    Dir
	Match  Match
	Port   uint16 // 0: any port; else source or destination port
	Action Action

	Delay   time.Duration // delay D
	Jitter  time.Duration // delay's jitter=D
	Copies  int           // dup [N] (default 1)
	Bytes   int           // truncate N
	BitRate float64       // rate R, bits per second
	For     time.Duration // blackhole's for=D (0: until removed)

	Prob  float64 // prob=P (default 1)
	Nth   int     // nth=N: only the Nth match
	Count int     // count=N: at most N times
	After int     // after=N: skip the first N matches
	// Gilbert-Elliott burst loss (loss=ge:P,R): P is the chance to go
	// from the good state to the bad one per packet, R back; packets are
	// hit only in the bad state.
	GEP, GER float64

	text string
}

// String is the rule as given (normalised spacing).
func (r *Rule) String() string { return r.text }

const grammar = "DIR MATCH ACTION [ARG] [OPTIONS]"

var (
	allowedDirs    = "in, out, both"
	allowedMatches = strings.Join(matchNames, ", ")
	allowedActions = "drop, delay D, dup [N], reorder, corrupt, truncate N, rate R, blackhole"
	allowedOptions = "prob=P, nth=N, count=N, after=N, port=N, loss=ge:P,R, jitter=D (delay), for=D (blackhole)"
)

// ParseError says which token of a rule is wrong and what is allowed.
type ParseError struct {
	Rule  string
	Token int // 1-based; 0 for the rule as a whole
	Msg   string
}

func (e *ParseError) Error() string {
	if e.Token == 0 {
		return fmt.Sprintf("bad fault rule %q: %s", e.Rule, e.Msg)
	}
	return fmt.Sprintf("bad fault rule %q: token %d %s", e.Rule, e.Token, e.Msg)
}

// Parse reads one rule. It accepts the whole rule or nothing.
func Parse(s string) (*Rule, error) {
	toks := strings.Fields(s)
	r := &Rule{Prob: 1, Copies: 1, text: strings.Join(toks, " ")}
	bad := func(i int, format string, args ...any) error {
		return &ParseError{Rule: r.text, Token: i + 1, Msg: fmt.Sprintf(format, args...)}
	}
	if len(toks) < 3 {
		return nil, &ParseError{Rule: r.text, Msg: fmt.Sprintf("want %s, e.g. \"in syn drop count=2\"", grammar)}
	}
	switch toks[0] {
	case "in":
		r.Dir = In
	case "out":
		r.Dir = Out
	case "both":
		r.Dir = Both
	default:
		return nil, bad(0, "%q: unknown direction; want %s", toks[0], allowedDirs)
	}
	m := indexOf(matchNames, toks[1])
	if m < 0 {
		return nil, bad(1, "%q: unknown match; want %s", toks[1], allowedMatches)
	}
	r.Match = Match(m)
	a := indexOf(actionNames, toks[2])
	if a < 0 {
		return nil, bad(2, "%q: unknown action; want %s", toks[2], allowedActions)
	}
	r.Action = Action(a)
	i := 3
	arg := func(what string) (string, error) {
		if i >= len(toks) || strings.Contains(toks[i], "=") {
			return "", &ParseError{Rule: r.text, Token: i + 1, Msg: fmt.Sprintf("%s needs %s", r.Action, what)}
		}
		i++
		return toks[i-1], nil
	}
	switch r.Action {
	case Delay:
		v, err := arg("a duration, e.g. delay 200ms")
		if err != nil {
			return nil, err
		}
		if r.Delay, err = time.ParseDuration(v); err != nil || r.Delay <= 0 || r.Delay > time.Minute {
			return nil, bad(i-1, "%q: want a delay from 1ns to 1m, e.g. 200ms", v)
		}
	case Dup:
		if i < len(toks) && !strings.Contains(toks[i], "=") {
			n, err := strconv.Atoi(toks[i])
			if err != nil || n < 1 || n > 100 {
				return nil, bad(i, "%q: dup takes a number of copies from 1 to 100", toks[i])
			}
			r.Copies = n
			i++
		}
	case Truncate:
		v, err := arg("a length in bytes, e.g. truncate 40")
		if err != nil {
			return nil, err
		}
		if r.Bytes, err = strconv.Atoi(v); err != nil || r.Bytes < 0 || r.Bytes > 65535 {
			return nil, bad(i-1, "%q: want a length in bytes from 0 to 65535", v)
		}
	case Rate:
		v, err := arg("a rate, e.g. rate 1mbit")
		if err != nil {
			return nil, err
		}
		if r.BitRate, err = parseRate(v); err != nil {
			return nil, bad(i-1, "%q: %v", v, err)
		}
	}
	for ; i < len(toks); i++ {
		k, v, ok := strings.Cut(toks[i], "=")
		if !ok || v == "" {
			return nil, bad(i, "%q: want an option KEY=VALUE: %s", toks[i], allowedOptions)
		}
		var err error
		switch k {
		case "prob":
			r.Prob, err = strconv.ParseFloat(v, 64)
			if err != nil || r.Prob < 0 || r.Prob > 1 {
				return nil, bad(i, "%q: prob wants a probability from 0 to 1", toks[i])
			}
		case "nth", "count", "after":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || (k == "nth" && n == 0) {
				return nil, bad(i, "%q: %s wants a whole number (nth from 1)", toks[i], k)
			}
			switch k {
			case "nth":
				r.Nth = n
			case "count":
				r.Count = n
			default:
				r.After = n
			}
		case "port":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 65535 {
				return nil, bad(i, "%q: port wants 1 to 65535", toks[i])
			}
			r.Port = uint16(n)
		case "jitter":
			if r.Action != Delay {
				return nil, bad(i, "%q: jitter goes with delay", toks[i])
			}
			if r.Jitter, err = time.ParseDuration(v); err != nil || r.Jitter < 0 || r.Jitter > r.Delay {
				return nil, bad(i, "%q: jitter wants a duration no larger than the delay", toks[i])
			}
		case "for":
			if r.Action != Blackhole {
				return nil, bad(i, "%q: for=D goes with blackhole", toks[i])
			}
			if r.For, err = time.ParseDuration(v); err != nil || r.For <= 0 {
				return nil, bad(i, "%q: for wants a positive duration, e.g. for=5s", toks[i])
			}
		case "loss":
			p, rr, ok := parseGE(v)
			if !ok {
				return nil, bad(i, "%q: loss wants ge:P,R (Gilbert-Elliott: P good→bad, R bad→good, each 0 to 1), e.g. loss=ge:0.05,0.5", toks[i])
			}
			r.GEP, r.GER = p, rr
		default:
			return nil, bad(i, "%q: unknown option; want %s", toks[i], allowedOptions)
		}
	}
	return r, nil
}

func indexOf(names []string, s string) int {
	for i, n := range names {
		if n == s {
			return i
		}
	}
	return -1
}

// parseRate reads tc-style rates: bit, kbit, mbit, gbit (bits per second)
// and bps, kbps, mbps, gbps (bytes per second).
func parseRate(s string) (float64, error) {
	units := []struct {
		suffix string
		mult   float64
	}{
		{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1},
		{"gbps", 8e9}, {"mbps", 8e6}, {"kbps", 8e3}, {"bps", 8},
	}
	ls := strings.ToLower(s)
	for _, u := range units {
		if num, ok := strings.CutSuffix(ls, u.suffix); ok {
			v, err := strconv.ParseFloat(num, 64)
			if err != nil || v <= 0 {
				break
			}
			return v * u.mult, nil
		}
	}
	return 0, fmt.Errorf("want a rate such as 1mbit, 500kbit or 2mbps (bytes/s)")
}

func parseGE(v string) (p, r float64, ok bool) {
	rest, found := strings.CutPrefix(v, "ge:")
	if !found {
		return 0, 0, false
	}
	a, b, found := strings.Cut(rest, ",")
	if !found {
		return 0, 0, false
	}
	p, err1 := strconv.ParseFloat(a, 64)
	r, err2 := strconv.ParseFloat(b, 64)
	if err1 != nil || err2 != nil || p < 0 || p > 1 || r < 0 || r > 1 {
		return 0, 0, false
	}
	return p, r, true
}
