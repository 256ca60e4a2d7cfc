package texts

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/kvtorch/kvtorch/internal/regfile"
	"github.com/kvtorch/kvtorch/kvfile"
)

// ErrNoText marks input with no usable text.
var ErrNoText = errors.New("no usable text")

// maxStdin bounds what is read from stdin, which cannot be read lazily.
const maxStdin = 1 << 30

// Corpus is calibration or evaluation text: the documents of some files,
// located when the corpus is read (and each file hashed) but read only when
// used, so that memory follows the work (the tokens used), not the input's
// size.
//
// Files: *.txt (one document each), *.jsonl (one document per line: a JSON
// object with a "text" string, or with an "input_ids" array of token ids,
// used as they are — for models whose tokenizer kvtorch does not support),
// and "-" (stdin: one document, or JSONL when it starts with "{").
type Corpus struct {
	Files []kvfile.TextFile
	Docs  []Doc
	// Duplicates are files left out because an earlier file has the same
	// content (the same file given twice, or a copy): read once, a text
	// counts once.
	Duplicates []Duplicate
	paths      []string // Files[i]'s path on disk ("-": stdin)
	stdin      []byte
	seen       map[string]string // sha256 -> path
	lines      map[uint64]bool   // the sampled lines of the text tokenized (see SharedText), when not nil
}

// note samples the lines of text that is being tokenized.
func (c *Corpus) note(text []byte) {
	if c.lines == nil {
		return
	}
	f := &fingerprinter{keep: func(h uint64) bool { c.lines[h] = true; return true }}
	f.Write(text)
	f.flush()
}

// Duplicate is a file left out of a corpus, and the file it repeats.
type Duplicate struct {
	Path, SameAs string
}

// bom is the UTF-8 byte order mark some editors write at the start of a
// file; it is not part of the text.
var bom = []byte("\xef\xbb\xbf")

// Doc is one document of a corpus.
type Doc struct {
	Source string // path, "path:line" for JSONL, or "-"
	File   int    // index into Corpus.Files
	off, n int64  // its bytes in the file
	jsonl  bool
}

// Document is a document's content: text, or token ids.
type Document struct {
	Text string
	IDs  []int
	Pre  bool // pre-tokenized: IDs are used as they are
}

// ReadCorpus locates the documents of files, folders (recursively: *.txt and
// *.jsonl) and "-" (stdin). It refuses paths that are not regular files or
// folders (a FIFO, a device), files that look binary (NUL bytes), and JSONL
// lines that are neither a "text" nor an "input_ids" record.
func ReadCorpus(paths []string, stdin io.Reader) (*Corpus, error) {
	c := &Corpus{seen: map[string]string{}}
	for _, p := range paths {
		if p == "-" {
			if c.stdin != nil {
				return nil, fmt.Errorf("texts: - (stdin) given twice")
			}
			data, err := io.ReadAll(io.LimitReader(stdin, maxStdin+1))
			if err != nil {
				return nil, fmt.Errorf("texts: stdin: %w", err)
			}
			if len(data) > maxStdin {
				return nil, fmt.Errorf("texts: stdin: more than %d GB; give files instead", maxStdin>>30)
			}
			c.stdin = data
			if err := c.addFile("-", bytes.HasPrefix(bytes.TrimSpace(data), []byte("{"))); err != nil {
				return nil, err
			}
			continue
		}
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("texts: %w", err)
		}
		if !st.IsDir() {
			if err := c.addFile(p, strings.HasSuffix(p, ".jsonl")); err != nil {
				return nil, err
			}
			continue
		}
		found, err := folderFiles(p)
		if err != nil {
			return nil, fmt.Errorf("texts: %w", err)
		}
		for _, f := range found {
			if err := c.addFile(f, strings.HasSuffix(f, ".jsonl")); err != nil {
				return nil, err
			}
		}
	}
	return c, nil
}

// folderFiles lists a folder's *.txt and *.jsonl files, recursively, sorted.
func folderFiles(dir string) ([]string, error) {
	var found []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(path, ".txt") || strings.HasSuffix(path, ".jsonl")) {
			found = append(found, path)
		}
		return nil
	})
	sort.Strings(found)
	return found, err
}

// Files lists the files paths name as ReadCorpus reads them (a folder's
// *.txt and *.jsonl files), without reading them; "-" is left out, and a
// path that cannot be listed is given as it is (ReadCorpus says why).
func Files(paths []string) []string {
	var out []string
	for _, p := range paths {
		if p == "" || p == "-" {
			continue
		}
		if st, err := os.Stat(p); err != nil || !st.IsDir() {
			out = append(out, p)
			continue
		}
		found, _ := folderFiles(p)
		out = append(out, found...)
	}
	return out
}

