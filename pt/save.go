package pt

import (
	"crypto/sha256"
	"fmt"
	"io"
	"math/big"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kvtorch/kvtorch/internal/atomicfile"
)

// Save writes v to path in torch.save's format (see the package comment for
// the value types). The write is atomic: the file is written under a
// temporary name in the same folder, synced, and renamed, so a crash never
// leaves a half-written file under path.
func Save(path string, v any) error {
	err := atomicfile.Write(path, func(w io.Writer) error { return Write(w, v, archiveName(path)) })
	if err != nil {
		return fmt.Errorf("pt: save %s: %w", path, err)
	}
	return nil
}

// archiveName is the folder inside the zip: the file name without its
// extension, as torch.save names it.
func archiveName(path string) string {
	base := filepath.Base(path)
	name := strings.TrimSuffix(base, filepath.Ext(base))
	if name == "" || strings.ContainsAny(name, "/\\") {
		return "archive"
	}
	return name
}

// Write writes v in torch.save's format to w, with entries under the folder
// archive (torch.save uses the file name without extension).
func Write(w io.Writer, v any, archive string) error {
	pkl, storages, err := encodePickle(v)
	if err != nil {
		return err
	}
	z := newZipWriter(w)
	p := archive + "/"
	z.add(p+"data.pkl", pkl)
	z.add(p+".format_version", []byte("1"))
	z.add(p+".storage_alignment", []byte(strconv.Itoa(storageAlignment)))
	z.add(p+"byteorder", []byte("little"))
	for i, s := range storages {
		z.add(p+"data/"+strconv.Itoa(i), s.Data)
	}
	z.add(p+"version", []byte("3\n"))
	z.add(p+".data/serialization_id", serializationID(z.entries))
	return z.close()
}

// serializationID is the 40-digit id torch.save records. torch draws it at
// random; here it is derived from the records written so far (names, sizes
// and CRC-32s), so equal values give equal files.
func serializationID(entries []zipEntry) []byte {
	h := sha256.New()
	for _, e := range entries {
		fmt.Fprintf(h, "%s %d %08x\n", e.name, e.size, e.crc)
	}
	n := new(big.Int).SetBytes(h.Sum(nil))
	digits := n.String()
	for len(digits) < 40 {
		digits = "0" + digits
	}
	return []byte(digits[:40])
}
