package kvfile

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
	"github.com/kvtorch/kvtorch/tokenizer"
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
	Files []TextFile
	Docs  []Doc
	// Duplicates are files left out because an earlier file has the same
	// content (the same file given twice, or a copy): read once, a text
	// counts once.
	Duplicates []Duplicate
	paths      []string // Files[i]'s path on disk ("-": stdin)
	stdin      []byte
	seen       map[string]string // sha256 -> path
	read       map[uint64]bool   // the sampled lines of the text tokenized (see SharedText), when not nil
}

// note samples the lines of text that is being tokenized.
func (c *Corpus) note(text []byte) {
	if c.read == nil {
		return
	}
	f := &fingerprinter{keep: func(h uint64) bool { c.read[h] = true; return true }}
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
		var found []string
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && (strings.HasSuffix(path, ".txt") || strings.HasSuffix(path, ".jsonl")) {
				found = append(found, path)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("texts: %w", err)
		}
		sort.Strings(found)
		for _, f := range found {
			if err := c.addFile(f, strings.HasSuffix(f, ".jsonl")); err != nil {
				return nil, err
			}
		}
	}
	return c, nil
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
	tf := TextFile{Path: path}
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

// parseRecord reads one JSONL line: {"text": "..."} or {"input_ids": [...]}.
func parseRecord(line []byte) (string, []int, error) {
	var rec struct {
		Text *string `json:"text"`
		IDs  *[]int  `json:"input_ids"`
	}
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

// Sequence is a run of token ids from one document.
type Sequence struct {
	IDs    []int
	Source string
}

// Skipped is a document left out, and why.
type Skipped struct {
	Source string
	Tokens int
}

// Vocab checks token ids of pre-tokenized documents.
type Vocab interface{ VocabSize() int }

// chunkBytes is the size above which a document is tokenized in pieces cut
// at paragraph breaks: a huge document then costs memory by piece, not by
// its size.
const chunkBytes = 1 << 20

// EncodeOptions say how documents become sequences.
type EncodeOptions struct {
	MaxLength int // tokens per sequence; longer documents give several
	MinTokens int // documents with fewer tokens are skipped
	MaxTokens int // stop after this many tokens in all (0: no limit)
}

// Encode tokenizes docs in order (as HF's encode(text); pre-tokenized ones
// as they are) and cuts them into sequences of at most MaxLength tokens,
// stopping once MaxTokens tokens are reached. Documents with fewer than
// MinTokens tokens are skipped and reported.
func (c *Corpus) Encode(tok *tokenizer.Tokenizer, vocab int, docs []Doc, o EncodeOptions) ([]Sequence, []Skipped, error) {
	var seqs []Sequence
	var skipped []Skipped
	total := 0
	for _, d := range docs {
		if o.MaxTokens > 0 && total >= o.MaxTokens {
			break
		}
		ids, err := c.tokens(tok, vocab, d, o.MaxTokens-total)
		if err != nil {
			return nil, nil, err
		}
		if len(ids) < o.MinTokens || len(ids) == 0 {
			skipped = append(skipped, Skipped{d.Source, len(ids)})
			continue
		}
		if o.MaxTokens > 0 && total+len(ids) > o.MaxTokens {
			ids = ids[:o.MaxTokens-total]
		}
		total += len(ids)
		for start := 0; start < len(ids); start += o.MaxLength {
			seqs = append(seqs, Sequence{IDs: ids[start:min(start+o.MaxLength, len(ids))], Source: d.Source})
		}
	}
	return seqs, skipped, nil
}

// tokens returns a document's ids: at least want of them when it has that
// many (want <= 0: all). Documents over chunkBytes are tokenized a piece at
// a time, each piece ending after a blank line, until want tokens are there.
func (c *Corpus) tokens(tok *tokenizer.Tokenizer, vocab int, d Doc, want int) ([]int, error) {
	if !d.jsonl && d.n > chunkBytes {
		return c.streamTokens(tok, d, want)
	}
	doc, err := c.Load(d)
	if err != nil {
		return nil, err
	}
	if doc.Pre {
		for _, id := range doc.IDs {
			if id >= vocab {
				return nil, fmt.Errorf("texts: %s: token id %d is outside the model's vocabulary of %d", d.Source, id, vocab)
			}
		}
		return doc.IDs, nil
	}
	c.note([]byte(doc.Text))
	return tok.Encode(doc.Text), nil
}

// cutSlack is how far past chunkBytes a piece may run to end at a good
// place.
const cutSlack = 64 << 10

// streamTokens tokenizes a large text document a piece at a time, read from
// its file as it goes, until want tokens are there (want <= 0: all): memory
// follows the tokens asked for, not the document's size. Pieces end after
// a blank line where there is one within cutSlack of chunkBytes, else after
// a line break, else at a space, else between two characters.
func (c *Corpus) streamTokens(tok *tokenizer.Tokenizer, d Doc, want int) ([]int, error) {
	f, err := c.open(d.File)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(io.NewSectionReader(f.(io.ReaderAt), d.off, d.n), 1<<16) // *os.File, or stdin's *bytes.Reader
	var ids []int
	var carry []byte
	first := true
	for want <= 0 || len(ids) < want {
		size := chunkBytes // as much as a few tokens need, when few are wanted
		if want > 0 {
			size = min(size, max(cutSlack, 16*(want-len(ids))))
		}
		buf := make([]byte, max(size+cutSlack, len(carry)))
		copy(buf, carry)
		n, err := io.ReadFull(r, buf[len(carry):])
		buf = buf[:len(carry)+n]
		last := err == io.EOF || err == io.ErrUnexpectedEOF
		if err != nil && !last {
			return nil, fmt.Errorf("texts: %s: %w", d.Source, err)
		}
		if first {
			buf = trimBOM(buf, d.off)
		}
		cut := len(buf)
		if !last {
			cut = cutPoint(buf, min(size, len(buf)))
		}
		c.note(buf[:cut])
		if first {
			ids = tok.Encode(string(buf[:cut])) // the post-processor's tokens (BOS) once, at the start
			first = false
		} else {
			ids = append(ids, tok.EncodePlain(string(buf[:cut]))...)
		}
		carry = append([]byte(nil), buf[cut:]...)
		if last && len(carry) == 0 {
			break
		}
	}
	return ids, nil
}

// cutPoint is where a piece of b ends, at or after from: after the first
// blank line, else line break, else space at or after from; else at the
// first character boundary.
func cutPoint(b []byte, from int) int {
	rest := b[from:]
	for _, sep := range []string{"\n\n", "\n", " "} {
		if i := bytes.Index(rest, []byte(sep)); i >= 0 {
			return from + i + len(sep)
		}
	}
	for from < len(b) && !utf8.RuneStart(b[from]) {
		from++
	}
	return from
}

// Windows is held-out text cut into non-overlapping windows of SeqLen tokens.
type Windows struct {
	SeqLen  int
	Windows [][]int
	Files   []TextFile
	SHA256  string // over the files' sha256s, in order
	// Lines are the sampled lines of the text the windows were cut from
	// (see SharedText).
	Lines map[uint64]bool
}

// Tokens is the number of predicted tokens (SeqLen − 1 per window).
func (w *Windows) Tokens() int { return len(w.Windows) * (w.SeqLen - 1) }

// Info is the windows as a preset records them.
func (w *Windows) Info() EvalInfo {
	return EvalInfo{Texts: w.Files, SHA256: w.SHA256, SeqLen: w.SeqLen, Tokens: w.Tokens()}
}

// NewWindows encodes the corpus's documents in order, joins them with eos
// (when >= 0), and cuts non-overlapping windows of seqLen tokens (the
// remainder is dropped), at most maxTokens predicted tokens (0: all).
// Documents are read only as far as the windows need.
func (c *Corpus) NewWindows(tok *tokenizer.Tokenizer, vocab, eos, seqLen, maxTokens int) (*Windows, error) {
	if seqLen < 2 {
		return nil, fmt.Errorf("seq-len %d: at least 2", seqLen)
	}
	w := &Windows{SeqLen: seqLen, Files: c.Files, SHA256: c.SHA256(), Lines: map[uint64]bool{}}
	c.read = w.Lines
	defer func() { c.read = nil }()
	maxWindows := -1
	if maxTokens > 0 {
		maxWindows = maxTokens / (seqLen - 1)
		if maxWindows == 0 {
			return nil, fmt.Errorf("%w: --max-tokens %d is less than one window of --seq-len %d (%d predicted tokens)", ErrNoText, maxTokens, seqLen, seqLen-1)
		}
	}
	var stream []int
	seen := 0
	for _, d := range c.Docs {
		need := 0
		if maxWindows > 0 {
			need = (maxWindows-len(w.Windows))*seqLen - len(stream)
		}
		ids, err := c.tokens(tok, vocab, d, need)
		if err != nil {
			return nil, err
		}
		seen += len(ids)
		stream = append(stream, ids...)
		if eos >= 0 {
			stream = append(stream, eos)
		}
		for len(stream) >= seqLen && (maxWindows < 0 || len(w.Windows) < maxWindows) {
			w.Windows = append(w.Windows, append([]int(nil), stream[:seqLen]...))
			stream = stream[seqLen:]
		}
		if maxWindows > 0 && len(w.Windows) >= maxWindows {
			break
		}
	}
	if len(w.Windows) == 0 {
		return nil, fmt.Errorf("%w for evaluation: %d tokens, fewer than one window of --seq-len %d", ErrNoText, seen, seqLen)
	}
	return w, nil
}
