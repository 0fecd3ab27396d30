package fault_test

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestNoTraceImport keeps the fault layer independent of the trace layer
// above it: what both need (TCP flag names, decoding) lives in internal/pkt.
func TestNoTraceImport(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no Go files here: %v", err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, im := range af.Imports {
			p, _ := strconv.Unquote(im.Path.Value)
			if strings.HasSuffix(p, "/netstack/trace") || strings.HasSuffix(p, "/netstack/pcap") {
				t.Errorf("%s imports %s: the fault layer sits below trace and must not depend on it", f, p)
			}
		}
	}
}
