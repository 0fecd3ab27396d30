// Package pcap writes packet captures in the pcapng format with
// LINKTYPE_RAW (bare IPv4/IPv6 packets, as on a TUN), readable by tcpdump,
// tshark and Wireshark. pcapng, not the classic libpcap format, because a
// packet may carry a comment: the fault layer's marks ("dropped by rule 1:
// out ack drop"), which Wireshark shows with the packet and tshark prints
// with -T fields -e frame.comment (tcpdump reads the file and ignores
// them).
//
// A Writer never panics and never leaves half a record behind: each record
// goes to the file in one write, and if a write fails (disk full, I/O
// error) the file is cut back to the last whole record, the error is
// reported once, and further packets are counted as lost. The file is valid
// at every moment, so it survives SIGINT, SIGTERM and crashes.
package pcap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// pcapng block types and the section's byte-order magic.
	blockSection   = 0x0a0d0d0a
	blockInterface = 0x00000001
	blockPacket    = 0x00000006 // Enhanced Packet Block
	byteOrderMagic = 0x1a2b3c4d
	optComment     = 1
	// LinkTypeRaw is LINKTYPE_RAW: the packet begins with an IP header.
	LinkTypeRaw = 101
	// DefaultSnapLen is tcpdump's default snapshot length.
	DefaultSnapLen = 262144

	sectionLen      = 28 // a Section Header Block without options
	interfaceLen    = 20 // an Interface Description Block without options
	fileHeaderLen   = sectionLen + interfaceLen
	recordHeaderLen = 28 // an Enhanced Packet Block's fields before the packet
	recordTrailLen  = 4  // its closing length (no options)
)

// File is what a Writer writes to: an *os.File in practice.
type File interface {
	io.Writer
	io.Closer
	Truncate(size int64) error
}

// Writer appends packets to a pcap file. It is safe for concurrent use.
type Writer struct {
	mu       sync.Mutex
	f        File
	name     string
	snapLen  int
	off      int64  // end of the last whole record
	buf      []byte // whole records not yet written
	buffered uint64 // how many
	failed   error

	written atomic.Uint64
	lost    atomic.Uint64
	// OnError is called once, with the first write error.
	onError func(error)
}

// Create creates (or truncates) the file at path and writes the pcap
// header. snapLen <= 0 means DefaultSnapLen.
func Create(path string, snapLen int, onError func(error)) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("pcap %s: %w", path, err)
	}
	w, err := NewWriter(f, path, snapLen, onError)
	if err != nil {
		f.Close()
		return nil, err
	}
	return w, nil
}

// NewWriter writes the pcap header to f and returns a Writer for it.
func NewWriter(f File, name string, snapLen int, onError func(error)) (*Writer, error) {
	if snapLen <= 0 {
		snapLen = DefaultSnapLen
	}
	le := binary.LittleEndian
	h := make([]byte, fileHeaderLen)
	le.PutUint32(h[0:], blockSection)
	le.PutUint32(h[4:], sectionLen)
	le.PutUint32(h[8:], byteOrderMagic)
	le.PutUint16(h[12:], 1) // version 1.0
	le.PutUint16(h[14:], 0)
	le.PutUint64(h[16:], ^uint64(0)) // section length not given
	le.PutUint32(h[24:], sectionLen)
	i := h[sectionLen:]
	le.PutUint32(i[0:], blockInterface)
	le.PutUint32(i[4:], interfaceLen)
	le.PutUint16(i[8:], LinkTypeRaw)
	le.PutUint32(i[12:], uint32(snapLen)) // timestamps in microseconds, the default
	le.PutUint32(i[16:], interfaceLen)
	if _, err := f.Write(h); err != nil {
		return nil, fmt.Errorf("pcap %s: write header: %w", name, err)
	}
	return &Writer{f: f, name: name, snapLen: snapLen, off: fileHeaderLen, onError: onError}, nil
}

// SnapLen is the most bytes of a packet a record keeps.
func (w *Writer) SnapLen() int { return w.snapLen }

