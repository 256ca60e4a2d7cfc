package tokenizer

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// addedToken is an entry of tokenizer.json's added_tokens.
type addedToken struct {
	ID         int    `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

// segment is a piece of input text: either an added token (id >= 0) or text
// for the normalizer, pre-tokenizer and model.
type segment struct {
	text  string
	id    int
	start int // byte offset in the text split
}

// addedMatcher finds added tokens in text, leftmost-longest and
// non-overlapping, as HF's Aho-Corasick matcher does.
type addedMatcher struct {
	byFirst map[byte][]addedToken // candidates by first byte, longest first
}

func newAddedMatcher(tokens []addedToken) *addedMatcher {
	m := &addedMatcher{byFirst: map[byte][]addedToken{}}
	for _, t := range tokens {
		if t.Content == "" {
			continue
		}
		m.byFirst[t.Content[0]] = append(m.byFirst[t.Content[0]], t)
	}
	for k, ts := range m.byFirst {
		for i := 1; i < len(ts); i++ { // insertion sort by length, longest first (stable)
			for j := i; j > 0 && len(ts[j].Content) > len(ts[j-1].Content); j-- {
				ts[j], ts[j-1] = ts[j-1], ts[j]
			}
		}
		m.byFirst[k] = ts
	}
	return m
}

// isWordRune is HF's word character for single_word added tokens: Rust's
// char::is_alphanumeric (Alphabetic or Numeric) or '_'.
func isWordRune(r rune) bool {
	return unicode.IsLetter(r) || unicode.Is(unicode.Nl, r) || unicode.Is(unicode.Other_Alphabetic, r) || isNumeric(r) || r == '_'
}

// split cuts text into segments around the added tokens it contains.
func (m *addedMatcher) split(text string, out []segment) []segment {
	if m == nil || len(m.byFirst) == 0 {
		return append(out, segment{text, -1, 0})
	}
	prev := 0 // end of the last emitted piece
	for i := 0; i < len(text); {
		cands := m.byFirst[text[i]]
		var hit *addedToken
		for k := range cands {
			if strings.HasPrefix(text[i:], cands[k].Content) {
				hit = &cands[k]
				break
			}
		}
		if hit == nil {
			i++
			continue
		}
		start, stop := i, i+len(hit.Content)
		if hit.SingleWord {
			before, _ := utf8.DecodeLastRuneInString(text[:start])
			after, _ := utf8.DecodeRuneInString(text[stop:])
			if (start > 0 && isWordRune(before)) || (stop < len(text) && isWordRune(after)) {
				i++
				continue
			}
		}
		if hit.LStrip {
			for start > prev {
				r, n := utf8.DecodeLastRuneInString(text[:start])
				if !unicode.IsSpace(r) {
					break
				}
				start -= n
			}
		}
		if hit.RStrip {
			for stop < len(text) {
				r, n := utf8.DecodeRuneInString(text[stop:])
				if !unicode.IsSpace(r) {
					break
				}
				stop += n
			}
		}
		if start > prev {
			out = append(out, segment{text[prev:start], -1, prev})
		}
		out = append(out, segment{hit.Content, hit.ID, start})
		prev, i = stop, stop
	}
	if prev < len(text) {
		out = append(out, segment{text[prev:], -1, prev})
	}
	return out
}
