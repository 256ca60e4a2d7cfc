package pt

import (
	"bufio"
	"encoding/binary"
	"hash/crc32"
	"io"
)

// zipWriter writes an uncompressed zip archive the way PyTorch's writer does:
// every entry stored, its data aligned to storageAlignment bytes by padding in
// the local header's extra field (id "FB"), zip64 records where sizes or
// offsets need them. It buffers nothing but the central directory.
type zipWriter struct {
	w       *bufio.Writer
	off     uint64
	entries []zipEntry
	err     error
}

type zipEntry struct {
	name   string
	crc    uint32
	size   uint64
	offset uint64 // of the local header
}

const (
	storageAlignment = 64
	uint32max        = 0xffffffff
	uint16max        = 0xffff
)

// zip64Limit is the size or offset from which zip64 fields are written; a
// variable so that tests can exercise the zip64 layout on small files.
var zip64Limit uint64 = uint32max

func newZipWriter(w io.Writer) *zipWriter {
	return &zipWriter{w: bufio.NewWriterSize(w, 1<<20)}
}

func (z *zipWriter) write(b []byte) {
	if z.err != nil {
		return
	}
	n, err := z.w.Write(b)
	z.off += uint64(n)
	z.err = err
}

type le []byte

func (b le) u16(v uint16) le { return binary.LittleEndian.AppendUint16(b, v) }
func (b le) u32(v uint32) le { return binary.LittleEndian.AppendUint32(b, v) }
func (b le) u64(v uint64) le { return binary.LittleEndian.AppendUint64(b, v) }

func clamp32(v uint64) uint32 {
	if v >= zip64Limit {
		return uint32max
	}
	return uint32(v)
}

// add writes one stored entry.
func (z *zipWriter) add(name string, data []byte) {
	e := zipEntry{name: name, crc: crc32.ChecksumIEEE(data), size: uint64(len(data)), offset: z.off}
	var extra le
	if e.size >= zip64Limit {
		extra = extra.u16(0x0001).u16(16).u64(e.size).u64(e.size)
	}
	// Pad so that the data starts on a storageAlignment boundary.
	base := z.off + 30 + uint64(len(name)) + uint64(len(extra)) + 4
	pad := (storageAlignment - base%storageAlignment) % storageAlignment
	extra = extra.u16(0x4246).u16(uint16(pad)) // "FB"
	for i := uint64(0); i < pad; i++ {
		extra = append(extra, 'Z')
	}
	version := uint16(20)
	if e.size >= zip64Limit {
		version = 45
	}
	h := le(nil).u32(0x04034b50).u16(version).u16(0x0800).u16(0). // stored, UTF-8 names
									u16(0).u16(0x21). // DOS time 00:00, date 1980-01-01
									u32(e.crc).u32(clamp32(e.size)).u32(clamp32(e.size)).
									u16(uint16(len(name))).u16(uint16(len(extra)))
	z.write(h)
	z.write([]byte(name))
	z.write(extra)
	z.write(data)
	z.entries = append(z.entries, e)
}

// close writes the central directory and the end records, and flushes.
func (z *zipWriter) close() error {
	cdStart := z.off
	for _, e := range z.entries {
		var extra le
		needs64 := e.size >= zip64Limit || e.offset >= zip64Limit
		if needs64 {
			extra = extra.u16(0x0001)
			var body le
			if e.size >= zip64Limit {
				body = body.u64(e.size).u64(e.size)
			}
			if e.offset >= zip64Limit {
				body = body.u64(e.offset)
			}
			extra = append(extra.u16(uint16(len(body))), body...)
		}
		version := uint16(20)
		if needs64 {
			version = 45
		}
		h := le(nil).u32(0x02014b50).u16(0x0300 | version).u16(version).u16(0x0800).u16(0).
			u16(0).u16(0x21).
			u32(e.crc).u32(clamp32(e.size)).u32(clamp32(e.size)).
			u16(uint16(len(e.name))).u16(uint16(len(extra))).u16(0). // comment length
			u16(0).u16(0).u32(0).                                    // disk, internal and external attributes
			u32(clamp32(e.offset))
		z.write(h)
		z.write([]byte(e.name))
		z.write(extra)
	}
	cdEnd := z.off
	cdSize := cdEnd - cdStart
	n := uint64(len(z.entries))
	if n >= uint16max || cdStart >= zip64Limit || cdSize >= zip64Limit {
		z.write(le(nil).u32(0x06064b50).u64(44).u16(0x032d).u16(45).u32(0).u32(0).
			u64(n).u64(n).u64(cdSize).u64(cdStart))
		z.write(le(nil).u32(0x07064b50).u32(0).u64(cdEnd).u32(1))
	}
	count := uint16(n)
	if n >= uint16max {
		count = uint16max
	}
	z.write(le(nil).u32(0x06054b50).u16(0).u16(0).u16(count).u16(count).
		u32(clamp32(cdSize)).u32(clamp32(cdStart)).u16(0))
	if z.err != nil {
		return z.err
	}
	return z.w.Flush()
}
