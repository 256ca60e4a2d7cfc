package tokenizer

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
)

type vectorSet struct {
	Tokenizer string  `json:"tokenizer"`
	Cases     [][]any `json:"cases"` // [text, [ids...], HF's decode(ids)]
}

// ids returns the ids of a case.
func caseIDs(c []any) []int {
	want := []int{}
	for _, x := range c[1].([]any) {
		want = append(want, int(x.(float64)))
	}
	return want
}

var (
	vectorsOnce sync.Once
	vectors     map[string]vectorSet
	vectorsDir  string
	vectorsErr  error
)

// loadVectors runs testdata/vectors.py once (HF tokenizers in the project's
// venv) and returns its test vectors. The real model's tokenizer.json is
// included when `make real-model` has made it (KVTORCH_REAL_MODEL_DIR).
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
		vectorsDir = dir
		ref, _ := filepath.Abs("../testdata/refmodel.tokenizer.json")
		args := []string{"testdata/vectors.py", dir, ref}
		if real := os.Getenv("KVTORCH_REAL_MODEL_DIR"); real != "" {
			args = append(args, filepath.Join(real, "tokenizer.json"))
		}
		out, err := exec.Command(py, args...).CombinedOutput()
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
				want := caseIDs(c)
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

// TestDecodeMatchesHuggingFace checks Decode against HF's decode(ids) on the
// ids of every vector: the decoders (ByteLevel, ByteFallback, Fuse, Strip,
// Replace, Metaspace, Sequence) and the special-token filter.
func TestDecodeMatchesHuggingFace(t *testing.T) {
	vs := loadVectors(t)
	for name, set := range vs {
		t.Run(name, func(t *testing.T) {
			tok, err := LoadFile(set.Tokenizer)
			if err != nil {
				t.Fatal(err)
			}
			bad := 0
			for _, c := range set.Cases {
				want := c[2].(string)
				if got := tok.Decode(caseIDs(c)); got != want {
					bad++
					if bad <= 5 {
						t.Errorf("Decode of %q:\n got  %q\n want %q", c[0], got, want)
					}
				}
			}
			if bad > 0 {
				t.Errorf("%d of %d decodes differ", bad, len(set.Cases))
			}
		})
	}
}

// TestSerdeFloat checks that Unigram scores are read as HF reads them
// (serde_json's parser): for every decimal string, the float64 HF holds.
func TestSerdeFloat(t *testing.T) {
	loadVectors(t)
	b, err := os.ReadFile(filepath.Join(vectorsDir, "serde_floats.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cases [][2]string
	if err := json.Unmarshal(b, &cases); err != nil {
		t.Fatal(err)
	}
	nearest := 0
	for _, c := range cases {
		want, err := strconv.ParseFloat(c[1], 64)
		if err != nil {
			t.Fatal(err)
		}
		got, err := serdeFloat([]byte(c[0]))
		if err != nil || got != want {
			t.Errorf("serdeFloat(%s) = %v, %v; HF holds %v", c[0], got, err, want)
		}
		if n, _ := strconv.ParseFloat(c[0], 64); n != want {
			nearest++
		}
	}
	t.Logf("%d numbers; HF's value is not the nearest float64 for %d of them", len(cases), nearest)
	for _, bad := range []string{"", "-", "1.", ".5", "1e", "--1", "1x", "1e999"} {
		if _, err := serdeFloat([]byte(bad)); err == nil {
			t.Errorf("serdeFloat(%q): no error", bad)
		}
	}
}

func TestUnsupportedComponents(t *testing.T) {
	base := `{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}`
	cases := map[string]string{
		`{"model": {"type": "Unigram", "vocab": []}}`:                                                         `Unigram: empty vocabulary`,
		`{"model": {"type": "Unigram", "vocab": [["a", -1.0]]}}`:                                              `without unk_id`,
		`{"model": {"type": "WordPiece", "vocab": {}}}`:                                                       `model "WordPiece"`,
		base + `, "normalizer": {"type": "Precompiled", "precompiled_charsmap": "AA=="}}`:                     `normalizer Precompiled`,
		base + `, "normalizer": {"type": "BertNormalizer"}}`:                                                  `normalizer "BertNormalizer"`,
		base + `, "pre_tokenizer": {"type": "Metaspace", "replacement": "_", "prepend_scheme": "sometimes"}}`: `prepend_scheme "sometimes"`,
		base + `, "pre_tokenizer": {"type": "Whitespace"}}`:                                                   `pre_tokenizer "Whitespace"`,
		base + `, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Contiguous"}}`:   `behavior "Contiguous"`,
		base + `, "post_processor": {"type": "BertProcessing"}}`:                                              `post_processor "BertProcessing"`,
		base + `, "decoder": {"type": "WordPiece"}}`:                                                          `decoder "WordPiece"`,
		`{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "unk_token": "<unk>"}}`:                   `unk_token "<unk>" is not in the vocabulary`,
		`{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}}`:                                    "not in the vocabulary",
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
				want := caseIDs(c)
				if got := tok.Encode(c[0].(string)); !slices.Equal(got, want) {
					t.Errorf("goroutine %d: %q differs", g, c[0])
					return
				}
			}
		}(g)
	}
	wg.Wait()
}
