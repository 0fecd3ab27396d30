package pcap

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"time"
)

// Packet is one record of a capture, from its IP header on.
type Packet struct {
	Time time.Time
	// Data is the IP packet (the link-layer header taken off), as much of
	// it as the capture kept.
	Data []byte
	// OrigLen is the IP packet's length on the wire.
	OrigLen int
	// Comments are the record's pcapng comments (opt_comment), if any.
	Comments []string
}

// ReadFile reads the capture at path: classic pcap (either byte order,
// micro- or nanosecond time stamps) or pcapng, as tcpdump, tshark,
// Wireshark and our Writer write them. It returns the IPv4 and IPv6
// packets; records of other protocols are left out.
func ReadFile(path string) ([]Packet, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	pkts, err := Read(f)
	if err != nil {
		return pkts, fmt.Errorf("%s: %w", path, err)
	}
	return pkts, nil
}

// Read reads a whole capture from r (see ReadFile).
func Read(r io.Reader) ([]Packet, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, err := br.Peek(4)
	if err != nil {
		return nil, errors.New("not a capture: shorter than a pcap header")
	}
	if binary.LittleEndian.Uint32(magic) == 0x0a0d0d0a {
		return readNG(br)
	}
	return readClassic(br)
}

// Link types we can take the IP packet out of.
const (
	linkNull     = 0
	linkEthernet = 1
	linkRawBSD   = 12 // DLT_RAW on some systems
	linkLinuxSLL = 113
	linkIPv4     = 228
	linkIPv6     = 229
	linkSLL2     = 276
)

// ipPayload strips the link-layer header of linktype lt; ok is false for
// a record that does not carry IP (ARP, ...) or a link type we do not know.
func ipPayload(lt uint32, b []byte) ([]byte, int, bool) {
	strip := 0
	switch lt {
	case LinkTypeRaw, linkRawBSD, linkIPv4, linkIPv6:
	case linkNull:
		strip = 4
	case linkEthernet:
		strip = 14
		if len(b) >= 14 {
			et := binary.BigEndian.Uint16(b[12:])
			for (et == 0x8100 || et == 0x88a8) && len(b) >= strip+4 {
				et = binary.BigEndian.Uint16(b[strip+2:])
				strip += 4
			}
			if et != 0x0800 && et != 0x86dd {
				return nil, 0, false
			}
		}
	case linkLinuxSLL:
		strip = 16
		if len(b) >= 16 {
			if et := binary.BigEndian.Uint16(b[14:]); et != 0x0800 && et != 0x86dd {
				return nil, 0, false
			}
		}
	case linkSLL2:
		strip = 20
		if len(b) >= 20 {
			if et := binary.BigEndian.Uint16(b[0:]); et != 0x0800 && et != 0x86dd {
				return nil, 0, false
			}
		}
	default:
		return nil, 0, false
	}
	if len(b) < strip+1 {
		return nil, 0, false
	}
	b = b[strip:]
	if v := b[0] >> 4; v != 4 && v != 6 {
		return nil, 0, false
	}
	return b, strip, true
}

func readClassic(br *bufio.Reader) ([]Packet, error) {
	h := make([]byte, classicFileHeaderLen)
	if _, err := io.ReadFull(br, h); err != nil {
		return nil, errors.New("not a capture: shorter than a pcap header")
	}
	var bo binary.ByteOrder = binary.LittleEndian
	nano := false
	switch binary.LittleEndian.Uint32(h) {
	case magicMicroseconds:
	case 0xa1b23c4d:
		nano = true
	default:
		bo = binary.BigEndian
		switch binary.BigEndian.Uint32(h) {
		case magicMicroseconds:
		case 0xa1b23c4d:
			nano = true
		default:
			return nil, fmt.Errorf("not a pcap or pcapng file (magic % x)", h[:4])
		}
	}
	lt := bo.Uint32(h[20:]) & 0x0fffffff
	var pkts []Packet
	rh := make([]byte, classicRecordHeaderLen)
	for {
		if _, err := io.ReadFull(br, rh); err != nil {
			if err == io.EOF {
				return pkts, nil
			}
			return pkts, errors.New("the capture ends inside a record header")
		}
		sec, frac := bo.Uint32(rh), bo.Uint32(rh[4:])
		incl, orig := int(bo.Uint32(rh[8:])), int(bo.Uint32(rh[12:]))
		if incl > 1<<26 {
			return pkts, fmt.Errorf("record of %d bytes: the file is damaged", incl)
		}
		data, err := readN(br, incl)
		if err != nil {
			return pkts, errors.New("the capture ends inside a record")
		}
		ns := int64(frac) * 1000
		if nano {
			ns = int64(frac)
		}
		if ip, strip, ok := ipPayload(lt, data); ok {
			pkts = append(pkts, Packet{Time: time.Unix(int64(sec), ns), Data: ip, OrigLen: orig - strip})
		}
	}
}

// What the reader takes besides the writer's blocks and options
// (pcap.go): classic pcap's magic, and the pcapng blocks and options other
// writers use.
const (
	magicMicroseconds      = 0xa1b2c3d4
	classicFileHeaderLen   = 24
	classicRecordHeaderLen = 16
	ngOldPacket            = 2
	ngSPB                  = 3
	ngOptEnd               = 0
	ngIfTsresol            = 9
)

type ngIface struct {
	lt      uint32
	snapLen uint32
	// units per second of its time stamps
	tps uint64
}

