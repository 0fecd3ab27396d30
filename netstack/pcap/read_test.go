package pcap

import (
	"bytes"
	"testing"
	"time"
)

// A capture our Writer wrote reads back packet for packet.
func TestReadWhatWeWrite(t *testing.T) {
	var f fullDisk
	f.limit = 1 << 20
	w, err := NewWriter(&f, "mem", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1700000000, 123456000)
	pkt := []byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2}
	for i := range 3 {
		if err := w.WritePacket(t0.Add(time.Duration(i)*time.Millisecond), pkt, 20); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	got, err := Read(bytes.NewReader(f.buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("%d packets, want 3", len(got))
	}
	if !got[2].Time.Equal(t0.Add(2*time.Millisecond)) || !bytes.Equal(got[2].Data, pkt) || got[2].OrigLen != 20 {
		t.Errorf("packet 3: %v % x %d", got[2].Time, got[2].Data, got[2].OrigLen)
	}
}

// testdata/comment.pcapng is editcap's pcapng of an experiment's capture
// with a comment on packet 2 (editcap -F pcapng -a "2:dropped by rule #1
// (test)"): the packets, their times and the comment come through.
func TestReadPcapng(t *testing.T) {
	ng, err := ReadFile("testdata/comment.pcapng")
	if err != nil {
		t.Fatal(err)
	}
	if len(ng) != 10 {
		t.Fatalf("%d packets, want 10", len(ng))
	}
	if len(ng[1].Comments) != 1 || ng[1].Comments[0] != "dropped by rule #1 (test)" {
		t.Errorf("packet 2's comments %q", ng[1].Comments)
	}
	if len(ng[0].Comments) != 0 {
		t.Errorf("packet 1 has comments %q", ng[0].Comments)
	}
	if ng[0].Time.Year() != 2026 || ng[0].Data[0]>>4 != 4 {
		t.Errorf("packet 1: %v % x", ng[0].Time, ng[0].Data[:4])
	}
	if _, err := Read(bytes.NewReader([]byte("hello, not a capture at all"))); err == nil {
		t.Error("text read as a capture")
	}
}
