package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Tokenizer encodes text as a HuggingFace tokenizer.json describes. It is
// safe for concurrent use.
type Tokenizer struct {
	normalize   normalizer
	preTok      []preTokenizer
	model       *bpe
	rawAdded    *addedMatcher // added tokens matched on the raw text (normalized: false)
	normAdded   *addedMatcher // matched on normalized text (normalized: true)
	added       map[int]addedToken
	prefix      []int // post-processor: ids before the text
	suffix      []int // and after it
	byteDecoder bool
	idToToken   map[int]string
}

// LoadFile reads a tokenizer.json file.
func LoadFile(path string) (*Tokenizer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	t, err := Load(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// Load parses the contents of a tokenizer.json file. Components kvtorch does
// not implement are refused with an error naming them.
func Load(data []byte) (*Tokenizer, error) {
	var f struct {
		AddedTokens   []addedToken    `json:"added_tokens"`
		Normalizer    json.RawMessage `json:"normalizer"`
		PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
		Model         json.RawMessage `json:"model"`
		PostProcessor json.RawMessage `json:"post_processor"`
		Decoder       json.RawMessage `json:"decoder"`
		Truncation    json.RawMessage `json:"truncation"`
		Padding       json.RawMessage `json:"padding"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("tokenizer: not a tokenizer.json: %w", err)
	}
	if len(f.Model) == 0 || string(f.Model) == "null" {
		return nil, errors.New("tokenizer: tokenizer.json has no model")
	}
	t := &Tokenizer{added: map[int]addedToken{}}
	var err error
	if t.normalize, err = parseNormalizer(f.Normalizer); err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if t.preTok, err = parsePreTokenizer(f.PreTokenizer); err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if t.model, err = parseBPE(f.Model); err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	var raw, normed []addedToken
	for _, a := range f.AddedTokens {
		t.added[a.ID] = a
		if a.Normalized && t.normalize != nil {
			normed = append(normed, a)
		} else {
			raw = append(raw, a)
		}
	}
	t.rawAdded, t.normAdded = newAddedMatcher(raw), newAddedMatcher(normed)
	if t.prefix, t.suffix, err = parsePostProcessor(f.PostProcessor); err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if t.byteDecoder, err = parseDecoder(f.Decoder); err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	t.idToToken = make(map[int]string, len(t.model.vocab))
	for tok, id := range t.model.vocab {
		t.idToToken[id] = tok
	}
	return t, nil
}

// VocabSize is the number of ids: the model's vocabulary and the added tokens.
func (t *Tokenizer) VocabSize() int {
	n := len(t.model.vocab)
	for id := range t.added {
		if _, ok := t.idToToken[id]; !ok {
			n++
		}
	}
	return n
}

// TokenID returns the id of a token (an added token or a vocabulary entry).
func (t *Tokenizer) TokenID(token string) (int, bool) {
	for id, a := range t.added {
		if a.Content == token {
			return id, true
		}
	}
	id, ok := t.model.vocab[token]
	return id, ok
}

// Encode returns the ids of text as HF's tokenizer.encode(text) does (with
// add_special_tokens=True: the post-processor's tokens included).
func (t *Tokenizer) Encode(text string) []int {
	ids := append([]int(nil), t.prefix...)
	ids = t.encodeText(text, ids)
	return append(ids, t.suffix...)
}

// EncodePlain is Encode without the post-processor's special tokens
// (add_special_tokens=False).
func (t *Tokenizer) EncodePlain(text string) []int { return t.encodeText(text, nil) }

func (t *Tokenizer) encodeText(text string, ids []int) []int {
	var pieces []string
	for _, seg := range t.rawAdded.split(text, nil) {
		if seg.id >= 0 {
			ids = append(ids, seg.id)
			continue
		}
		s := seg.text
		if t.normalize != nil {
			s = t.normalize(s)
		}
		for _, nseg := range t.normAdded.split(s, nil) {
			if nseg.id >= 0 {
				ids = append(ids, nseg.id)
				continue
			}
			pieces = append(pieces[:0], nseg.text)
			for _, p := range t.preTok {
				var next []string
				for _, piece := range pieces {
					next = p(piece, next)
				}
				pieces = next
			}
			for _, w := range pieces {
				ids = t.model.tokenize(w, ids)
			}
		}
	}
	return ids
}

// Decode turns ids back into text (the ByteLevel decoder); unknown ids are
// skipped.
func (t *Tokenizer) Decode(ids []int) string {
	var sb strings.Builder
	var pending []byte
	flush := func() {
		sb.Write(pending)
		pending = pending[:0]
	}
	for _, id := range ids {
		if a, ok := t.added[id]; ok {
			flush()
			sb.WriteString(a.Content)
			continue
		}
		tok, ok := t.idToToken[id]
		if !ok {
			continue
		}
		if t.byteDecoder {
			pending = append(pending, fromByteLevel(tok)...)
		} else {
			pending = append(pending, tok...)
		}
	}
	flush()
	return strings.ToValidUTF8(sb.String(), "\uFFFD")
}

func parsePostProcessor(raw json.RawMessage) (prefix, suffix []int, err error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil, nil
	}
	var c struct {
		Type       string            `json:"type"`
		Processors []json.RawMessage `json:"processors"`
		Single     []struct {
			SpecialToken *struct {
				ID string `json:"id"`
			} `json:"SpecialToken"`
			Sequence *struct {
				ID string `json:"id"`
			} `json:"Sequence"`
		} `json:"single"`
		SpecialTokens map[string]struct {
			IDs []int `json:"ids"`
		} `json:"special_tokens"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, nil, fmt.Errorf("post_processor: %w", err)
	}
	switch c.Type {
	case "ByteLevel":
		return nil, nil, nil // changes offsets only
	case "Sequence":
		for _, p := range c.Processors {
			pre, suf, err := parsePostProcessor(p)
			if err != nil {
				return nil, nil, err
			}
			prefix = append(prefix, pre...)
			suffix = append(suf, suffix...)
		}
		return prefix, suffix, nil
	case "TemplateProcessing":
		seen := false
		for _, piece := range c.Single {
			switch {
			case piece.Sequence != nil:
				if seen {
					return nil, nil, errors.New("post_processor TemplateProcessing with two sequences in single is not supported")
				}
				seen = true
			case piece.SpecialToken != nil:
				st, ok := c.SpecialTokens[piece.SpecialToken.ID]
				if !ok {
					return nil, nil, fmt.Errorf("post_processor TemplateProcessing: special token %q is not defined", piece.SpecialToken.ID)
				}
				if seen {
					suffix = append(suffix, st.IDs...)
				} else {
					prefix = append(prefix, st.IDs...)
				}
			}
		}
		return prefix, suffix, nil
	}
	return nil, nil, fmt.Errorf("post_processor %q is not supported (supported: ByteLevel, TemplateProcessing, Sequence)", c.Type)
}

func parseDecoder(raw json.RawMessage) (bool, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return false, nil
	}
	var c component
	if err := json.Unmarshal(raw, &c); err != nil {
		return false, fmt.Errorf("decoder: %w", err)
	}
	if c.Type == "ByteLevel" {
		return true, nil
	}
	return false, fmt.Errorf("decoder %q is not supported (supported: ByteLevel)", c.Type)
}