func readNG(br *bufio.Reader) ([]Packet, error) {
	var bo binary.ByteOrder = binary.LittleEndian
	var ifaces []ngIface
	var pkts []Packet
	hdr := make([]byte, 12)
	for {
		if _, err := io.ReadFull(br, hdr[:8]); err != nil {
			if err == io.EOF {
				return pkts, nil
			}
			return pkts, errors.New("the capture ends inside a block header")
		}
		typ := binary.LittleEndian.Uint32(hdr)
		if typ == blockSection {
			// The byte-order magic decides how everything in this section reads.
			if _, err := io.ReadFull(br, hdr[8:12]); err != nil {
				return pkts, errors.New("the capture ends inside a section header")
			}
			switch binary.LittleEndian.Uint32(hdr[8:]) {
			case 0x1a2b3c4d:
				bo = binary.LittleEndian
			case 0x4d3c2b1a:
				bo = binary.BigEndian
			default:
				return pkts, errors.New("pcapng section header with a bad byte-order magic")
			}
			ifaces = ifaces[:0]
			n := int(bo.Uint32(hdr[4:]))
			if n < 28 || n%4 != 0 || n > 1<<20 {
				return pkts, fmt.Errorf("pcapng section header of %d bytes: the file is damaged", n)
			}
			if _, err := br.Discard(n - 12); err != nil {
				return pkts, errors.New("the capture ends inside a section header")
			}
			continue
		}
		typ = bo.Uint32(hdr)
		n := int(bo.Uint32(hdr[4:]))
		if n < 12 || n%4 != 0 || n > 1<<26 {
			return pkts, fmt.Errorf("pcapng block of %d bytes: the file is damaged", n)
		}
		body, err := readN(br, n-8)
		if err != nil {
			return pkts, errors.New("the capture ends inside a block")
		}
		body = body[:len(body)-4] // the trailing length
		switch typ {
		case blockInterface:
			if len(body) < 8 {
				return pkts, errors.New("pcapng interface block too short")
			}
			ifc := ngIface{lt: uint32(bo.Uint16(body)), snapLen: bo.Uint32(body[4:]), tps: 1e6}
			for _, o := range ngOptions(bo, body[8:]) {
				if o.code == ngIfTsresol && len(o.val) >= 1 {
					v := o.val[0]
					if v&0x80 != 0 {
						if e := v & 0x7f; e < 64 {
							ifc.tps = 1 << e
						}
					} else if v <= 19 {
						ifc.tps = uint64(math.Pow10(int(v)))
					}
				}
			}
			ifaces = append(ifaces, ifc)
		case blockPacket, ngOldPacket:
			if len(body) < 20 {
				return pkts, errors.New("pcapng packet block too short")
			}
			var id uint32
			if typ == blockPacket {
				id = bo.Uint32(body)
			} else {
				id = uint32(bo.Uint16(body))
			}
			if int(id) >= len(ifaces) {
				return pkts, fmt.Errorf("pcapng packet on interface %d, which the file never described", id)
			}
			ifc := ifaces[id]
			ts := uint64(bo.Uint32(body[4:]))<<32 | uint64(bo.Uint32(body[8:]))
			incl, orig := int(bo.Uint32(body[12:])), int(bo.Uint32(body[16:]))
			if 20+incl > len(body) {
				return pkts, errors.New("pcapng packet longer than its block")
			}
			data := body[20 : 20+incl]
			var comments []string
			for _, o := range ngOptions(bo, body[min(20+(incl+3)&^3, len(body)):]) {
				if o.code == optComment {
					comments = append(comments, string(o.val))
				}
			}
			sec, frac := ts/ifc.tps, ts%ifc.tps
			t := time.Unix(int64(sec), int64(frac*1e9/ifc.tps))
			if ip, strip, ok := ipPayload(ifc.lt, data); ok {
				pkts = append(pkts, Packet{Time: t, Data: ip, OrigLen: orig - strip, Comments: comments})
			}
		case ngSPB:
			if len(ifaces) == 0 || len(body) < 4 {
				return pkts, errors.New("pcapng simple packet without an interface")
			}
			orig := int(bo.Uint32(body))
			incl := min(orig, len(body)-4)
			if s := int(ifaces[0].snapLen); s > 0 && incl > s {
				incl = s
			}
			if ip, strip, ok := ipPayload(ifaces[0].lt, body[4:4+incl]); ok {
				pkts = append(pkts, Packet{Data: ip, OrigLen: orig - strip})
			}
		}
		// Other blocks (name resolution, statistics, ...) are skipped.
	}
}

type ngOption struct {
	code uint16
	val  []byte
}

func ngOptions(bo binary.ByteOrder, b []byte) []ngOption {
	var out []ngOption
	for len(b) >= 4 {
		code, n := bo.Uint16(b), int(bo.Uint16(b[2:]))
		if code == ngOptEnd || 4+n > len(b) {
			break
		}
		out = append(out, ngOption{code, b[4 : 4+n]})
		b = b[4+(n+3)&^3:]
	}
	return out
}

// readN reads n bytes, allocating as they arrive: a damaged length field
// claiming 60 MB costs nothing when the file ends first.
func readN(r io.Reader, n int) ([]byte, error) {
	if n <= 64<<10 {
		b := make([]byte, n)
		_, err := io.ReadFull(r, b)
		return b, err
	}
	var buf bytes.Buffer
	m, err := io.CopyN(&buf, r, int64(n))
	if m != int64(n) {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf.Bytes(), nil
}
