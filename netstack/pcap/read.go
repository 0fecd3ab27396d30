package pcap

import (
	"encoding/binary"
	"fmt"
	"os"
	"time"
)

// Packet is one packet read back from a capture.
type Packet struct {
	Time    time.Time
	Data    []byte // as captured (at most the snapshot length)
	OrigLen int
	Comment string // the packet's comment, if any
}

// ReadFile reads back the packets of a capture this package wrote (little
// endian pcapng, microsecond timestamps). A torn last block ends the
// reading without an error: the Writer cuts back to whole records, and a
// capture still being written may end mid-block.
func ReadFile(path string) ([]Packet, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	if len(b) < sectionLen || le.Uint32(b) != blockSection || le.Uint32(b[8:]) != byteOrderMagic {
		return nil, fmt.Errorf("%s: not a pcapng file this program wrote", path)
	}
	var out []Packet
	for off := 0; off+12 <= len(b); {
		typ, total := le.Uint32(b[off:]), int(le.Uint32(b[off+4:]))
		if total < 12 || total%4 != 0 || off+total > len(b) {
			break
		}
		blk := b[off : off+total]
		off += total
		if typ != blockPacket || total < recordHeaderLen+recordTrailLen {
			continue
		}
		usec := uint64(le.Uint32(blk[12:]))<<32 | uint64(le.Uint32(blk[16:]))
		incl, orig := int(le.Uint32(blk[20:])), int(le.Uint32(blk[24:]))
		end := recordHeaderLen + pad4(incl)
		if end > total-recordTrailLen {
			return out, fmt.Errorf("%s: bad packet block", path)
		}
		p := Packet{Time: time.UnixMicro(int64(usec)), Data: blk[recordHeaderLen : recordHeaderLen+incl], OrigLen: orig}
		for o := end; o+4 <= total-recordTrailLen; {
			code, n := le.Uint16(blk[o:]), int(le.Uint16(blk[o+2:]))
			if code == 0 || o+4+n > total-recordTrailLen {
				break
			}
			if code == optComment {
				p.Comment = string(blk[o+4 : o+4+n])
			}
			o += 4 + pad4(n)
		}
		out = append(out, p)
	}
	return out, nil
}
