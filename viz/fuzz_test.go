package viz

import (
	"bytes"
	"io"
	"os"
	"testing"

	"github.com/tcp-upper/tcp-upper/netstack/pcap"
)

// FuzzCapture: any file given as a capture (pcap, pcapng, or garbage) is
// read, drawn as a ladder, plotted and reported without a panic.
func FuzzCapture(f *testing.F) {
	for _, p := range []string{"testdata/data-loss-rto/capture.pcap", "testdata/syn-loss/capture.pcap", "../netstack/pcap/testdata/comment.pcapng"} {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x0a, 0x0d, 0x0d, 0x0a, 28, 0, 0, 0, 0x4d, 0x3c, 0x2b, 0x1a})
	f.Fuzz(func(t *testing.T, b []byte) {
		pkts, _ := pcap.Read(bytes.NewReader(b))
		s := Build(pkts, nil)
		Ladder(io.Discard, s, LadderOptions{Width: 80, Explain: true})
		Figures(s)
		Report(io.Discard, s, ReportInfo{Name: "fuzz"})
	})
}
