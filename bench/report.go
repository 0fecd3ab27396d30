package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
)

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("write JSON report: %w", err)
	}
	return nil
}

// WriteTable writes the report as two tables: kernel against netstack,
// then our stack's overheads (on against off). Each cell is min / median /
// max over the rounds; the ratio is taken per round.
func (r *Report) WriteTable(w io.Writer) error {
	flags := strings.Join(r.NetstackFlags, " ")
	if flags == "" {
		flags = "(none)"
	}
	pinned := "not pinned"
	if r.Pinned != "" {
		pinned = "pinned: " + r.Pinned
	}
	fmt.Fprintf(w, "tcp-upper bench %s on %s (%s, %d CPUs): %d rounds, each measurement <= %s / %d MiB; netstack flags: %s; %s; took %s\n",
		r.Date.Format("2006-01-02 15:04 MST"), r.Host, r.Kernel, r.CPUs, r.Rounds, r.Duration, r.BulkBytes>>20, flags, pinned, r.Elapsed)
	fmt.Fprintln(w, "cells: min / median / max over rounds; ratio per round, target checked on the median")
	for _, overhead := range []bool{false, true} {
		var figs []*Figure
		for _, f := range r.Figures {
			if f.Overhead == overhead {
				figs = append(figs, f)
			}
		}
		if len(figs) == 0 {
			continue
		}
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		if overhead {
			fmt.Fprintln(tw, "overhead (netstack)\tunit\toff\ton\ton/off\ttarget\t")
		} else {
			fmt.Fprintln(tw, "figure\tunit\tkernel\tnetstack\tnetstack/kernel\ttarget\t")
		}
		for _, f := range figs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", f.Name, f.Unit, cell(f.Base.Stat, format), cell(f.Test.Stat, format), cell(f.Ratio, formatRatio), targetCell(f.Target))
		}
		if err := tw.Flush(); err != nil {
			return fmt.Errorf("write table: %w", err)
		}
	}
	return nil
}

func cell(s Stat, f func(float64) string) string {
	if len(s.Values) == 1 {
		return f(s.Median)
	}
	return fmt.Sprintf("%s / %s / %s", f(s.Min), f(s.Median), f(s.Max))
}

func targetCell(t *Target) string {
	if t == nil {
		return "-"
	}
	what := ""
	if t.Of == "test" {
		what = "netstack "
	}
	verdict := "missed"
	if t.Met {
		verdict = "met"
	}
	return fmt.Sprintf("%s%s %s: %s", what, t.Op, trim(t.Value, 1), verdict)
}

// format prints a measured value with about three significant digits.
func format(v float64) string {
	switch a := math.Abs(v); {
	case math.IsNaN(v):
		return "n/a"
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func formatRatio(v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", v)
}

func trim(v float64, prec int) string {
	return fmt.Sprintf("%.*f", prec, v)
}
