package texts

import (
	"bytes"
	"hash/fnv"

	"github.com/kvtorch/kvtorch/kvfile"
)

// A text's fingerprint is a sample of its lines, chosen by their content
// (lines of at least fingerprintLine bytes whose hash is 0 modulo
// fingerprintEvery): the same lines are chosen wherever the text appears —
// in its own file, concatenated with others on stdin, or in a JSONL record —
// so a calibration can recognise its texts in held-out text by the lines
// they share, not only by the files' sha256.
const (
	fingerprintLine  = 40
	fingerprintEvery = 8
	fingerprintMax   = kvfile.MaxFingerprint // lines kept per file
)

// lineHash is the hash of a line without surrounding white space, and
// whether the line is sampled.
func lineHash(line []byte) (uint64, bool) {
	line = bytes.TrimSpace(line)
	if len(line) < fingerprintLine {
		return 0, false
	}
	h := fnv.New64a()
	h.Write(line)
	v := h.Sum64() & (1<<63 - 1) // kept as a non-negative int64 in files
	return v, v%fingerprintEvery == 0
}

// fingerprinter collects the sampled lines of bytes written to it.
type fingerprinter struct {
	partial []byte
	keep    func(uint64) bool // false: stop collecting
}

func (f *fingerprinter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			if len(f.partial) < 1<<16 { // longer lines are not sampled
				f.partial = append(f.partial, p...)
			}
			break
		}
		line := p[:i]
		if len(f.partial) > 0 {
			line = append(f.partial, line...)
		}
		if h, ok := lineHash(line); ok && f.keep != nil {
			if !f.keep(h) {
				f.keep = nil
			}
		}
		f.partial = f.partial[:0]
		p = p[i+1:]
	}
	return n, nil
}

// flush takes the last line (without a line break).
func (f *fingerprinter) flush() {
	if h, ok := lineHash(f.partial); ok && f.keep != nil {
		f.keep(h)
	}
	f.partial = nil
}

// fileFingerprint collects up to fingerprintMax sampled lines.
func fileFingerprint() (*fingerprinter, *[]int64) {
	var out []int64
	seen := map[uint64]bool{}
	return &fingerprinter{keep: func(h uint64) bool {
		if !seen[h] {
			seen[h] = true
			out = append(out, int64(h))
		}
		return len(out) < fingerprintMax
	}}, &out
}

// SharedText reports, for each file of texts (a calibration's) whose
// fingerprint has at least 4 lines, whether at least half of them are among
// lines (the sampled lines of other text): the other text holds it.
func SharedText(texts []kvfile.TextFile, lines map[uint64]bool) (kvfile.TextFile, bool) {
	for _, t := range texts {
		if len(t.Fingerprint) < 4 {
			continue
		}
		hits := 0
		for _, h := range t.Fingerprint {
			if lines[uint64(h)] {
				hits++
			}
		}
		if 2*hits >= len(t.Fingerprint) {
			return t, true
		}
	}
	return kvfile.TextFile{}, false
}