// WritePacket appends one record: pkt (cut to the snapshot length) with its
// original length origLen, captured at t. Records are buffered (up to
// FlushSize bytes) and written whole by Flush, so the file only ever ends
// at a record boundary. It returns the first write error on every call
// after it, having recorded nothing.
func (w *Writer) WritePacket(t time.Time, pkt []byte, origLen int) error {
	return w.WritePacketComment(t, pkt, origLen, "")
}

// WritePacketComment is WritePacket with a comment on the packet (none if
// comment is empty).
func (w *Writer) WritePacketComment(t time.Time, pkt []byte, origLen int, comment string) error {
	if len(pkt) > w.snapLen {
		pkt = pkt[:w.snapLen]
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failed != nil {
		w.lost.Add(1)
		return w.failed
	}
	le := binary.LittleEndian
	total := recordHeaderLen + pad4(len(pkt)) + recordTrailLen
	if comment != "" {
		total += 4 + pad4(len(comment)) + 4 // the comment, then the end of options
	}
	var h [recordHeaderLen]byte
	usec := uint64(t.UnixMicro())
	le.PutUint32(h[0:], blockPacket)
	le.PutUint32(h[4:], uint32(total))
	// h[8:12]: interface 0.
	le.PutUint32(h[12:], uint32(usec>>32))
	le.PutUint32(h[16:], uint32(usec))
	le.PutUint32(h[20:], uint32(len(pkt)))
	le.PutUint32(h[24:], uint32(origLen))
	w.buf = append(w.buf, h[:]...)
	w.buf = append(w.buf, pkt...)
	w.buf = append(w.buf, make([]byte, pad4(len(pkt))-len(pkt))...)
	if comment != "" {
		w.buf = le.AppendUint16(w.buf, optComment)
		w.buf = le.AppendUint16(w.buf, uint16(len(comment)))
		w.buf = append(w.buf, comment...)
		w.buf = append(w.buf, make([]byte, pad4(len(comment))-len(comment))...)
		w.buf = le.AppendUint32(w.buf, 0) // opt_endofopt
	}
	w.buf = le.AppendUint32(w.buf, uint32(total))
	w.buffered++
	if len(w.buf) >= FlushSize {
		return w.flushLocked()
	}
	return nil
}

// pad4 rounds n up to a multiple of 4, as pcapng aligns its fields.
func pad4(n int) int { return (n + 3) &^ 3 }

// FlushSize is how many bytes of records the Writer gathers before it
// writes them out in one call.
const FlushSize = 256 << 10

// Flush writes the buffered records. The trace layer calls it whenever it
// has caught up, so the file is current to within a moment.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failed != nil {
		return w.failed
	}
	return w.flushLocked()
}

func (w *Writer) flushLocked() error {
	if len(w.buf) == 0 {
		return nil
	}
	n := len(w.buf)
	m, err := w.f.Write(w.buf)
	if err == nil && m != n {
		err = io.ErrShortWrite
	}
	if err != nil {
		// Cut any partial record so the file stays valid.
		if m > 0 {
			if terr := w.f.Truncate(w.off); terr != nil {
				err = errors.Join(err, fmt.Errorf("cut back to the last whole record: %w", terr))
			}
		}
		w.failed = fmt.Errorf("pcap %s: write failed after %d packets, capture stopped: %w", w.name, w.written.Load(), err)
		w.lost.Add(w.buffered)
		w.buf, w.buffered = w.buf[:0], 0
		if w.onError != nil {
			w.onError(w.failed)
		}
		return w.failed
	}
	w.off += int64(n)
	w.written.Add(w.buffered)
	w.buf, w.buffered = w.buf[:0], 0
	return nil
}

// Written is how many packets were recorded.
func (w *Writer) Written() uint64 { return w.written.Load() }

// Lost is how many packets could not be recorded after a write error.
func (w *Writer) Lost() uint64 { return w.lost.Load() }

// Err is the write error that stopped the capture, if any.
func (w *Writer) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.failed
}

// Close writes what is buffered and closes the file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failed == nil {
		w.flushLocked() // a failure is reported through onError and Lost
	}
	return w.f.Close()
}
