package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"
)

// bpe is HF's BPE model as byte-level tokenizers use it.
type bpe struct {
	vocab        map[string]int
	merges       map[[2]int]merge // pair of ids -> rank and merged id
	ignoreMerges bool
	unk          int // -1: none (unknown characters are dropped, as HF does)

	mu    sync.Mutex
	cache map[string][]int
}

type merge struct{ rank, id int }

const cacheLimit = 50000

func parseBPE(raw json.RawMessage) (*bpe, error) {
	var kind component
	if err := json.Unmarshal(raw, &kind); err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	if kind.Type != "BPE" && kind.Type != "" {
		return nil, fmt.Errorf("model %q is not supported (supported: BPE)", kind.Type)
	}
	var m struct {
		Vocab                   map[string]int  `json:"vocab"`
		Merges                  json.RawMessage `json:"merges"`
		UnkToken                *string         `json:"unk_token"`
		ContinuingSubwordPrefix *string         `json:"continuing_subword_prefix"`
		EndOfWordSuffix         *string         `json:"end_of_word_suffix"`
		ByteFallback            bool            `json:"byte_fallback"`
		Dropout                 *float64        `json:"dropout"`
		IgnoreMerges            bool            `json:"ignore_merges"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	switch {
	case m.ContinuingSubwordPrefix != nil && *m.ContinuingSubwordPrefix != "":
		return nil, fmt.Errorf("model BPE with continuing_subword_prefix is not supported")
	case m.EndOfWordSuffix != nil && *m.EndOfWordSuffix != "":
		return nil, fmt.Errorf("model BPE with end_of_word_suffix is not supported")
	case m.ByteFallback:
		return nil, fmt.Errorf("model BPE with byte_fallback is not supported (SentencePiece-style tokenizers are not byte-level)")
	case m.Dropout != nil && *m.Dropout > 0:
		return nil, fmt.Errorf("model BPE with dropout is not supported")
	}
	b := &bpe{vocab: m.Vocab, merges: map[[2]int]merge{}, ignoreMerges: m.IgnoreMerges, unk: -1, cache: map[string][]int{}}
	if m.UnkToken != nil {
		id, ok := m.Vocab[*m.UnkToken]
		if !ok {
			return nil, fmt.Errorf("model BPE: unk_token %q is not in the vocabulary", *m.UnkToken)
		}
		b.unk = id
	}
	pairs, err := parseMerges(m.Merges)
	if err != nil {
		return nil, err
	}
	for rank, p := range pairs {
		a, ok1 := m.Vocab[p[0]]
		c, ok2 := m.Vocab[p[1]]
		id, ok3 := m.Vocab[p[0]+p[1]]
		if !ok1 || !ok2 || !ok3 {
			return nil, fmt.Errorf("model BPE: merge %d (%q %q) uses tokens that are not in the vocabulary", rank, p[0], p[1])
		}
		if _, dup := b.merges[[2]int{a, c}]; !dup {
			b.merges[[2]int{a, c}] = merge{rank, id}
		}
	}
	return b, nil
}

// parseMerges reads merges as ["a b", ...] (older files) or [["a", "b"], ...].
func parseMerges(raw json.RawMessage) ([][2]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var asPairs [][2]string
	if err := json.Unmarshal(raw, &asPairs); err == nil {
		return asPairs, nil
	}
	var asStrings []string
	if err := json.Unmarshal(raw, &asStrings); err != nil {
		return nil, fmt.Errorf("model BPE: merges are neither strings nor pairs: %w", err)
	}
	out := make([][2]string, len(asStrings))
	for i, s := range asStrings {
		a, b, ok := strings.Cut(s, " ")
		if !ok {
			return nil, fmt.Errorf("model BPE: merge %d %q is not two tokens", i, s)
		}
		out[i] = [2]string{a, b}
	}
	return out, nil
}

// tokenize appends the ids of one pre-tokenized word.
func (b *bpe) tokenize(word string, out []int) []int {
	if b.ignoreMerges {
		if id, ok := b.vocab[word]; ok {
			return append(out, id)
		}
	}
	b.mu.Lock()
	ids, ok := b.cache[word]
	b.mu.Unlock()
	if ok {
		return append(out, ids...)
	}
	ids = b.merge(word)
	b.mu.Lock()
	if len(b.cache) >= cacheLimit {
		b.cache = map[string][]int{}
	}
	b.cache[word] = ids
	b.mu.Unlock()
	return append(out, ids...)
}

// merge applies the merges to the characters of word, lowest rank first
// (leftmost first among equal ranks), as HF's BPE does.
func (b *bpe) merge(word string) []int {
	syms := make([]int, 0, utf8.RuneCountInString(word))
	for i, r := range word {
		if id, ok := b.vocab[word[i:i+utf8.RuneLen(r)]]; ok {
			syms = append(syms, id)
		} else if b.unk >= 0 {
			syms = append(syms, b.unk)
		}
	}
	for len(syms) > 1 {
		best, at := merge{rank: -1}, -1
		for i := 0; i+1 < len(syms); i++ {
			if m, ok := b.merges[[2]int{syms[i], syms[i+1]}]; ok && (at < 0 || m.rank < best.rank) {
				best, at = m, i
			}
		}
		if at < 0 {
			break
		}
		syms[at] = best.id
		syms = append(syms[:at+1], syms[at+2:]...)
	}
	return syms
}
