package texts

import (
	"fmt"
	"math/rand/v2"
	"sort"

	"github.com/kvtorch/kvtorch/kvfile"
	"github.com/kvtorch/kvtorch/tokenizer"
)

// Windows is held-out text cut into windows of SeqLen tokens.
type Windows struct {
	SeqLen  int
	Windows [][]int
	Files   []kvfile.TextFile
	SHA256  string // over the files' sha256s, in order
	// Documents are the documents the windows' text comes from ("path", or
	// "path:line" for JSONL), in corpus order, each once.
	Documents []string
	// Lines are the sampled lines of the text the windows were cut from
	// (see SharedText).
	Lines map[uint64]bool
}

// Tokens is the number of predicted tokens (SeqLen − 1 per window).
func (w *Windows) Tokens() int { return len(w.Windows) * (w.SeqLen - 1) }

// Info is the windows as a preset records them.
func (w *Windows) Info() kvfile.EvalInfo {
	return kvfile.EvalInfo{Texts: w.Files, SHA256: w.SHA256, SeqLen: w.SeqLen, Tokens: w.Tokens(), Documents: w.Documents}
}

// WindowOptions say how text becomes windows.
type WindowOptions struct {
	SeqLen    int    // tokens per window, BOS included
	MaxTokens int    // predicted tokens at most (0: all the text)
	BOS       int    // the token every window starts with (-1: none): the model's, when it wants one
	EOS       int    // the token between documents (-1: none)
	Seed      uint64 // where the windows of a sample fall (0: in the middle of their strides)
}

// sampleBytes is the text per token asked for above which windows are
// sampled rather than all the text tokenized: SeqLen-token windows at
// evenly spread places of the whole text (of every document of every
// path), so that the work follows the tokens asked for. Below it, all of
// the text is tokenized (once per session; 4,096 tokens asked for: up to
// 1 MB of text) and the windows chosen evenly among all of its.
const sampleBytes = 256

// Windows cuts the corpus's text into windows of SeqLen tokens: each starts
// with BOS (when the model wants one) and holds SeqLen − 1 tokens of text
// (documents joined with EOS), all of them predicted. With MaxTokens, at
// most MaxTokens / (SeqLen − 1) windows, spread over all the text: evenly
// chosen among all of its windows when the text is small, else cut at
// evenly spaced places of it (a stratified sample, placed by Seed), reading
// and tokenizing only what they need. Deterministic for a corpus, options
// and seed.
func (c *Corpus) Windows(tok *tokenizer.Tokenizer, vocab int, o WindowOptions) (*Windows, error) {
	if o.SeqLen < 2 || (o.BOS >= 0 && o.SeqLen < 3) {
		return nil, fmt.Errorf("texts: windows of %d tokens are too short", o.SeqLen)
	}
	w := &Windows{SeqLen: o.SeqLen, Files: c.Files, SHA256: c.SHA256(), Lines: map[uint64]bool{}}
	c.lines = w.Lines
	defer func() { c.lines = nil }()
	need := o.SeqLen // text tokens per window
	if o.BOS >= 0 {
		need--
	}
	count := -1 // windows at most
	if o.MaxTokens > 0 {
		if count = o.MaxTokens / (o.SeqLen - 1); count == 0 {
			return nil, fmt.Errorf("%w: %d tokens are less than one window of %d tokens (%d predicted)", ErrNoText, o.MaxTokens, o.SeqLen, o.SeqLen-1)
		}
	}
	var size int64
	for _, d := range c.Docs {
		size += d.n
	}
	// Where each window falls in its stride: the middle for seed 0, else
	// drawn from the seed.
	off := 0.5
	if o.Seed != 0 {
		off = rand.New(rand.NewPCG(o.Seed, 0x77696e646f7773)).Float64()
	}
	var wins [][]int
	var sources [][]int // documents of each window
	var err error
	if count > 0 && size > int64(sampleBytes)*int64(o.MaxTokens) {
		wins, sources, err = c.sampled(tok, vocab, o, need, count, size, off)
	} else {
		wins, sources, err = c.all(tok, vocab, o, need)
		if err == nil && count > 0 && len(wins) > count {
			var pw [][]int
			var ps [][]int
			for j := 0; j < count; j++ {
				i := int((float64(j) + off) * float64(len(wins)) / float64(count))
				pw, ps = append(pw, wins[i]), append(ps, sources[i])
			}
			wins, sources = pw, ps
		}
	}
	if err != nil {
		return nil, err
	}
	if len(wins) == 0 {
		return nil, fmt.Errorf("%w for evaluation: fewer tokens than one window of %d", ErrNoText, o.SeqLen)
	}
	used := map[int]bool{}
	for i, win := range wins {
		if o.BOS >= 0 {
			win = append([]int{o.BOS}, win...)
		}
		w.Windows = append(w.Windows, win)
		for _, d := range sources[i] {
			used[d] = true
		}
	}
	for i, d := range c.Docs {
		if used[i] {
			w.Documents = append(w.Documents, d.Source)
		}
	}
	return w, nil
}

