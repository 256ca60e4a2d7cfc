package tokenizer

import (
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
)

// TestFastMatchersEqualRegexp2 checks the hand-written matchers against the
// regex engine on the test vectors' strings and on random strings built from
// the characters that matter to these patterns.
func TestFastMatchersEqualRegexp2(t *testing.T) {
	var texts []string
	if os.Getenv("KVTORCH_PYTHON") != "" {
		for _, c := range loadVectors(t)["gpt2"].Cases {
			texts = append(texts, c[0].(string))
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	pieces := []string{" ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "'", "'s", "'S", "'ll", "'Re", "'d", "a", "Zé",
		"日本", "1", "23", "456", "٣", "Ⅻ", "!", "?!", ".", "_", "😀", "\u0301", "x\u0308", "-", "\"", "\v", "\f", "\u0085"}
	for n := 0; n < 5000; n++ {
		var sb strings.Builder
		for k := rng.IntN(12); k >= 0; k-- {
			sb.WriteString(pieces[rng.IntN(len(pieces))])
		}
		texts = append(texts, sb.String())
	}
	for name, pattern := range map[string]string{"gpt2": gpt2Pattern, "llama3": llama3Pattern, "qwen2": qwen2Pattern} {
		slow, err := regexp2Matcher(pattern)
		if err != nil {
			t.Fatal(err)
		}
		fast := fastMatcher(pattern)
		for _, s := range texts {
			if got, want := fast(s), slow(s); !slices.Equal(got, want) {
				t.Fatalf("%s on %q:\n fast   %v\n regexp %v", name, s, got, want)
			}
		}
	}
}
