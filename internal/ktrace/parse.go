package ktrace

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// field is one field of a tracepoint's record, as its format file
// describes it.
type field struct {
	offset, size int
}

// format is a tracepoint's record layout: its id and named fields.
type format struct {
	name   string
	id     uint16
	fields map[string]field
}

// parseFormat reads a tracepoint's format file (events/SYSTEM/NAME/format):
//
//	name: inet_sock_set_state
//	ID: 1234
//	format:
//		field:unsigned short common_type;	offset:0;	size:2;	signed:0;
//		field:const void * skaddr;	offset:8;	size:8;	signed:0;
//		field:__u8 saddr[4];	offset:32;	size:4;	signed:0;
func parseFormat(text string) (*format, error) {
	f := &format{fields: map[string]field{}}
	haveID := false
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "name:"):
			f.name = strings.TrimSpace(strings.TrimPrefix(line, "name:"))
		case strings.HasPrefix(line, "ID:"):
			id, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(line, "ID:")), 10, 16)
			if err != nil {
				return nil, fmt.Errorf("format: bad ID line %q", line)
			}
			f.id, haveID = uint16(id), true
		case strings.HasPrefix(line, "field:"):
			parts := strings.Split(line, ";")
			if len(parts) < 3 {
				return nil, fmt.Errorf("format: bad field line %q", line)
			}
			decl := strings.TrimSpace(strings.TrimPrefix(parts[0], "field:"))
			name := decl[strings.LastIndexAny(decl, " *")+1:]
			if i := strings.IndexByte(name, '['); i >= 0 {
				name = name[:i]
			}
			var fl field
			for _, p := range parts[1:] {
				k, v, ok := strings.Cut(strings.TrimSpace(p), ":")
				if !ok {
					continue
				}
				n, err := strconv.Atoi(v)
				if err != nil {
					continue
				}
				switch k {
				case "offset":
					fl.offset = n
				case "size":
					fl.size = n
				}
			}
			f.fields[name] = fl
		}
	}
	if !haveID {
		return nil, fmt.Errorf("format: no ID")
	}
	return f, nil
}

// uint reads an unsigned field of 1, 2, 4 or 8 bytes from rec (native
// byte order: tracepoint records are the kernel's memory); 0 if rec is too
// short or the field is missing.
func (f *format) uint(rec []byte, name string) uint64 {
	fl, ok := f.fields[name]
	if !ok || fl.offset+fl.size > len(rec) {
		return 0
	}
	b := rec[fl.offset : fl.offset+fl.size]
	switch fl.size {
	case 1:
		return uint64(b[0])
	case 2:
		return uint64(binary.NativeEndian.Uint16(b))
	case 4:
		return uint64(binary.NativeEndian.Uint32(b))
	case 8:
		return binary.NativeEndian.Uint64(b)
	}
	return 0
}

// bytes returns a fixed-size array field (an address), or nil.
func (f *format) bytes(rec []byte, name string) []byte {
	fl, ok := f.fields[name]
	if !ok || fl.offset+fl.size > len(rec) {
		return nil
	}
	return rec[fl.offset : fl.offset+fl.size]
}

// Ring buffer entry types (include/linux/ring_buffer.h): 1-28 are data
// whose length is type_len*4 bytes; 0 is data whose length is the first
// 32-bit word.
const (
	typePadding    = 29
	typeTimeExtend = 30
	typeTimeStamp  = 31
)

// pageHeader is the size of a ring buffer page's header: the page's
// timestamp (8 bytes) and its commit word (local_t, 8 bytes on 64-bit).
const pageHeader = 16

// commitMask keeps the committed length of a page's commit word; the top
// bits flag missed events.
const (
	commitMask     = 1<<30 - 1
	missedEvents   = 1 << 31
	timestampShift = 27
)

// parsePage walks one page read from trace_pipe_raw and calls emit for
// each data record with its timestamp (the trace clock's nanoseconds). It
// reports whether the kernel flagged events lost before this page (the
// buffer was full).
func parsePage(page []byte, emit func(ts uint64, rec []byte)) (missed bool, err error) {
	if len(page) < pageHeader {
		return false, fmt.Errorf("page of %d bytes: shorter than its header", len(page))
	}
	ts := binary.NativeEndian.Uint64(page[0:8])
	commit := binary.NativeEndian.Uint64(page[8:16])
	missed = commit&missedEvents != 0
	size := int(commit & commitMask)
	if pageHeader+size > len(page) {
		return missed, fmt.Errorf("page commits %d bytes, has %d", size, len(page)-pageHeader)
	}
	data := page[pageHeader : pageHeader+size]
	for len(data) >= 4 {
		h := binary.NativeEndian.Uint32(data[0:4])
		typeLen := h & 31
		delta := uint64(h >> 5)
		switch {
		case typeLen == typePadding:
			if delta == 0 || len(data) < 8 {
				return missed, nil // the rest of the page is empty
			}
			n := 4 + int(binary.NativeEndian.Uint32(data[4:8]))
			if n > len(data) {
				return missed, nil
			}
			ts += delta
			data = data[n:]
		case typeLen == typeTimeExtend:
			if len(data) < 8 {
				return missed, fmt.Errorf("time extend cut short")
			}
			ts += uint64(binary.NativeEndian.Uint32(data[4:8]))<<timestampShift + delta
			data = data[8:]
		case typeLen == typeTimeStamp:
			if len(data) < 8 {
				return missed, fmt.Errorf("time stamp cut short")
			}
			abs := uint64(binary.NativeEndian.Uint32(data[4:8]))<<timestampShift | delta
			ts = ts&^(1<<59-1) | abs
			data = data[8:]
		case typeLen == 0:
			if len(data) < 8 {
				return missed, fmt.Errorf("event length cut short")
			}
			n := int(binary.NativeEndian.Uint32(data[4:8]))
			if n < 4 || 4+n > len(data) {
				return missed, fmt.Errorf("event of %d bytes in %d", n, len(data))
			}
			ts += delta
			emit(ts, data[8:4+n])
			data = data[(4+n+3)&^3:]
		default:
			n := int(typeLen) * 4
			if 4+n > len(data) {
				return missed, fmt.Errorf("event of %d bytes in %d", n, len(data)-4)
			}
			ts += delta
			emit(ts, data[4:4+n])
			data = data[4+n:]
		}
	}
	return missed, nil
}
