package pcap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tcp-upper/tcp-upper/internal/testenv"
)

// fullDisk accepts limit bytes, then fails mid-write like a full disk.
type fullDisk struct {
	buf   bytes.Buffer
	limit int
}

func (f *fullDisk) Write(p []byte) (int, error) {
	room := f.limit - f.buf.Len()
	if room >= len(p) {
		return f.buf.Write(p)
	}
	if room > 0 {
		f.buf.Write(p[:room])
	}
	return max(room, 0), errors.New("no space left on device")
}
func (f *fullDisk) Close() error { return nil }
func (f *fullDisk) Truncate(n int64) error {
	f.buf.Truncate(int(n))
	return nil
}

// records walks a pcapng file and returns how many whole packet records
// it holds, failing on a torn one.
func records(t *testing.T, b []byte) int {
	t.Helper()
	le := binary.LittleEndian
	if len(b) < fileHeaderLen || le.Uint32(b) != blockSection || le.Uint32(b[8:]) != byteOrderMagic ||
		le.Uint32(b[sectionLen:]) != blockInterface || le.Uint16(b[sectionLen+8:]) != LinkTypeRaw {
		t.Fatalf("bad file header % x", b[:min(len(b), fileHeaderLen)])
	}
	n, off := 0, fileHeaderLen
	for off < len(b) {
		if off+recordHeaderLen > len(b) {
			t.Fatalf("torn record header at %d", off)
		}
		if le.Uint32(b[off:]) != blockPacket {
			t.Fatalf("block type %#x at %d", le.Uint32(b[off:]), off)
		}
		total := int(le.Uint32(b[off+4:]))
		if off+total > len(b) || le.Uint32(b[off+total-4:]) != uint32(total) {
			t.Fatalf("torn record at %d", off)
		}
		off += total
		n++
	}
	return n
}

func pkt(n int) []byte {
	p := make([]byte, n)
	p[0] = 0x45
	return p
}

func TestWriteErrorKeepsFileValidReportsOnce(t *testing.T) {
	f := &fullDisk{limit: fileHeaderLen + 3*(recordHeaderLen+1000+recordTrailLen) + 500}
	var errs []error
	w, err := NewWriter(f, "disk.pcap", 0, func(err error) { errs = append(errs, err) })
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	// Small flushes so that one of them hits the full disk part-way.
	for i := 0; i < 3; i++ {
		w.WritePacket(now, pkt(1000), 1000)
		if err := w.Flush(); err != nil {
			t.Fatalf("flush %d: %v", i, err)
		}
	}
	for i := 0; i < 5; i++ {
		w.WritePacket(now, pkt(1000), 1000)
	}
	if err := w.Flush(); err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("flush on a full disk: %v", err)
	}
	for i := 0; i < 4; i++ {
		if err := w.WritePacket(now, pkt(1000), 1000); err == nil {
			t.Fatal("write after failure succeeded")
		}
	}
	w.Close()
	if len(errs) != 1 {
		t.Fatalf("reported %d times, want once: %v", len(errs), errs)
	}
	if got := records(t, f.buf.Bytes()); got != 3 {
		t.Fatalf("%d whole records in the file, want 3", got)
	}
	if w.Written() != 3 || w.Lost() != 9 {
		t.Fatalf("written %d lost %d, want 3 and 9", w.Written(), w.Lost())
	}
}

func TestSnapLenAndTcpdumpReadsIt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.pcap")
	w, err := Create(path, 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A minimal IPv4/TCP SYN, 40 bytes, then a big packet cut to 100.
	syn := []byte{0x45, 0, 0, 40, 0, 1, 0, 0, 64, 6, 0, 0, 10, 0, 1, 2, 10, 0, 2, 2,
		0xb9, 0x92, 0x27, 0x0f, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0}
	w.WritePacket(time.Unix(1700000000, 123456000), syn, len(syn))
	big := append(append([]byte(nil), syn...), make([]byte, 1400)...)
	big[3] = byte(len(big) & 0xff)
	big[2] = byte(len(big) >> 8)
	w.WritePacket(time.Unix(1700000000, 223456000), big, len(big))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if records(t, b) != 2 {
		t.Fatal("want 2 records")
	}
	if incl := binary.LittleEndian.Uint32(b[fileHeaderLen+recordHeaderLen+40+recordTrailLen+20:]); incl != 100 {
		t.Fatalf("second record keeps %d bytes, want the snap length 100", incl)
	}
	testenv.RequireTool(t, "tcpdump")
	out, err := exec.Command("tcpdump", "-nr", path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "IP 10.0.1.2.47506 > 10.0.2.2.9999: Flags [S], seq 1, win 64240, length 0") {
		t.Fatalf("tcpdump: %v\n%s", err, out)
	}
}

// TestCommentTsharkReadsIt: a packet's comment is in the file where tshark
// finds it (frame.comment), and tcpdump still reads every packet.
func TestCommentTsharkReadsIt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.pcapng")
	w, err := Create(path, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	syn := []byte{0x45, 0, 0, 40, 0, 1, 0, 0, 64, 6, 0, 0, 10, 0, 1, 2, 10, 0, 2, 2,
		0xb9, 0x92, 0x27, 0x0f, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0}
	w.WritePacket(time.Unix(1700000000, 0), syn, len(syn))
	w.WritePacketComment(time.Unix(1700000001, 0), syn[:39], len(syn), "dropped by rule 1: in syn drop")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if records(t, b) != 2 {
		t.Fatal("want 2 records")
	}
	testenv.RequireTool(t, "tshark")
	out, err := exec.Command("tshark", "-r", path, "-T", "fields", "-e", "frame.number", "-e", "frame.comment").Output()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "1\t\n2\tdropped by rule 1: in syn drop" {
		t.Fatalf("tshark frame.comment:\n%q", got)
	}
	testenv.RequireTool(t, "tcpdump")
	out, err = exec.Command("tcpdump", "-nr", path).CombinedOutput()
	if err != nil || strings.Count(string(out), "10.0.1.2.47506 > 10.0.2.2.9999") != 2 {
		t.Fatalf("tcpdump: %v\n%s", err, out)
	}
}

// TestReadFileRoundTrip: ReadFile gives back what was written: times,
// bytes, lengths and comments.
func TestReadFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.pcapng")
	w, err := Create(path, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1700000000, 123456000)
	w.WritePacket(t0, pkt(41), 41)
	w.WritePacketComment(t0.Add(time.Millisecond), pkt(3), 60, "dropped by rule 2: out data drop")
	w.Close()
	ps, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || !ps[0].Time.Equal(t0) || len(ps[0].Data) != 41 || ps[0].OrigLen != 41 || len(ps[0].Comments) != 0 ||
		!ps[1].Time.Equal(t0.Add(time.Millisecond)) || len(ps[1].Data) != 3 || ps[1].OrigLen != 60 || fmt.Sprint(ps[1].Comments) != "[dropped by rule 2: out data drop]" {
		t.Fatalf("read back %+v", ps)
	}
}
