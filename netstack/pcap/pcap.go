// Package pcap writes packet captures in the classic libpcap format with
// LINKTYPE_RAW (bare IPv4/IPv6 packets, as on a TUN), readable by tcpdump,
// tshark and Wireshark.
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
	magicMicroseconds = 0xa1b2c3d4
	versionMajor      = 2
	versionMinor      = 4
	// LinkTypeRaw is LINKTYPE_RAW: the packet begins with an IP header.
	LinkTypeRaw = 101
	// DefaultSnapLen is tcpdump's default snapshot length.
	DefaultSnapLen = 262144

	fileHeaderLen   = 24
	recordHeaderLen = 16
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
	h := make([]byte, fileHeaderLen)
	binary.LittleEndian.PutUint32(h[0:], magicMicroseconds)
	binary.LittleEndian.PutUint16(h[4:], versionMajor)
	binary.LittleEndian.PutUint16(h[6:], versionMinor)
	// thiszone and sigfigs stay zero.
	binary.LittleEndian.PutUint32(h[16:], uint32(snapLen))
	binary.LittleEndian.PutUint32(h[20:], LinkTypeRaw)
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
	if len(pkt) > w.snapLen {
		pkt = pkt[:w.snapLen]
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failed != nil {
		w.lost.Add(1)
		return w.failed
	}
	var h [recordHeaderLen]byte
	usec := t.UnixMicro()
	binary.LittleEndian.PutUint32(h[0:], uint32(usec/1e6))
	binary.LittleEndian.PutUint32(h[4:], uint32(usec%1e6))
	binary.LittleEndian.PutUint32(h[8:], uint32(len(pkt)))
	binary.LittleEndian.PutUint32(h[12:], uint32(origLen))
	w.buf = append(w.buf, h[:]...)
	w.buf = append(w.buf, pkt...)
	w.buffered++
	if len(w.buf) >= FlushSize {
		return w.flushLocked()
	}
	return nil
}

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
