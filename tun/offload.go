package tun

import (
	"encoding/binary"
	"errors"
)

// GSOType says whether a packet is a TCP super-segment and of which kind,
// as the gso_type of Linux's struct virtio_net_hdr.
type GSOType uint8

// GSO types (linux/virtio_net.h).
const (
	GSONone  GSOType = 0
	GSOTCPv4 GSOType = 1
	GSOTCPv6 GSOType = 4
)

// Offload describes a packet that is not yet, or no longer, a wire packet:
// its transport checksum is only partial, or it is one TCP super-segment
// standing for several wire segments. It is Linux's struct virtio_net_hdr,
// which a TUN opened with IFF_VNET_HDR puts in front of every packet.
type Offload struct {
	// NeedsCsum: the checksum at CsumStart+CsumOffset holds only the
	// pseudo-header sum; whoever puts the packet on a wire sums
	// everything from CsumStart onwards into it.
	NeedsCsum bool
	// DataValid: the checksum was already verified (by the kernel).
	DataValid  bool
	CsumStart  uint16
	CsumOffset uint16
	// GSO is GSONone for a single segment; otherwise the packet is cut
	// into segments of GSOSize payload bytes each, every one with the
	// first HdrLen bytes of headers.
	GSO     GSOType
	GSOSize uint16
	HdrLen  uint16
}

// VnetHdrLen is the size of struct virtio_net_hdr.
const VnetHdrLen = 10

// Flags of struct virtio_net_hdr.
const (
	vnetNeedsCsum = 1
	vnetDataValid = 2
)

// Marshal writes o as a virtio_net_hdr (little-endian) into b, which must
// hold VnetHdrLen bytes.
func (o Offload) Marshal(b []byte) {
	var flags uint8
	if o.NeedsCsum {
		flags |= vnetNeedsCsum
	}
	if o.DataValid {
		flags |= vnetDataValid
	}
	b[0] = flags
	b[1] = uint8(o.GSO)
	binary.LittleEndian.PutUint16(b[2:], o.HdrLen)
	binary.LittleEndian.PutUint16(b[4:], o.GSOSize)
	binary.LittleEndian.PutUint16(b[6:], o.CsumStart)
	binary.LittleEndian.PutUint16(b[8:], o.CsumOffset)
}

// errShortVnetHdr is returned for a read shorter than a virtio_net_hdr.
var errShortVnetHdr = errors.New("packet shorter than its virtio-net header")

// ParseOffload reads a virtio_net_hdr from the front of b.
func ParseOffload(b []byte) (Offload, error) {
	if len(b) < VnetHdrLen {
		return Offload{}, errShortVnetHdr
	}
	// ECN (0x80) only qualifies GSO; it needs nothing of us.
	return Offload{
		NeedsCsum:  b[0]&vnetNeedsCsum != 0,
		DataValid:  b[0]&vnetDataValid != 0,
		GSO:        GSOType(b[1] &^ 0x80),
		HdrLen:     binary.LittleEndian.Uint16(b[2:]),
		GSOSize:    binary.LittleEndian.Uint16(b[4:]),
		CsumStart:  binary.LittleEndian.Uint16(b[6:]),
		CsumOffset: binary.LittleEndian.Uint16(b[8:]),
	}, nil
}

// MaxOffloadPacket is the largest packet an offloading device carries: a
// whole IPv4 datagram.
const MaxOffloadPacket = 65535

// OffloadDevice is a Device that also carries packets with offloads: TCP
// super-segments larger than the MTU and partial checksums, each described
// by an Offload. A Linux TUN opened with Config.Offload is one (it uses
// IFF_VNET_HDR and TUNSETOFFLOAD); so is a Pipe made with offloads.
//
// On such a device the kernel hands us the segments a local sender (or GRO)
// built, up to 64 KiB at a time, and cuts ours into wire segments itself:
// one system call moves up to 45 segments.
type OffloadDevice interface {
	Device
	// Offloads reports whether the device was opened with offloads; if
	// not, ReadOffload and WriteOffload must not be used.
	Offloads() bool
	// ReadOffload reads one packet (up to MaxOffloadPacket bytes) into buf
	// and returns its length and description.
	ReadOffload(buf []byte) (int, Offload, error)
	// WriteOffload writes the concatenation of bufs as one packet
	// described by o.
	WriteOffload(bufs [][]byte, o Offload) (int, error)
}
