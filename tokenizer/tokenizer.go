package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"unicode/utf8"
)

// Tokenizer encodes text as a HuggingFace tokenizer.json describes. It is
// safe for concurrent use.
type Tokenizer struct {
	normalize normalizer
	preTok    []preTokenizer
	model     model
	rawAdded  *addedMatcher // added tokens matched on the raw text (normalized: false)
	normAdded *addedMatcher // matched on normalized text (normalized: true)
	added     map[int]addedToken
	prefix    []int // post-processor: ids before the text
	suffix    []int // and after it
	decoder   decoder
	idToToken map[int]string
}

// model turns one pre-tokenized piece into ids: BPE or Unigram.
type model interface {
	tokenize(word string, out []int) []int
	vocabulary() map[string]int
}

func parseModel(raw json.RawMessage) (model, error) {
	var kind component
	if err := json.Unmarshal(raw, &kind); err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	switch kind.Type {
	case "BPE", "":
		return parseBPE(raw)
	case "Unigram":
		return parseUnigram(raw)
	}
	return nil, fmt.Errorf("model %q is not supported (supported: BPE, Unigram)", kind.Type)
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
	if t.model, err = parseModel(f.Model); err != nil {
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
	if t.decoder, err = parseDecoder(f.Decoder); err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	vocab := t.model.vocabulary()
	t.idToToken = make(map[int]string, len(vocab))
	for tok, id := range vocab {
		t.idToToken[id] = tok
	}
	for id, a := range t.added {
		if a.Normalized && t.normalize != nil { // HF decodes a normalized added token as its normalized form
			a.Content, _ = t.normalize(a.Content)
			t.added[id] = a
		}
	}
	return t, nil
}

// VocabSize is the number of ids: the model's vocabulary and the added tokens.
func (t *Tokenizer) VocabSize() int {
	n := len(t.model.vocabulary())
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
	id, ok := t.model.vocabulary()[token]
	return id, ok
}

// Encode returns the ids of text as HF's tokenizer.encode(text) does (with
// add_special_tokens=True: the post-processor's tokens included). Text that
// is not valid UTF-8 is read as Python's bytes.decode(errors="replace")
// would: each invalid sequence becomes U+FFFD.
func (t *Tokenizer) Encode(text string) []int {
	ids := append([]int(nil), t.prefix...)
	ids = t.encodeText(text, ids)
	return append(ids, t.suffix...)
}

// EncodePlain is Encode without the post-processor's special tokens
// (add_special_tokens=False).
func (t *Tokenizer) EncodePlain(text string) []int { return t.encodeText(text, nil) }

func (t *Tokenizer) encodeText(text string, ids []int) []int {
	if !utf8.ValidString(text) {
		text = lossyUTF8([]byte(text))
	}
	var pieces, next []piece
	for _, seg := range t.rawAdded.split(text, nil) {
		if seg.id >= 0 {
			ids = append(ids, seg.id)
			continue
		}
		s, keep := seg.text, true
		if t.normalize != nil {
			s, keep = t.normalize(s)
		}
		for _, nseg := range t.normAdded.split(s, nil) {
			if nseg.id >= 0 {
				ids = append(ids, nseg.id)
				continue
			}
			if nseg.text == "" {
				continue
			}
			pieces = append(pieces[:0], piece{nseg.text, seg.start == 0 && keep && nseg.start == 0})
			for _, p := range t.preTok {
				next = next[:0]
				for _, pc := range pieces {
					next = p(pc, next)
				}
				pieces, next = next, pieces
			}
			for _, w := range pieces {
				ids = t.model.tokenize(w.text, ids)
			}
		}
	}
	return ids
}

// Decode turns ids back into text as HF's decode(ids) does (with its default
// skip_special_tokens=True): each id's token (unknown ids skipped, special
// added tokens left out) through the decoder, or joined by spaces when the
// file has no decoder.
func (t *Tokenizer) Decode(ids []int) string {
	tokens := make([]string, 0, len(ids))
	for _, id := range ids {
		if a, ok := t.added[id]; ok {
			if !a.Special {
				tokens = append(tokens, a.Content)
			}
			continue
		}
		if tok, ok := t.idToToken[id]; ok {
			tokens = append(tokens, tok)
		}
	}
	if t.decoder == nil {
		return strings.Join(tokens, " ")
	}
	return strings.Join(t.decoder(tokens), "")
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
