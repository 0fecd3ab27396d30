package cli

import (
	"flag"
	"slices"
	"strings"
)

// NetstackOnly is one program's table of the flags that mean something
// only on our user-space stack (--stack netstack), each with why the
// kernel's TCP has no use for it.
type NetstackOnly map[string]string

// CheckStack is the one rule for every program with a --stack: a flag
// given on the command line that means nothing for the chosen stack is a
// command-line error naming every such flag and why, in one line.
func CheckStack(fs *flag.FlagSet, stack string, only NetstackOnly) error {
	if stack == "netstack" {
		return nil
	}
	var given, why []string
	fs.Visit(func(f *flag.Flag) {
		w, ok := only[f.Name]
		if !ok {
			return
		}
		given = append(given, "--"+f.Name)
		if !slices.Contains(why, w) {
			why = append(why, w)
		}
	})
	if len(given) == 0 {
		return nil
	}
	return Usagef("%s: only with --stack netstack (%s)", strings.Join(given, ", "), strings.Join(why, "; "))
}

// Merge returns the union of tables.
func Merge(tables ...NetstackOnly) NetstackOnly {
	m := NetstackOnly{}
	for _, t := range tables {
		for k, v := range t {
			m[k] = v
		}
	}
	return m
}
