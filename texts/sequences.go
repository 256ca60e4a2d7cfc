package texts

import (
	"github.com/kvtorch/kvtorch/tokenizer"
)

// Sequence is a run of token ids from one document.
type Sequence struct {
	IDs    []int
	Source string
}

// Skipped is a document left out, and why.
type Skipped struct {
	Source string
	Tokens int
}

// SequenceOptions say how documents become sequences.
type SequenceOptions struct {
	MaxLength int // tokens per sequence, BOS included; longer documents give several
	MinTokens int // documents with fewer tokens are skipped
	MaxTokens int // stop after this many tokens of text in all (0: no limit)
	BOS       int // the token every sequence starts with (-1: none)
}

// Sequences tokenizes docs in order (pre-tokenized ones as they are) and
// cuts them into sequences of at most MaxLength tokens, each starting with
// BOS when the model wants one (a document's own leading BOS is not
// repeated), stopping once MaxTokens tokens are reached. Documents with
// fewer than MinTokens tokens are skipped and reported.
func (c *Corpus) Sequences(tok *tokenizer.Tokenizer, vocab int, docs []Doc, o SequenceOptions) ([]Sequence, []Skipped, error) {
	var seqs []Sequence
	var skipped []Skipped
	total := 0
	step := o.MaxLength
	if o.BOS >= 0 {
		step-- // the text of a sequence, after its BOS
	}
	for _, d := range docs {
		if o.MaxTokens > 0 && total >= o.MaxTokens {
			break
		}
		ids, err := c.read(tok, vocab, d, 0, o.MaxTokens-total)
		if err != nil {
			return nil, nil, err
		}
		if o.BOS >= 0 && len(ids) > 0 && ids[0] == o.BOS {
			ids = ids[1:]
		}
		if len(ids) < o.MinTokens || len(ids) == 0 {
			skipped = append(skipped, Skipped{d.Source, len(ids)})
			continue
		}
		if o.MaxTokens > 0 && total+len(ids) > o.MaxTokens {
			ids = ids[:o.MaxTokens-total]
		}
		total += len(ids)
		for start := 0; start < len(ids); start += step {
			part := ids[start:min(start+step, len(ids))]
			if o.BOS >= 0 {
				part = append([]int{o.BOS}, part...)
			}
			seqs = append(seqs, Sequence{IDs: part, Source: d.Source})
		}
	}
	return seqs, skipped, nil
}
