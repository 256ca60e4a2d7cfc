package tokenizer

import (
	"container/heap"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"
)

// bpe is HF's BPE model: byte-level tokenizers (every byte has a token) and
// SentencePiece-style ones (characters, with <0xNN> byte tokens as fallback
// and an unknown token).
type bpe struct {
	vocab        map[string]int
	merges       map[[2]int]merge // pair of ids -> rank and merged id
	ignoreMerges bool
	unk          int // -1: none (unknown characters are dropped, as HF does)
	fuseUnk      bool
	byteFallback bool
	byteIDs      [256]int // id of <0xNN>, or -1

	mu    sync.Mutex
	cache map[string][]int
}

type merge struct{ rank, id int }

const (
	cacheLimit = 50000
	// cacheMaxWord is the longest word cached (HF's MAX_LENGTH, in bytes
	// here): SentencePiece-style tokenizers without a pre-tokenizer pass
	// whole paragraphs as one word.
	cacheMaxWord = 256
)

func parseBPE(raw json.RawMessage) (*bpe, error) {
	var m struct {
		Vocab                   map[string]int  `json:"vocab"`
		Merges                  json.RawMessage `json:"merges"`
		UnkToken                *string         `json:"unk_token"`
		ContinuingSubwordPrefix *string         `json:"continuing_subword_prefix"`
		EndOfWordSuffix         *string         `json:"end_of_word_suffix"`
		FuseUnk                 bool            `json:"fuse_unk"`
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
	case m.Dropout != nil && *m.Dropout > 0:
		return nil, fmt.Errorf("model BPE with dropout is not supported")
	}
	b := &bpe{vocab: m.Vocab, merges: map[[2]int]merge{}, ignoreMerges: m.IgnoreMerges, unk: -1,
		fuseUnk: m.FuseUnk, byteFallback: m.ByteFallback, cache: map[string][]int{}}
	if m.UnkToken != nil {
		id, ok := m.Vocab[*m.UnkToken]
		if !ok {
			return nil, fmt.Errorf("model BPE: unk_token %q is not in the vocabulary", *m.UnkToken)
		}
		b.unk = id
	}
	b.byteIDs = byteTokenIDs(m.Vocab)
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

// byteTokenIDs finds the byte-fallback tokens <0x00> … <0xFF> of a vocabulary.
func byteTokenIDs(vocab map[string]int) [256]int {
	var ids [256]int
	for i := range ids {
		id, ok := vocab[fmt.Sprintf("<0x%02X>", i)]
		if !ok {
			id = -1
		}
		ids[i] = id
	}
	return ids
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

func (b *bpe) vocabulary() map[string]int { return b.vocab }

// tokenize appends the ids of one pre-tokenized word.
func (b *bpe) tokenize(word string, out []int) []int {
	if b.ignoreMerges {
		if id, ok := b.vocab[word]; ok {
			return append(out, id)
		}
	}
	if len(word) > cacheMaxWord {
		return append(out, b.merge(word)...)
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

// symbols turns word into its initial symbols as HF's BPE::merge_word does:
// a character's token; else its bytes' <0xNN> tokens (byte_fallback, when
// all exist); else the unknown token, runs of which fuse into one with
// fuse_unk; else nothing. As in HF, a pending unknown token is emitted only
// when the next known character (not a byte fallback) arrives, or at the end.
func (b *bpe) symbols(word string) []int {
	syms := make([]int, 0, utf8.RuneCountInString(word))
	pendingUnk := false
	for i := 0; i < len(word); {
		_, size := utf8.DecodeRuneInString(word[i:])
		ch := word[i : i+size]
		i += size
		if id, ok := b.vocab[ch]; ok {
			if pendingUnk {
				syms = append(syms, b.unk)
				pendingUnk = false
			}
			syms = append(syms, id)
			continue
		}
		if b.byteFallback && b.hasBytes(ch) {
			for j := 0; j < len(ch); j++ {
				syms = append(syms, b.byteIDs[ch[j]])
			}
			continue
		}
		if b.unk < 0 {
			continue
		}
		if pendingUnk && !b.fuseUnk {
			syms = append(syms, b.unk)
		}
		pendingUnk = true
	}
	if pendingUnk {
		syms = append(syms, b.unk)
	}
	return syms
}

func (b *bpe) hasBytes(s string) bool {
	for i := 0; i < len(s); i++ {
		if b.byteIDs[s[i]] < 0 {
			return false
		}
	}
	return true
}

// merge applies the merges to the symbols of word, lowest rank first and
// leftmost first among equal ranks, with HF's priority queue (Word::merge_all):
// O(n log n), so a paragraph passed as one word is quick.
func (b *bpe) merge(word string) []int {
	syms := b.symbols(word)
	if len(syms) < 2 {
		return syms
	}
	n := len(syms)
	prev := make([]int, n)
	next := make([]int, n)
	alive := make([]bool, n)
	for i := range syms {
		prev[i], next[i], alive[i] = i-1, i+1, true
	}
	next[n-1] = -1
	q := make(mergeQueue, 0, n)
	for i := 0; i+1 < n; i++ {
		if m, ok := b.merges[[2]int{syms[i], syms[i+1]}]; ok {
			q = append(q, pendingMerge{pos: i, rank: m.rank, id: m.id})
		}
	}
	heap.Init(&q)
	for q.Len() > 0 {
		top := heap.Pop(&q).(pendingMerge)
		if !alive[top.pos] || next[top.pos] < 0 {
			continue
		}
		right := next[top.pos]
		if m, ok := b.merges[[2]int{syms[top.pos], syms[right]}]; !ok || m.id != top.id {
			continue // stale: one side has merged since
		}
		syms[top.pos] = top.id
		alive[right] = false
		next[top.pos] = next[right]
		if next[right] >= 0 {
			prev[next[right]] = top.pos
		}
		if p := prev[top.pos]; p >= 0 {
			if m, ok := b.merges[[2]int{syms[p], syms[top.pos]}]; ok {
				heap.Push(&q, pendingMerge{pos: p, rank: m.rank, id: m.id})
			}
		}
		if nx := next[top.pos]; nx >= 0 {
			if m, ok := b.merges[[2]int{syms[top.pos], syms[nx]}]; ok {
				heap.Push(&q, pendingMerge{pos: top.pos, rank: m.rank, id: m.id})
			}
		}
	}
	out := syms[:0]
	for i, id := range syms {
		if alive[i] {
			out = append(out, id)
		}
	}
	return out
}

// pendingMerge is a merge of the symbol at pos with its right neighbour.
type pendingMerge struct{ pos, rank, id int }

// mergeQueue orders merges by rank, then position (a min-heap).
type mergeQueue []pendingMerge

func (q mergeQueue) Len() int { return len(q) }
func (q mergeQueue) Less(i, j int) bool {
	if q[i].rank != q[j].rank {
		return q[i].rank < q[j].rank
	}
	return q[i].pos < q[j].pos
}
func (q mergeQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *mergeQueue) Push(x any)   { *q = append(*q, x.(pendingMerge)) }
func (q *mergeQueue) Pop() any {
	old := *q
	x := old[len(old)-1]
	*q = old[:len(old)-1]
	return x
}
