package app

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

func TestUpper(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"abc\n", "ABC\n"},
		{"hello world!\n", "HELLO WORLD!\n"},
		{"fasionchan.com\n", "FASIONCHAN.COM\n"},
		{"AbC xYz 0123456789", "ABC XYZ 0123456789"},
		{"`a{z@[", "`A{Z@["}, // the neighbours of a-z and A-Z stay
		{"\x00a\x00", "\x00A\x00"},
		{"héllo wörld", "HéLLO WöRLD"}, // UTF-8 bytes pass unchanged
		{"straße ß", "STRAßE ß"},
		{"\xff\xfe\x80abc\x7f", "\xff\xfe\x80ABC\x7f"},
	} {
		b := []byte(tc.in)
		Upper(b)
		if string(b) != tc.want {
			t.Errorf("Upper(%q) = %q, want %q", tc.in, b, tc.want)
		}
	}
}

// TestUpperEveryByte checks all 256 byte values against the definition.
func TestUpperEveryByte(t *testing.T) {
	for i := 0; i < 256; i++ {
		b := []byte{byte(i)}
		Upper(b)
		want := byte(i)
		if i >= 'a' && i <= 'z' {
			want = byte(i) - 32
		}
		if b[0] != want {
			t.Errorf("Upper(0x%02x) = 0x%02x, want 0x%02x", i, b[0], want)
		}
	}
}

func FuzzUpper(f *testing.F) {
	f.Add([]byte("hello world!\n"), 3)
	f.Add([]byte{0, 0xff, 'a', 'Z'}, 1)
	f.Fuzz(func(t *testing.T, in []byte, split int) {
		whole := bytes.Clone(in)
		Upper(whole)
		if len(whole) != len(in) {
			t.Fatalf("length changed: %d -> %d", len(in), len(whole))
		}
		// Chunking never matters.
		if split < 0 {
			split = -split
		}
		if len(in) > 0 {
			split %= len(in) + 1
		} else {
			split = 0
		}
		a, b := bytes.Clone(in[:split]), bytes.Clone(in[split:])
		Upper(a)
		Upper(b)
		if got := append(a, b...); !bytes.Equal(got, whole) {
			t.Fatalf("chunked %q != whole %q", got, whole)
		}
		for i := range in {
			c, u := in[i], whole[i]
			switch {
			case c >= 'a' && c <= 'z':
				if u != c-32 {
					t.Fatalf("byte %d: %q -> %q", i, c, u)
				}
			case u != c:
				t.Fatalf("byte %d: non a-z %q changed to %q", i, c, u)
			}
		}
		// Matches bytes.ToUpper on pure ASCII input.
		ascii := true
		for _, c := range in {
			if c >= 0x80 {
				ascii = false
			}
		}
		if ascii && !bytes.Equal(whole, bytes.ToUpper(in)) {
			t.Fatalf("ASCII input %q: got %q, bytes.ToUpper %q", in, whole, bytes.ToUpper(in))
		}
	})
}

// TestUpperWordsMatchBytes checks the eight-at-a-time path against the
// plain definition for every byte value at every position in a word, and
// for random buffers of every small length and offset.
func TestUpperWordsMatchBytes(t *testing.T) {
	ref := func(b []byte) {
		for i, c := range b {
			if 'a' <= c && c <= 'z' {
				b[i] = c - 32
			}
		}
	}
	for v := 0; v < 256; v++ {
		for pos := 0; pos < 8; pos++ {
			for _, fill := range []byte{0, 'a', 'z', 0x7f, 0x80, 0xe1, 0xff, '`', '{'} {
				got := bytes.Repeat([]byte{fill}, 16)
				got[pos] = byte(v)
				want := append([]byte(nil), got...)
				ref(want)
				Upper(got)
				if !bytes.Equal(got, want) {
					t.Fatalf("byte %#x at %d among %#x: got % x want % x", v, pos, fill, got, want)
				}
			}
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for n := 0; n < 300; n++ {
		buf := make([]byte, n+7)
		for i := range buf {
			buf[i] = byte(r.Uint32())
		}
		for off := 0; off < 8 && off <= len(buf); off++ {
			got := append([]byte(nil), buf[off:]...)
			want := append([]byte(nil), got...)
			ref(want)
			Upper(got)
			if !bytes.Equal(got, want) {
				t.Fatalf("len %d off %d differs", len(got), off)
			}
		}
	}
}

func BenchmarkUpper(b *testing.B) {
	buf := bytes.Repeat([]byte("Hello, World! abc xyz 0123 {}~ \xe2\x82\xac\n"), 1024)
	b.SetBytes(int64(len(buf)))
	for i := 0; i < b.N; i++ {
		Upper(buf)
	}
}

// BenchmarkUpperRandom uppercases 64 KiB reads of pseudo-random bytes, as
// the server does under the bench's bulk: each read is fresh data (copied in
// from a 32 MiB block, so no branch predictor learns it; the copy is part of
// the figure, as the stack's copy into the read buffer is).
func BenchmarkUpperRandom(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 2))
	src := make([]byte, 32<<20)
	for i := range src {
		src[i] = byte(r.Uint32())
	}
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	off := 0
	for b.Loop() {
		copy(buf, src[off:])
		off = (off + len(buf)) % len(src)
		Upper(buf)
	}
}