// all tokenizes every document in order, joined with EOS, and cuts
// non-overlapping windows of need tokens (the remainder is dropped), with
// the documents each comes from.
func (c *Corpus) all(tok *tokenizer.Tokenizer, vocab int, o WindowOptions, need int) ([][]int, [][]int, error) {
	var wins, sources [][]int
	var stream, from []int // tokens, and the document of each
	for i, d := range c.Docs {
		ids, err := c.read(tok, vocab, d, 0, 0)
		if err != nil {
			return nil, nil, err
		}
		if o.BOS >= 0 && len(ids) > 0 && ids[0] == o.BOS {
			ids = ids[1:]
		}
		if o.EOS >= 0 {
			ids = append(ids, o.EOS)
		}
		for range ids {
			from = append(from, i)
		}
		stream = append(stream, ids...)
		for len(stream) >= need {
			wins = append(wins, append([]int(nil), stream[:need]...))
			sources = append(sources, distinct(from[:need]))
			stream, from = stream[need:], from[need:]
		}
	}
	return wins, sources, nil
}

// sampled cuts count windows of need tokens at evenly spaced bytes of the
// whole text (size bytes), the first place at off of the spacing: each
// from the next line of its place onward, into the following documents
// (after EOS) when its document ends first.
func (c *Corpus) sampled(tok *tokenizer.Tokenizer, vocab int, o WindowOptions, need, count int, size int64, off float64) ([][]int, [][]int, error) {
	starts := make([]int64, len(c.Docs)) // each document's first byte in the whole text
	var at int64
	for i, d := range c.Docs {
		starts[i] = at
		at += d.n
	}
	var wins, sources [][]int
	for j := 0; j < count; j++ {
		pos := int64((float64(j) + off) * float64(size) / float64(count))
		d := sort.Search(len(starts), func(i int) bool { return starts[i] > pos }) - 1
		local := pos - starts[d]
		var win, docs []int
		for visited := 0; len(win) < need; visited++ {
			if visited > len(c.Docs) {
				return nil, nil, fmt.Errorf("%w for evaluation: fewer tokens than one window of %d", ErrNoText, o.SeqLen)
			}
			ids, err := c.read(tok, vocab, c.Docs[d], local, need-len(win))
			if err != nil {
				return nil, nil, err
			}
			if o.BOS >= 0 && local == 0 && len(ids) > 0 && ids[0] == o.BOS {
				ids = ids[1:]
			}
			if len(ids) > 0 {
				docs = append(docs, d)
			}
			win = append(win, ids...)
			if len(win) < need && o.EOS >= 0 {
				win = append(win, o.EOS)
			}
			d, local = (d+1)%len(c.Docs), 0
		}
		wins = append(wins, win[:need])
		sources = append(sources, docs)
	}
	return wins, sources, nil
}

func distinct(xs []int) []int {
	var out []int
	for i, x := range xs {
		if i == 0 || x != xs[i-1] {
			out = append(out, x)
		}
	}
	return out
}