// open returns a reader over file i from its start.
func (c *Corpus) open(i int) (io.ReadSeekCloser, error) {
	if c.paths[i] == "-" {
		return nopCloser{bytes.NewReader(c.stdin)}, nil
	}
	f, err := regfile.Open(c.paths[i])
	if err != nil {
		return nil, fmt.Errorf("texts: %w", err)
	}
	return f, nil
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

// addFile hashes a file and locates its documents, in one streaming pass.
func (c *Corpus) addFile(path string, jsonl bool) error {
	c.paths = append(c.paths, path)
	idx := len(c.paths) - 1
	f, err := c.open(idx)
	if err != nil {
		c.paths = c.paths[:idx]
		return err
	}
	defer f.Close()
	h := sha256.New()
	fp, lines := fileFingerprint()
	var tee io.Writer = h
	if !jsonl {
		tee = io.MultiWriter(h, fp)
	}
	r := bufio.NewReaderSize(io.TeeReader(f, tee), 1<<16)
	tf := kvfile.TextFile{Path: path}
	firstDoc := len(c.Docs)
	if !jsonl {
		head, _ := r.Peek(64 << 10)
		if err := checkText(path, head); err != nil {
			return err
		}
		n, err := io.Copy(io.Discard, r)
		if err != nil {
			return fmt.Errorf("texts: %s: %w", path, err)
		}
		c.Docs = append(c.Docs, Doc{Source: path, File: idx, off: 0, n: n})
		tf.Documents = 1
	} else {
		var off int64
		for line := 1; ; line++ {
			b, err := r.ReadBytes('\n')
			if len(b) > 0 {
				if rec := bytes.TrimSpace(trimBOM(b, off)); len(rec) > 0 {
					text, _, err := parseRecord(rec)
					if err != nil {
						return fmt.Errorf("texts: %s:%d: %w", path, line, err)
					}
					fp.Write([]byte(text))
					fp.Write([]byte("\n"))
					c.Docs = append(c.Docs, Doc{Source: fmt.Sprintf("%s:%d", path, line), File: idx, off: off, n: int64(len(b)), jsonl: true})
					tf.Documents++
				}
				off += int64(len(b))
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("texts: %s: %w", path, err)
			}
		}
	}
	fp.flush()
	tf.SHA256 = hex.EncodeToString(h.Sum(nil))
	tf.Fingerprint = *lines
	if first, dup := c.seen[tf.SHA256]; dup {
		c.Docs = c.Docs[:firstDoc]
		c.paths = c.paths[:idx]
		c.Duplicates = append(c.Duplicates, Duplicate{Path: path, SameAs: first})
		return nil
	}
	c.seen[tf.SHA256] = path
	c.Files = append(c.Files, tf)
	return nil
}

// trimBOM drops a byte order mark from the start of a file (b read at
// offset off).
func trimBOM(b []byte, off int64) []byte {
	if off == 0 {
		return bytes.TrimPrefix(b, bom)
	}
	return b
}

// checkText refuses data that looks binary: NUL bytes, or mostly invalid
// UTF-8, in its first 64 KB.
func checkText(path string, head []byte) error {
	if bytes.IndexByte(head, 0) >= 0 {
		return fmt.Errorf("texts: %s looks binary (it has NUL bytes); give text files", path)
	}
	bad := 0
	for i := 0; i < len(head); {
		r, n := utf8.DecodeRune(head[i:])
		if r == utf8.RuneError && n == 1 && len(head)-i >= utf8.UTFMax {
			bad++
		}
		i += n
	}
	if len(head) >= 256 && bad*10 > len(head) {
		return fmt.Errorf("texts: %s looks binary (%d of its first %d bytes are not UTF-8); give text files", path, bad, len(head))
	}
	return nil
}

// Record is one line of a JSONL text file: a text, or token ids used as
// they are (what kvtorch tokenize --json writes, with the source each came
// from).
type Record struct {
	Source string  `json:"source,omitempty"`
	Text   *string `json:"text,omitempty"`
	IDs    *[]int  `json:"input_ids,omitempty"`
}

// parseRecord reads one JSONL line: {"text": "..."} or {"input_ids": [...]}.
func parseRecord(line []byte) (string, []int, error) {
	var rec Record
	if err := json.Unmarshal(line, &rec); err != nil {
		return "", nil, fmt.Errorf("not a JSON object with \"text\" or \"input_ids\": %v", err)
	}
	switch {
	case rec.Text != nil && rec.IDs != nil:
		return "", nil, fmt.Errorf("both \"text\" and \"input_ids\": give one")
	case rec.Text != nil:
		return *rec.Text, nil, nil
	case rec.IDs != nil:
		for _, id := range *rec.IDs {
			if id < 0 {
				return "", nil, fmt.Errorf("negative token id %d", id)
			}
		}
		return "", *rec.IDs, nil
	}
	return "", nil, fmt.Errorf("no \"text\" or \"input_ids\" field")
}

// Load reads a document.
func (c *Corpus) Load(d Doc) (Document, error) {
	f, err := c.open(d.File)
	if err != nil {
		return Document{}, err
	}
	defer f.Close()
	if _, err := f.Seek(d.off, io.SeekStart); err != nil {
		return Document{}, fmt.Errorf("texts: %s: %w", d.Source, err)
	}
	b := make([]byte, d.n)
	if _, err := io.ReadFull(f, b); err != nil {
		return Document{}, fmt.Errorf("texts: %s: %w (did the file change?)", d.Source, err)
	}
	b = trimBOM(b, d.off)
	if !d.jsonl {
		return Document{Text: string(b)}, nil
	}
	text, ids, err := parseRecord(bytes.TrimSpace(b))
	if err != nil {
		return Document{}, fmt.Errorf("texts: %s: %w (did the file change?)", d.Source, err)
	}
	return Document{Text: text, IDs: ids, Pre: ids != nil}, nil
}

// Sample returns n documents chosen with seed (all of them, shuffled, when
// n <= 0 or n >= the number of documents).
func (c *Corpus) Sample(n int, seed uint64) []Doc {
	out := append([]Doc(nil), c.Docs...)
	rng := rand.New(rand.NewPCG(seed, 0x6b76746f726368))
	rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	if n > 0 && n < len(out) {
		out = out[:n]
	}
	return out
}

// SHA256 is a digest over the files' sha256s, in order: it names the text.
func (c *Corpus) SHA256() string {
	h := sha256.New()
	for _, f := range c.Files {
		h.Write([]byte(f.SHA256))
	}
	return hex.EncodeToString(h.Sum(nil))
}
