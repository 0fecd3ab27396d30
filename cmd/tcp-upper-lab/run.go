package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/tcp-upper/tcp-upper/cmd/internal/cli"
	"github.com/tcp-upper/tcp-upper/experiment"
	"github.com/tcp-upper/tcp-upper/lab"
	"github.com/tcp-upper/tcp-upper/viz"
)

// cmdRun runs canned fault-injection experiments.
func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	usage := prog + " run NAME [--out DIR] [--seed N] [--offload=false] | run --all [--out DIR] [--offload=false] | run --list"
	var names []string
	var out string
	var seed uint64
	all, list, plain := false, false, false
	for i := 0; i < len(args); i++ {
		switch a := args[i]; a {
		case "--offload=false":
			plain = true
		case "--offload", "--offload=true":
		case "--list", "-l":
			list = true
		case "--all":
			all = true
		case "--out", "--seed":
			if i+1 >= len(args) {
				return cli.Usagef("%s needs a value", a)
			}
			i++
			if a == "--out" {
				out = args[i]
			} else {
				v, err := strconv.ParseUint(args[i], 10, 64)
				if err != nil {
					return cli.Usagef("bad --seed %q: want a number", args[i])
				}
				seed = v
			}
		case "-h", "--help":
			fmt.Fprintf(stderr, "usage: %s\n", usage)
			return nil
		default:
			if len(a) > 0 && a[0] == '-' {
				return cli.Usagef("unknown flag %s: usage: %s", a, usage)
			}
			names = append(names, a)
		}
	}
	if list {
		for _, x := range experiment.Catalogue() {
			fmt.Fprintf(stdout, "%-16s %s\n", x.Name, x.Summary)
		}
		return nil
	}
	var xs []*experiment.Experiment
	if all {
		xs = experiment.Catalogue()
	}
	for _, n := range names {
		x, err := experiment.Find(n)
		if err != nil {
			return cli.Usagef("%v", err)
		}
		xs = append(xs, x)
	}
	if len(xs) == 0 {
		return cli.Usagef("name an experiment (run --list shows them): usage: %s", usage)
	}
	if err := lab.NeedPrivileges("running an experiment (it builds a lab of its own)"); err != nil {
		return err
	}
	failed := 0
	var index []viz.IndexEntry
	for _, x := range xs {
		dir := out
		if dir != "" && len(xs) > 1 {
			dir = filepath.Join(out, x.Name)
		}
		res, err := experiment.Run(ctx, x, experiment.Options{Dir: dir, Seed: seed, PlainTUN: plain}, stdout)
		if err != nil {
			return fmt.Errorf("%s: %w", x.Name, err)
		}
		if !res.Passed() {
			failed++
		}
		fmt.Fprintf(stdout, "   summary: %s, report: %s\n\n", filepath.Join(res.Dir, "summary.md"), filepath.Join(res.Dir, "report.html"))
		index = append(index, viz.IndexEntry{Name: x.Name, Lesson: x.Summary, Href: x.Name + "/report.html", Pass: res.Passed()})
	}
	if out != "" && len(xs) > 1 {
		p := filepath.Join(out, "index.html")
		f, err := os.Create(p)
		if err != nil {
			return err
		}
		if err := viz.Index(f, index); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "index of the reports: %s\n", p)
	}
	if failed > 0 {
		return errors.New(strconv.Itoa(failed) + " experiment(s) failed")
	}
	return nil
}
