package kvtorch

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/kvtorch/kvtorch/calibration"
	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/kvfile"
	"github.com/kvtorch/kvtorch/texts"
	"github.com/kvtorch/kvtorch/torch"
)

// CalibrateOptions say how to calibrate. Zero values take the defaults.
type CalibrateOptions struct {
	MaxLength   int    // tokens per sequence (512; at most the model's positions)
	BatchSize   int    // sequences per forward pass (8 on CUDA, 1 on the CPU)
	NumSamples  int    // documents used, chosen with Seed (0: all)
	Seed        uint64 // choosing and ordering documents
	MinTokens   int    // documents with fewer tokens are skipped (32; -1: none)
	Accumulate  string // statistics dtype on the device: float32 (default) or float64
	Method      string // PCA by eigh (default) or svd
	SharedHeads bool   // one per-head basis of the heads pooled (a baseline: the heads share one subspace)
	Sinks       int    // leading tokens of every sequence left out of the statistics (0: DefaultSinks; NoSinks: none)
	StatsOnly   bool   // return the statistics only (a shard), no PCA
}

// DefaultSinks is the number of attention-sink tokens kept exact (and left
// out of calibration statistics) unless asked otherwise.
const DefaultSinks = 4

// NoSinks asks for no sink tokens in options whose zero value means
// DefaultSinks (CalibrateOptions, TuneOptions). A compress.Setting's Sinks
// is the plain count.
const NoSinks = -1

func (o *CalibrateOptions) defaults(m *Model) error {
	if o.MaxLength == 0 {
		o.MaxLength = 512
	}
	o.MaxLength = min(o.MaxLength, m.Meta.MaxPositions)
	if o.BatchSize == 0 {
		o.BatchSize = defaultBatch(m, 8)
	}
	if o.MinTokens == 0 {
		o.MinTokens = 32
	}
	o.MinTokens = max(o.MinTokens, 0)
	if o.Accumulate == "" {
		o.Accumulate = "float32"
	}
	if o.Method == "" {
		o.Method = "eigh"
	}
	if o.Sinks == 0 {
		o.Sinks = DefaultSinks
	}
	o.Sinks = max(o.Sinks, 0)
	switch {
	case o.MaxLength < 2:
		return fmt.Errorf("%w: max length %d: at least 2", ErrOption, o.MaxLength)
	case o.BatchSize < 1:
		return fmt.Errorf("%w: batch size %d: at least 1", ErrOption, o.BatchSize)
	case o.NumSamples < 0:
		return fmt.Errorf("%w: number of samples %d", ErrOption, o.NumSamples)
	case o.Accumulate != "float32" && o.Accumulate != "float64":
		return fmt.Errorf("%w: accumulate %q (want float32 or float64)", ErrOption, o.Accumulate)
	case o.Method != "eigh" && o.Method != "svd":
		return fmt.Errorf("%w: method %q (want eigh or svd)", ErrOption, o.Method)
	case o.Sinks >= o.MaxLength:
		return fmt.Errorf("%w: %d sink tokens leave nothing of sequences of %d", compress.ErrInvalid, o.Sinks, o.MaxLength)
	}
	return nil
}

// CalibrateResult is a calibration and what went into it.
type CalibrateResult struct {
	Stats       *kvfile.Stats
	Calibration *kvfile.Calibration // nil with StatsOnly
	Skipped     []texts.Skipped     // documents too short to use
	Elapsed     time.Duration
}

