package pt

import (
	"archive/zip"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/kvtorch/kvtorch/internal/regfile"
)

// ErrNotScript marks a file that is not a TorchScript file (a zip archive
// with <folder>/code/ entries).
var ErrNotScript = errors.New("pt: not a TorchScript file")

// MaxExtraBytes bounds one extra file ReadScript reads, and MaxExtraTotal
// all of them together: a zip of a few MB can declare entries of any size
// (a deflated run of zeros), so sizes are checked before reading and the
// reads themselves are bounded.
const (
	MaxExtraBytes = 64 << 20
	MaxExtraTotal = 256 << 20
)

// Script is what a TorchScript file tells without running it: the names of
// its extra files (torch.jit.save's _extra_files, sorted) and the contents of
// those asked for.
type Script struct {
	Extras []string
	Data   map[string][]byte
}

// ReadScript lists a TorchScript file's extra files and reads the ones
// named in read (a name not in the file is not an error: Data lacks it).
// It reads nothing else of the archive, so a file with many or huge extra
// entries costs no more memory than the ones asked for.
func ReadScript(path string, read ...string) (*Script, error) {
	f, err := regfile.Open(path)
	if err != nil {
		return nil, fmt.Errorf("pt: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("pt: %w", err)
	}
	z, err := zip.NewReader(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("%w (%s is not a zip archive)", ErrNotScript, path)
	}
	s := &Script{Data: map[string][]byte{}}
	entries := map[string]*zip.File{}
	code := false
	for _, e := range z.File {
		parts := strings.SplitN(e.Name, "/", 3)
		if len(parts) != 3 {
			continue
		}
		switch parts[1] {
		case "code":
			code = true
		case "extra":
			if _, dup := entries[parts[2]]; !dup && parts[2] != "" {
				s.Extras = append(s.Extras, parts[2])
			}
			entries[parts[2]] = e
		}
	}
	if !code {
		return nil, fmt.Errorf("%w (%s has no code/ entries)", ErrNotScript, path)
	}
	sort.Strings(s.Extras)
	var total int64
	for _, name := range read {
		e, ok := entries[name]
		if !ok {
			continue
		}
		if _, done := s.Data[name]; done {
			continue
		}
		if e.UncompressedSize64 > MaxExtraBytes {
			return nil, fmt.Errorf("pt: %s: extra file %s declares %d bytes, more than the %d MB kvtorch reads", path, name, e.UncompressedSize64, MaxExtraBytes>>20)
		}
		if total += int64(e.UncompressedSize64); total > MaxExtraTotal {
			return nil, fmt.Errorf("pt: %s: the extra files asked for declare more than %d MB together", path, MaxExtraTotal>>20)
		}
		r, err := e.Open()
		if err != nil {
			return nil, fmt.Errorf("pt: %s: extra file %s: %w", path, name, err)
		}
		b, err := io.ReadAll(io.LimitReader(r, int64(e.UncompressedSize64)+1))
		r.Close()
		if err != nil {
			return nil, fmt.Errorf("pt: %s: extra file %s: %w", path, name, err)
		}
		if uint64(len(b)) != e.UncompressedSize64 {
			return nil, fmt.Errorf("pt: %s: extra file %s holds more or fewer bytes than it declares", path, name)
		}
		s.Data[name] = b
	}
	return s, nil
}
