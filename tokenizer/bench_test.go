package tokenizer

import (
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkEncode encodes the reference model's evaluation texts with its
// tokenizer (when present).
func BenchmarkEncode(b *testing.B) {
	tok, err := LoadFile("../testdata/refmodel.tokenizer.json")
	if err != nil {
		b.Skip("reference tokenizer not present:", err)
	}
	files, _ := filepath.Glob("../testdata/eval/*.txt")
	var docs []string
	n := 0
	for _, f := range files {
		d, _ := os.ReadFile(f)
		docs = append(docs, string(d))
		n += len(d)
	}
	b.SetBytes(int64(n))
	for i := 0; i < b.N; i++ {
		for _, d := range docs {
			tok.Encode(d)
		}
	}
}
