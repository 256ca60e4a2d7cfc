package kvfile

import (
	"fmt"

	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/pt"
)

// Stats is the content of a statistics file (calibrate --stats-out): the
// joint moments of every layer's K and V, mergeable with other shards of the
// same model.
type Stats struct {
	Header
	Layers [][2]*Moments // [layer][K, V]
}

// Tokens is the number of tokens in the statistics.
func (s *Stats) Tokens() int64 {
	if len(s.Layers) == 0 {
		return 0
	}
	return s.Layers[0][0].Count
}

// Save writes the statistics file (float64), atomically.
func (s *Stats) Save(path string) error {
	d := s.dict("kvtorch-stats")
	d.Set("tokens", s.Tokens())
	layers := []any{}
	for _, pair := range s.Layers {
		ld := pt.NewDict()
		for _, k := range compress.Kinds {
			m := pair[k]
			e := int64(m.E)
			ld.Set(k.String(), pt.NewDict().Set("count", m.Count).Set("shift", f64(m.Shift, e)).
				Set("sum", f64(m.Sum, e)).Set("xtx", f64(m.XTX, e, e)))
		}
		layers = append(layers, ld)
	}
	d.Set("layers", layers)
	if err := pt.Save(path, d); err != nil {
		return fmt.Errorf("kvfile: %w", err)
	}
	return nil
}

// LoadStats reads a statistics file of format 2 (format 1 held per-head
// statistics, from which joint bases cannot be made: its shards must be
// computed again).
func LoadStats(path string) (*Stats, error) {
	r, d, h, _, err := readHeader(path, "kvtorch-stats", 2)
	if err != nil {
		return nil, err
	}
	s := &Stats{Header: h}
	g := h.Geometry
	for _, ld := range r.layers(d, g.Layers) {
		var pair [2]*Moments
		for _, k := range compress.Kinds {
			md := r.dict(ld, k.String())
			e := int64(g.Width(k))
			m := &Moments{E: int(e), Count: r.int(md, "count"), Shift: r.floats(md, "shift", e),
				Sum: r.floats(md, "sum", e), XTX: r.floats(md, "xtx", e, e)}
			if r.err == nil {
				if err := m.Check(); err != nil {
					r.fail("%v", err)
				}
			}
			pair[k] = m
		}
		s.Layers = append(s.Layers, pair)
		if r.err != nil {
			break
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	if n := s.Tokens(); n != r.int(d, "tokens") || r.err != nil {
		return nil, fmt.Errorf("%s: %w: the token count does not match the statistics", path, ErrFormat)
	}
	for l, pair := range s.Layers {
		for _, k := range compress.Kinds {
			if pair[k].Count != s.Tokens() {
				return nil, fmt.Errorf("%s: %w: layer %d %s has %d tokens, layer 0 K %d", path, ErrFormat, l, k, pair[k].Count, s.Tokens())
			}
		}
	}
	return s, nil
}

// MergeStats sums shards computed on different texts of the same model. The
// same text in two shards (by sha256) is refused: it would count twice.
func MergeStats(shards []*Stats) (*Stats, error) {
	if len(shards) == 0 {
		return nil, fmt.Errorf("kvfile: merge: no statistics files")
	}
	first := shards[0]
	out := &Stats{Header: first.Header}
	out.Texts = nil
	for _, pair := range first.Layers {
		out.Layers = append(out.Layers, [2]*Moments{NewMoments(pair[0].E), NewMoments(pair[1].E)})
	}
	seen := map[string]string{}
	for i, s := range shards {
		switch {
		case s.Model.SHA256 != first.Model.SHA256:
			return nil, fmt.Errorf("kvfile: merge: %w: shard %d is of model %s (sha256 %.12s…), shard 0 of %s (sha256 %.12s…)",
				ErrMismatch, i, s.Model.File, s.Model.SHA256, first.Model.File, first.Model.SHA256)
		case s.Geometry != first.Geometry:
			return nil, fmt.Errorf("kvfile: merge: %w: shard %d has geometry %v, shard 0 %v", ErrMismatch, i, s.Geometry, first.Geometry)
		case s.Options.Sinks != first.Options.Sinks:
			return nil, fmt.Errorf("kvfile: merge: %w: shard %d leaves out %d sink tokens, shard 0 %d", ErrMismatch, i, s.Options.Sinks, first.Options.Sinks)
		}
		for _, t := range s.Texts {
			if p, dup := seen[t.SHA256]; dup {
				return nil, fmt.Errorf("kvfile: merge: %w: text %s (shard %d) is also in %s: it would count twice", ErrMismatch, t.Path, i, p)
			}
			seen[t.SHA256] = fmt.Sprintf("%s (shard %d)", t.Path, i)
		}
		for l := range s.Layers {
			for _, k := range compress.Kinds {
				if err := out.Layers[l][k].Merge(s.Layers[l][k]); err != nil {
					return nil, fmt.Errorf("kvfile: merge: shard %d: %w", i, err)
				}
			}
		}
		out.Texts = append(out.Texts, s.Texts...)
	}
	for l, pair := range out.Layers {
		for _, k := range compress.Kinds {
			if err := pair[k].Check(); err != nil {
				return nil, fmt.Errorf("kvfile: merge: layer %d %s: the sum of the shards overflows: %w", l, k, err)
			}
		}
	}
	return out, nil
}
