package compare

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
)

// WriteJSON writes {"probes": [...]} as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("write JSON report: %w", err)
	}
	return nil
}

// WriteTable writes one row per probe: what each stack did, same or
// differs, the RFC clause and, for a difference, the verdict.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "probe\tkernel\tnetstack\tsame?\trfc\tverdict")
	same := 0
	for _, p := range r.Probes {
		s := "differs"
		if p.Same {
			s = "same"
			same++
		}
		v := p.Verdict
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, p.Kernel, p.Netstack, s, p.RFC, v)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	_, err := fmt.Fprintf(w, "\n%d of %d probes the same; allowed differences are listed in %s\n", same, len(r.Probes), DifferencesDoc)
	return err
}
