package calibration

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/kvtorch/kvtorch/tokenizer"
)

// Text is one document of calibration or evaluation text.
type Text struct {
	Source string // file path, "path:line" for JSONL, or "-" for stdin
	File   string // the file it came from
	Text   string
}

// TextFile describes one input file: its path, sha256 and documents.
type TextFile struct {
	Path      string `json:"path"`
	SHA256    string `json:"sha256"`
	Documents int    `json:"documents"`
}

// ReadTexts reads documents from files, folders (recursively: *.txt, and
// *.jsonl with a "text" field per line) and "-" (stdin, one document).
func ReadTexts(paths []string, stdin io.Reader) ([]Text, []TextFile, error) {
	var texts []Text
	var files []TextFile
	add := func(path string, data []byte) error {
		sum := sha256.Sum256(data)
		tf := TextFile{Path: path, SHA256: hex.EncodeToString(sum[:])}
		if strings.HasSuffix(path, ".jsonl") {
			sc := bufio.NewScanner(bytes.NewReader(data))
			sc.Buffer(make([]byte, 1<<20), 1<<30)
			for line := 1; sc.Scan(); line++ {
				if len(bytes.TrimSpace(sc.Bytes())) == 0 {
					continue
				}
				var rec struct {
					Text *string `json:"text"`
				}
				if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
					return fmt.Errorf("texts: %s:%d: not JSON: %v", path, line, err)
				}
				if rec.Text == nil {
					return fmt.Errorf("texts: %s:%d: no \"text\" field", path, line)
				}
				texts = append(texts, Text{Source: fmt.Sprintf("%s:%d", path, line), File: path, Text: *rec.Text})
				tf.Documents++
			}
			if err := sc.Err(); err != nil {
				return fmt.Errorf("texts: %s: %w", path, err)
			}
		} else {
			texts = append(texts, Text{Source: path, File: path, Text: string(data)})
			tf.Documents = 1
		}
		files = append(files, tf)
		return nil
	}
	for _, p := range paths {
		if p == "-" {
			data, err := io.ReadAll(stdin)
			if err != nil {
				return nil, nil, fmt.Errorf("texts: stdin: %w", err)
			}
			if err := add("-", data); err != nil {
				return nil, nil, err
			}
			continue
		}
		st, err := os.Stat(p)
		if err != nil {
			return nil, nil, fmt.Errorf("texts: %w", err)
		}
		if !st.IsDir() {
			data, err := os.ReadFile(p)
			if err != nil {
				return nil, nil, fmt.Errorf("texts: %w", err)
			}
			if err := add(p, data); err != nil {
				return nil, nil, err
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
			return nil, nil, fmt.Errorf("texts: %w", err)
		}
		sort.Strings(found)
		for _, f := range found {
			data, err := os.ReadFile(f)
			if err != nil {
				return nil, nil, fmt.Errorf("texts: %w", err)
			}
			if err := add(f, data); err != nil {
				return nil, nil, err
			}
		}
	}
	return texts, files, nil
}

// Sample returns n documents chosen with seed (all of them, shuffled, when n
// <= 0 or n >= len(texts)).
func Sample(texts []Text, n int, seed uint64) []Text {
	out := append([]Text(nil), texts...)
	rng := rand.New(rand.NewPCG(seed, 0x6b76746f726368))
	rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	if n > 0 && n < len(out) {
		out = out[:n]
	}
	return out
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

// Encode tokenizes each document (as HF's encode(text)) and cuts it into
// sequences of at most maxLength tokens. Documents with fewer than minTokens
// tokens are skipped and reported.
func Encode(tok *tokenizer.Tokenizer, texts []Text, maxLength, minTokens int) ([]Sequence, []Skipped) {
	var seqs []Sequence
	var skipped []Skipped
	for _, t := range texts {
		ids := tok.Encode(t.Text)
		if len(ids) < minTokens || len(ids) == 0 {
			skipped = append(skipped, Skipped{t.Source, len(ids)})
			continue
		}
		for start := 0; start < len(ids); start += maxLength {
			end := min(start+maxLength, len(ids))
			seqs = append(seqs, Sequence{IDs: ids[start:end], Source: t.Source})
		}
	}
	return seqs, skipped
}
