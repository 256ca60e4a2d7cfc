package tokenizer

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
)

type vectorSet struct {
	Tokenizer string  `json:"tokenizer"`
	Cases     [][]any `json:"cases"` // [text, [ids...]]
}

var (
	vectorsOnce sync.Once
	vectors     map[string]vectorSet
	vectorsErr  error
)

// loadVectors runs testdata/vectors.py once (HF tokenizers in the project's
// venv) and returns its test vectors.
func loadVectors(t *testing.T) map[string]vectorSet {
	py := os.Getenv("KVTORCH_PYTHON")
	if py == "" {
		t.Skip("KVTORCH_PYTHON is not set: test vectors need HuggingFace tokenizers (run `make test`)")
	}
	vectorsOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tokvectors")
		if err != nil {
			vectorsErr = err
			return
		}
		ref, _ := filepath.Abs("../testdata/refmodel.tokenizer.json")
		out, err := exec.Command(py, "testdata/vectors.py", dir, ref).CombinedOutput()
		if err != nil {
			vectorsErr = fmt.Errorf("vectors.py: %v\n%s", err, out)
			return
		}
		b, err := os.ReadFile(filepath.Join(dir, "vectors.json"))
		if err != nil {
			vectorsErr = err
			return
		}
		vectorsErr = json.Unmarshal(b, &vectors)
	})
	if vectorsErr != nil {
		t.Fatal(vectorsErr)
	}
	return vectors
}

func TestMatchesHuggingFace(t *testing.T) {
	vs := loadVectors(t)
	names := make([]string, 0, len(vs))
	for name := range vs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		set := vs[name]
		t.Run(name, func(t *testing.T) {
			tok, err := LoadFile(set.Tokenizer)
			if err != nil {
				t.Fatal(err)
			}
			bad := 0
			for _, c := range set.Cases {
				text := c[0].(string)
				var want []int
				for _, x := range c[1].([]any) {
					want = append(want, int(x.(float64)))
				}
				got := tok.Encode(text)
				if !slices.Equal(got, want) {
					bad++
					if bad <= 5 {
						t.Errorf("%q:\n got  %v\n want %v", text, got, want)
					}
				}
			}
			if bad > 0 {
				t.Errorf("%d of %d strings differ", bad, len(set.Cases))
			} else {
				t.Logf("%d strings, every id equal", len(set.Cases))
			}
		})
	}
}

func TestDecodeRoundTrip(t *testing.T) {
	vs := loadVectors(t)
	tok, err := LoadFile(vs["gpt2"].Tokenizer)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range vs["gpt2"].Cases[:500] {
		text := c[0].(string)
		if got := tok.Decode(tok.Encode(text)); got != text {
			t.Fatalf("Decode(Encode(%q)) = %q", text, got)
		}
	}
}

func TestUnsupportedComponents(t *testing.T) {
	base := `{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}`
	cases := map[string]string{
		`{"model": {"type": "Unigram", "vocab": []}}`:                                                       `model "Unigram"`,
		`{"model": {"type": "WordPiece", "vocab": {}}}`:                                                     `model "WordPiece"`,
		base + `, "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "_"}}`:           `normalizer "Replace"`,
		base + `, "pre_tokenizer": {"type": "Metaspace", "replacement": "_"}}`:                              `pre_tokenizer "Metaspace"`,
		base + `, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Contiguous"}}`: `behavior "Contiguous"`,
		base + `, "post_processor": {"type": "BertProcessing"}}`:                                            `post_processor "BertProcessing"`,
		base + `, "decoder": {"type": "WordPiece"}}`:                                                        `decoder "WordPiece"`,
		`{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "byte_fallback": true}}`:                "byte_fallback",
		`{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}}`:                                  "not in the vocabulary",
		`not json`: "not a tokenizer.json",
	}
	for in, want := range cases {
		_, err := Load([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want an error naming %s", in, err, want)
		}
	}
	if _, err := Load([]byte(base + "}")); err != nil {
		t.Fatalf("minimal BPE: %v", err)
	}
}

func TestConcurrentEncode(t *testing.T) {
	vs := loadVectors(t)
	set := vs["qwen2"]
	tok, err := LoadFile(set.Tokenizer)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for _, c := range set.Cases[g*100 : g*100+100] {
				want := make([]int, 0)
				for _, x := range c[1].([]any) {
					want = append(want, int(x.(float64)))
				}
				if got := tok.Encode(c[0].(string)); !slices.Equal(got, want) {
					t.Errorf("goroutine %d: %q differs", g, c[0])
					return
				}
			}
		}(g)
	}
	wg.Wait()
}
