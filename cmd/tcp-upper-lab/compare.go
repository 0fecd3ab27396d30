package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/tcp-upper/tcp-upper/cmd/internal/cli"
	"github.com/tcp-upper/tcp-upper/compare"
	"github.com/tcp-upper/tcp-upper/lab"
)

// compareHelp lists the probes.
func compareHelp() string {
	var b strings.Builder
	b.WriteString(`Builds a lab of its own (removed at the end, also on Ctrl-C), starts
tcp-upper-server --stack kernel and on our stack in apple, and plays each
probe from a raw peer in ant (a plain TUN; ant's kernel only forwards)
against both. Prints what each stack did, same or differs, the RFC clause
and, for a difference, whether docs/DIFFERENCES.md allows it. Probes:
`)
	for _, p := range compare.Probes() {
		fmt.Fprintf(&b, "  %-20s %s\n", p.Name, p.Doc)
	}
	return strings.TrimRight(b.String(), "\n")
}

// cmdCompare runs the probes against the kernel's TCP and ours.
func cmdCompare(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet(prog+" compare", stderr, prog+" compare [--only NAME[,NAME]] [--json] [-v]\n\n"+compareHelp())
	asJSON := fs.Bool("json", false, `print {"probes": [...]} as JSON instead of a table`)
	only := fs.String("only", "", "run only these probes, comma-separated")
	verbose := fs.Bool("v", false, "print every segment sent and received on stderr")
	server := fs.String("server", "", "server program (default: tcp-upper-server next to this program, or on PATH)")
	logLevel := fs.String("log-level", "warn", "log level on stderr: debug, info, warn or error")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	cfg := compare.Config{ServerBin: *server}
	var err error
	if cfg.Only, err = cli.Only(*only, compare.Names(), "probe"); err != nil {
		return cli.Usagef("bad --only: %v", err)
	}
	if cfg.Log, err = cli.Logger(stderr, *logLevel); err != nil {
		return err
	}
	if *verbose {
		cfg.Verbose = stderr
	}
	if err := lab.CheckPrivileges(); err != nil {
		return err
	}
	if cfg.ServerBin == "" {
		if cfg.ServerBin, err = lab.FindServer(); err != nil {
			return err
		}
	}
	rep, err := compare.Run(ctx, cfg)
	if err != nil {
		if ctx.Err() != nil {
			return errors.New("interrupted; the compare lab is removed")
		}
		return err
	}
	if *asJSON {
		return rep.WriteJSON(stdout)
	}
	return rep.WriteTable(stdout)
}
