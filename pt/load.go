package pt

import (
	"archive/zip"
	"bytes"
	"errors"
	"fmt"
	"github.com/kvtorch/kvtorch/internal/regfile"
	"hash/crc32"
	"io"
	"strings"
)

// File is what Read found in a torch.save file.
type File struct {
	Archive      string // the folder inside the zip, e.g. "calib"
	Value        any    // the saved value tree
	Storages     int    // number of storages
	StorageBytes int64  // their total size
}

// Load reads the value saved in a torch.save file.
func Load(path string) (any, error) {
	f, err := Open(path)
	if err != nil {
		return nil, err
	}
	return f.Value, nil
}

// Open reads a torch.save file and describes it.
func Open(path string) (*File, error) {
	fh, err := regfile.Open(path) // a FIFO or a device would block or never end
	if err != nil {
		return nil, fmt.Errorf("pt: %w", err) // the error names the path
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, fmt.Errorf("pt: %w", err)
	}
	f, err := Read(fh, st.Size())
	if err != nil {
		return nil, &PathError{Path: path, Err: err}
	}
	return f, nil
}

// PathError is an error of reading the file at Path.
type PathError struct {
	Path string
	Err  error
}

func (e *PathError) Error() string {
	return "pt: read " + e.Path + ": " + strings.TrimPrefix(e.Err.Error(), "pt: ")
}

func (e *PathError) Unwrap() error { return e.Err }

// legacyMagic starts files of torch.save before 1.6 (pickle protocol 2, then
// the magic number 0x1950a86a20f9469cfc6c as a LONG1).
var legacyMagic = []byte{0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19}

// Read reads a torch.save file of the given size from r.
func Read(r io.ReaderAt, size int64) (*File, error) {
	head := make([]byte, min(size, 512))
	if _, err := r.ReadAt(head, 0); err != nil && err != io.EOF {
		return nil, fmt.Errorf("pt: %w", err)
	}
	switch {
	case size == 0:
		return nil, errors.New("pt: empty file")
	case bytes.HasPrefix(head, legacyMagic):
		return nil, errors.New("pt: legacy torch.save format (before torch 1.6) is not supported; re-save it with a current torch")
	case len(head) >= 262 && string(head[257:262]) == "ustar":
		return nil, errors.New("pt: tar-based torch.save format (torch 0.x) is not supported")
	case !bytes.HasPrefix(head, []byte("PK\x03\x04")) && !bytes.HasPrefix(head, []byte("PK\x05\x06")):
		return nil, fmt.Errorf("pt: not a torch.save file (a zip archive); it starts with %q", head[:min(len(head), 8)])
	}
	zr, err := zip.NewReader(r, size)
	if err != nil {
		return nil, fmt.Errorf("pt: not a readable zip archive (truncated or corrupt?): %w", err)
	}
	entries := map[string]*zip.File{}
	archive := ""
	for _, f := range zr.File {
		entries[f.Name] = f
		if dir, ok := strings.CutSuffix(f.Name, "/data.pkl"); ok && !strings.Contains(dir, "/") {
			if archive != "" {
				return nil, fmt.Errorf("pt: two data.pkl records (%s and %s)", archive, dir)
			}
			archive = dir
		}
	}
	if archive == "" {
		return nil, errors.New("pt: zip archive without <folder>/data.pkl: not a torch.save file")
	}
	prefix := archive + "/"
	if bo, ok := entries[prefix+"byteorder"]; ok {
		b, err := readEntry(r, size, bo)
		if err != nil {
			return nil, err
		}
		if string(b) != "little" {
			return nil, fmt.Errorf("pt: byte order %q is not supported", b)
		}
	}
	pkl, err := readEntry(r, size, entries[prefix+"data.pkl"])
	if err != nil {
		return nil, err
	}

	file := &File{Archive: archive}
	storages := map[string]*Storage{}
	load := func(key string, dtype DType, location string, numel int64) (*Storage, error) {
		if s, ok := storages[key]; ok {
			if s.DType != dtype || s.Numel() != numel {
				return nil, fmt.Errorf("pt: storage %q referenced as both %s[%d] and %s[%d]", key, s.DType, s.Numel(), dtype, numel)
			}
			return s, nil
		}
		f, ok := entries[prefix+"data/"+key]
		if !ok {
			return nil, fmt.Errorf("pt: storage %q named in data.pkl is missing from the archive", key)
		}
		want := uint64(numel) * uint64(dtype.Size())
		if numel > size || f.UncompressedSize64 != want {
			return nil, fmt.Errorf("pt: storage %q has %d bytes in the archive; data.pkl declares %d elements of %s (%d bytes)",
				key, f.UncompressedSize64, numel, dtype, want)
		}
		data, err := readEntry(r, size, f)
		if err != nil {
			return nil, err
		}
		s := &Storage{DType: dtype, Data: data, Location: location}
		storages[key] = s
		file.Storages++
		file.StorageBytes += int64(len(data))
		return s, nil
	}
	v, err := decodePickle(pkl, load)
	if err != nil {
		return nil, err
	}
	file.Value = v
	return file, nil
}

// readEntry reads a stored (uncompressed) zip entry, checking its declared
// size against the archive before allocating.
func readEntry(r io.ReaderAt, size int64, f *zip.File) ([]byte, error) {
	if f.Method != zip.Store {
		return nil, fmt.Errorf("pt: record %s is compressed (method %d); torch.save stores records uncompressed", f.Name, f.Method)
	}
	off, err := f.DataOffset()
	if err != nil {
		return nil, fmt.Errorf("pt: record %s: %w", f.Name, err)
	}
	if f.UncompressedSize64 > uint64(size) || off+int64(f.UncompressedSize64) > size {
		return nil, fmt.Errorf("pt: record %s declares %d bytes at offset %d, past the end of the %d-byte file (truncated?)",
			f.Name, f.UncompressedSize64, off, size)
	}
	buf := make([]byte, f.UncompressedSize64)
	if n, err := r.ReadAt(buf, off); n < len(buf) {
		return nil, fmt.Errorf("pt: record %s: %w", f.Name, err)
	}
	if crc32.ChecksumIEEE(buf) != f.CRC32 {
		return nil, fmt.Errorf("pt: record %s fails its CRC check (corrupt file)", f.Name)
	}
	return buf, nil
}