// Calibrate runs texts through the model, accumulates the statistics of
// every layer's K and V on its device, and computes the PCA bases (unless
// StatsOnly).
func Calibrate(ctx context.Context, m *Model, corpus *texts.Corpus, o CalibrateOptions, progress Progress) (*CalibrateResult, error) {
	if err := o.defaults(m); err != nil {
		return nil, fmt.Errorf("kvtorch: calibrate: %w", err)
	}
	start := time.Now()
	docs := corpus.Sample(o.NumSamples, o.Seed)
	seqs, skipped, err := corpus.Sequences(m.Tokenizer, m.Meta.VocabSize, docs, texts.SequenceOptions{MaxLength: o.MaxLength,
		MinTokens: o.MinTokens, BOS: m.BOS()})
	if err != nil {
		return nil, fmt.Errorf("kvtorch: calibrate: %w", err)
	}
	if len(seqs) == 0 {
		return nil, fmt.Errorf("kvtorch: calibrate: %w: %d documents read, none with at least %d tokens", ErrNoText, len(docs), o.MinTokens)
	}
	total := 0
	for _, s := range seqs {
		total += len(s.IDs)
	}
	dtype := torch.Float32
	if o.Accumulate == "float64" {
		dtype = torch.Float64
	}
	stats := calibration.NewStats(m.Model, dtype, o.Sinks)
	defer stats.Close()
	progress.send(Event{Task: "calibrate", Total: total, Unit: "tokens"})
	err = calibration.Run(ctx, m.Model, seqs, calibration.RunOptions{BatchSize: o.BatchSize,
		Progress: func(_, done int) { progress.send(Event{Task: "calibrate", Done: done, Total: total, Unit: "tokens"}) }}, stats)
	if err != nil {
		return nil, fmt.Errorf("kvtorch: calibrate: %w", err)
	}
	if err := m.Device.Synchronize(); err != nil {
		return nil, err
	}
	moments, err := stats.Moments()
	if err != nil {
		return nil, err
	}
	if stats.Tokens() < 2 {
		return nil, fmt.Errorf("kvtorch: calibrate: %w: %d tokens after the %d sink tokens of each sequence", ErrNoText, stats.Tokens(), o.Sinks)
	}
	res := &CalibrateResult{Skipped: skipped}
	res.Stats = &kvfile.Stats{Header: kvfile.Header{
		Model: kvfile.ModelInfo{Name: m.Meta.Name, File: filepath.Base(m.Path), SHA256: m.SHA256, KVSource: m.Meta.KVSource,
			Architecture: m.Meta.Architecture},
		Geometry: m.Geometry(), Texts: corpus.Files,
		Options: kvfile.Options{MaxLength: o.MaxLength, BatchSize: o.BatchSize, NumSamples: o.NumSamples, MinTokens: o.MinTokens,
			Seed: o.Seed, Accumulate: o.Accumulate, Method: o.Method, SharedHeads: o.SharedHeads, Device: m.Device.String(), Sinks: o.Sinks},
	}, Layers: moments}
	if !o.StatsOnly {
		if res.Calibration, err = FromStats(ctx, res.Stats, m.Device); err != nil {
			return nil, err
		}
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

// FromStats computes the PCA bases of statistics (one calibration or merged
// shards) on dev.
func FromStats(ctx context.Context, s *kvfile.Stats, dev torch.Device) (*kvfile.Calibration, error) {
	c := &kvfile.Calibration{Header: s.Header, Tokens: s.Tokens()}
	c.Options.Device = dev.String()
	for l, pair := range s.Layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var bases [2]kvfile.SideBases
		for _, k := range compress.Kinds {
			b, err := calibration.PCA(pair[k], s.Geometry.Heads, s.Options.Method, s.Options.SharedHeads, dev)
			if err != nil {
				return nil, fmt.Errorf("kvtorch: layer %d %s: %w", l, k, err)
			}
			bases[k] = b
		}
		c.Layers = append(c.Layers, bases)
	}
	return c, nil
}

// Merge merges the statistics of calibration shards (files written by
// calibrate's StatsOnly runs, or by Merge) and computes the PCA bases on
// device ("": the CPU), unless statsOnly. Shards must not overlap (the same
// text twice is refused).
func Merge(ctx context.Context, paths []string, device string, statsOnly bool) (*CalibrateResult, error) {
	start := time.Now()
	var dev torch.Device
	if !statsOnly {
		var err error
		if dev, err = torch.ParseDevice(device); err != nil {
			return nil, fmt.Errorf("kvtorch: %w: %v", ErrOption, err)
		}
		if err := dev.Check(); err != nil {
			return nil, fmt.Errorf("kvtorch: %w", err)
		}
	}
	var shards []*kvfile.Stats
	for _, p := range paths {
		s, err := kvfile.LoadStats(p)
		if err != nil {
			return nil, err
		}
		shards = append(shards, s)
	}
	merged, err := kvfile.MergeStats(shards)
	if err != nil {
		return nil, err
	}
	res := &CalibrateResult{Stats: merged}
	if !statsOnly {
		if res.Calibration, err = FromStats(ctx, merged, dev); err != nil {
			return nil, err
		}
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

// ExplainedFractions are the fractions of each basis's dimension at which a
// Summary gives the explained variance.
var ExplainedFractions = []float64{0.25, 0.5, 0.75}

// SideSummary is one side's explained variance at ExplainedFractions: the
// mean over its per-head bases, and its joint basis (when there is one).
type SideSummary struct {
	PerHead []float64 `json:"per_head"`
	Joint   []float64 `json:"joint,omitempty"`
}

// LayerSummary is one layer's explained variance.
type LayerSummary struct {
	Layer int         `json:"layer"`
	K     SideSummary `json:"k"`
	V     SideSummary `json:"v"`
}

// Summary is what a calibration run made, as calibrate reports it.
type Summary struct {
	Output          string         `json:"output"`
	Model           string         `json:"model"`
	ModelSHA256     string         `json:"model_sha256"`
	KVSource        string         `json:"kv_source"`
	Device          string         `json:"device"`
	Tokens          int64          `json:"tokens"`
	Sinks           int            `json:"sinks"`
	Seconds         float64        `json:"seconds"`
	TokensPerSecond float64        `json:"tokens_per_second"`
	Skipped         int            `json:"skipped_documents"`
	Fractions       []float64      `json:"explained_fractions"`
	Layers          []LayerSummary `json:"explained_variance"`
}

// Summary summarises the calibration r made, written to out.
func (r *CalibrateResult) Summary(out string) Summary {
	cal := r.Calibration
	secs := r.Elapsed.Seconds()
	s := Summary{Output: out, Model: cal.Model.File, ModelSHA256: cal.Model.SHA256, KVSource: cal.Model.KVSource,
		Device: cal.Options.Device, Tokens: cal.Tokens, Sinks: cal.Options.Sinks, Seconds: secs,
		TokensPerSecond: float64(cal.Tokens) / max(secs, 1e-9), Skipped: len(r.Skipped), Fractions: ExplainedFractions}
	for l, pair := range cal.Layers {
		s.Layers = append(s.Layers, LayerSummary{Layer: l,
			K: SideSummary{explained(pair[0].PerHead), explained(pair[0].Joint)},
			V: SideSummary{explained(pair[1].PerHead), explained(pair[1].Joint)}})
	}
	return s
}

// explained is the explained variance of a basis at ExplainedFractions of
// its dimension (nil for a missing basis).
func explained(b *kvfile.Basis) []float64 {
	if b == nil {
		return nil
	}
	var out []float64
	for _, f := range ExplainedFractions {
		out = append(out, b.ExplainedVariance(-1, int(f*float64(b.Dim))))
	}
	return out
}
