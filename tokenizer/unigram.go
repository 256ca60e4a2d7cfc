package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"unicode/utf8"
)

// unigram is HF's Unigram model (SentencePiece's): the segmentation of a
// word with the highest total log-probability (Viterbi), unknown characters
// as the unknown token (runs of them fused into one), and with byte_fallback
// an unknown run spelt as its <0xNN> byte tokens instead.
type unigram struct {
	vocab        map[string]int
	scores       []float64
	unk          int
	unkScore     float64 // the lowest score minus HF's penalty of 10
	byteFallback bool
	byteIDs      [256]int
	maxLen       int // longest token, in bytes

	mu    sync.Mutex
	cache map[string][]int
}

func parseUnigram(raw json.RawMessage) (*unigram, error) {
	var m struct {
		Vocab        []json.RawMessage `json:"vocab"`
		UnkID        *int              `json:"unk_id"`
		ByteFallback bool              `json:"byte_fallback"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("model Unigram: %w", err)
	}
	if len(m.Vocab) == 0 {
		return nil, errors.New("model Unigram: empty vocabulary")
	}
	if m.UnkID == nil {
		// HF fails to encode any character outside the vocabulary then.
		return nil, errors.New("model Unigram without unk_id is not supported")
	}
	u := &unigram{vocab: make(map[string]int, len(m.Vocab)), scores: make([]float64, len(m.Vocab)),
		unk: *m.UnkID, byteFallback: m.ByteFallback, cache: map[string][]int{}}
	if u.unk < 0 || u.unk >= len(m.Vocab) {
		return nil, fmt.Errorf("model Unigram: unk_id %d is not in the vocabulary of %d", u.unk, len(m.Vocab))
	}
	minScore := 0.0
	for id, entry := range m.Vocab {
		var pair [2]json.RawMessage
		var piece string
		if err := json.Unmarshal(entry, &pair); err != nil {
			return nil, fmt.Errorf("model Unigram: vocabulary entry %d is not [piece, score]", id)
		}
		if err := json.Unmarshal(pair[0], &piece); err != nil {
			return nil, fmt.Errorf("model Unigram: vocabulary entry %d: %w", id, err)
		}
		score, err := serdeFloat(bytes.TrimSpace(pair[1]))
		if err != nil {
			return nil, fmt.Errorf("model Unigram: vocabulary entry %d: score: %w", id, err)
		}
		u.vocab[piece] = id // a repeated piece keeps its last id, as HF's map does
		u.scores[id] = score
		if id == 0 || score < minScore {
			minScore = score
		}
		u.maxLen = max(u.maxLen, len(piece))
	}
	u.unkScore = minScore - 10
	u.byteIDs = byteTokenIDs(u.vocab)
	return u, nil
}

func (u *unigram) vocabulary() map[string]int { return u.vocab }

func (u *unigram) tokenize(word string, out []int) []int {
	if word == "" {
		return out
	}
	if len(word) > cacheMaxWord {
		return u.appendIDs(u.segment(word), out)
	}
	u.mu.Lock()
	ids, ok := u.cache[word]
	u.mu.Unlock()
	if !ok {
		ids = u.appendIDs(u.segment(word), nil)
		u.mu.Lock()
		if len(u.cache) >= cacheLimit {
			u.cache = map[string][]int{}
		}
		u.cache[word] = ids
		u.mu.Unlock()
	}
	return append(out, ids...)
}

// appendIDs maps the pieces of a segmentation to ids; a fused unknown run
// becomes its byte tokens with byte_fallback (when they all exist).
func (u *unigram) appendIDs(pieces []string, out []int) []int {
	for _, p := range pieces {
		if id, ok := u.vocab[p]; ok {
			out = append(out, id)
			continue
		}
		if u.byteFallback && u.hasBytes(p) {
			for i := 0; i < len(p); i++ {
				out = append(out, u.byteIDs[p[i]])
			}
			continue
		}
		out = append(out, u.unk)
	}
	return out
}

func (u *unigram) hasBytes(s string) bool {
	for i := 0; i < len(s); i++ {
		if u.byteIDs[s[i]] < 0 {
			return false
		}
	}
	return true
}

// segment is HF's Unigram::encode_optimized: the best path over byte
// positions, candidates at each character start in order of increasing
// length (a strictly better score replaces the one found first), an
// unknown-token edge over a character no single-character piece covers,
// and runs of unknown pieces fused.
func (u *unigram) segment(s string) []string {
	type node struct {
		id    int
		score float64
		start int // -1: unreached
	}
	best := make([]node, len(s)+1)
	for i := range best {
		best[i].start = -1
	}
	for start := 0; start < len(s); {
		_, mblen := utf8.DecodeRuneInString(s[start:])
		here := best[start].score
		single := false
		for n := 1; n <= u.maxLen && start+n <= len(s); n++ {
			id, ok := u.vocab[s[start:start+n]]
			if !ok {
				continue
			}
			t := &best[start+n]
			if cand := here + u.scores[id]; t.start < 0 || cand > t.score {
				*t = node{id: id, score: cand, start: start}
			}
			if n == mblen {
				single = true
			}
		}
		if !single {
			t := &best[start+mblen]
			if cand := here + u.unkScore; t.start < 0 || cand > t.score {
				*t = node{id: u.unk, score: cand, start: start}
			}
		}
		start += mblen
	}
	var pieces []string
	unkEnd := -1 // end of the unknown run being fused, walking backwards
	for end := len(s); end > 0; {
		nd := best[end]
		if nd.id == u.unk {
			if unkEnd < 0 {
				unkEnd = end
			}
		} else {
			if unkEnd >= 0 {
				pieces = append(pieces, s[end:unkEnd])
				unkEnd = -1
			}
			pieces = append(pieces, s[nd.start:end])
		}
		end = nd.start
	}
	if unkEnd >= 0 {
		pieces = append(pieces, s[:unkEnd])
	}
	for i, j := 0, len(pieces)-1; i < j; i, j = i+1, j-1 {
		pieces[i], pieces[j] = pieces[j], pieces[i]
	}
	return pieces
}

// pow10 is 1e0 … 1e308 as float64 literals (correctly rounded).
var pow10 = func() (t [309]float64) {
	for i := range t {
		t[i], _ = strconv.ParseFloat("1e"+strconv.Itoa(i), 64)
	}
	return t
}()

// serdeFloat parses a JSON number as serde_json (without its float_roundtrip
// feature, as HF tokenizers builds it) does: the decimal digits as a uint64
// significand (digits past its range ignored), then one multiplication or
// division by a power of ten. That is not always the nearest float64, and
// Unigram's Viterbi compares sums of scores, so near-ties are decided by
// these last bits: kvtorch must read the same scores HF reads.
func serdeFloat(raw []byte) (float64, error) {
	s := string(raw)
	bad := fmt.Errorf("not a number: %q", s)
	i, neg := 0, false
	if i < len(s) && s[i] == '-' {
		neg, i = true, i+1
	}
	digit := func() (uint64, bool) {
		if i < len(s) && s[i] >= '0' && s[i] <= '9' {
			return uint64(s[i] - '0'), true
		}
		return 0, false
	}
	const maxU = ^uint64(0)
	overflows := func(sig, d uint64) bool { return sig > maxU/10 || sig == maxU/10 && d > maxU%10 }
	var sig uint64
	exp := 0
	integer, full := true, true
	if _, ok := digit(); !ok {
		return 0, bad
	}
	for d, ok := digit(); ok; d, ok = digit() {
		if full && overflows(sig, d) {
			full = false
		}
		if full {
			sig = sig*10 + d
		} else {
			exp++
		}
		i++
	}
	if i < len(s) && s[i] == '.' {
		integer = false
		i++
		if _, ok := digit(); !ok {
			return 0, bad
		}
		for d, ok := digit(); ok; d, ok = digit() {
			if full && overflows(sig, d) {
				full = false
			}
			if full {
				sig = sig*10 + d
				exp--
			}
			i++
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		integer = false
		i++
		expNeg := false
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			expNeg, i = s[i] == '-', i+1
		}
		if _, ok := digit(); !ok {
			return 0, bad
		}
		e := 0
		for d, ok := digit(); ok; d, ok = digit() {
			if e > (1<<31-1-int(d))/10 { // serde_json: exponent overflow
				if sig != 0 && !expNeg {
					return 0, fmt.Errorf("number out of range: %q", s)
				}
				if neg {
					return math.Copysign(0, -1), nil
				}
				return 0, nil
			}
			e = e*10 + int(d)
			i++
		}
		if expNeg {
			exp -= e
		} else {
			exp += e
		}
	}
	if i != len(s) {
		return 0, bad
	}
	if integer && full && (!neg || sig <= 1<<63) { // an integer: converted as i64/u64 `as f64`
		f := float64(sig)
		if neg {
			f = -f
		}
		return f, nil
	}
	f := float64(sig)
	for {
		a := exp
		if a < 0 {
			a = -a
		}
		if a < len(pow10) {
			if exp >= 0 {
				f *= pow10[a]
				if math.IsInf(f, 0) {
					return 0, fmt.Errorf("number out of range: %q", s)
				}
			} else {
				f /= pow10[a]
			}
			break
		}
		if f == 0 {
			break
		}
		if exp >= 0 {
			return 0, fmt.Errorf("number out of range: %q", s)
		}
		f /= 1e308
		exp += 308
	}
	if neg {
		f = -f
	}
	return f, nil
}
