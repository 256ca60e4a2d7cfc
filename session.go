package kvtorch

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"sort"
	"time"

	"github.com/kvtorch/kvtorch/calibration"
	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/kvfile"
	"github.com/kvtorch/kvtorch/texts"
	"github.com/kvtorch/kvtorch/tune"
)

// Source names a calibration: the path it was read from and its sha256.
type Source struct {
	Path   string
	SHA256 string
}

// DefaultSeqLen caps the window length perplexity is measured at by
// default: the model's context, up to 4,096 tokens — where a KV cache
// matters, and where damage that grows with the context shows (SmolLM2 with
// a 16/8/4-bit preset: +5.5% at 512 tokens, +6.9% at 4,096).
const DefaultSeqLen = 4096

// EvalOptions say how perplexity is measured. Zero values take the defaults.
type EvalOptions struct {
	SeqLen      int    // tokens per window (the model's context, at most DefaultSeqLen)
	MaxTokens   int    // predicted tokens at most (0: all the text)
	BatchSize   int    // windows per forward pass (4 on CUDA, 1 on the CPU)
	Context     int    // the context length compression ratios are counted at (4096)
	ProbeTokens int    // predicted tokens of the small sample tune probes on (one window; two short ones up to 1022 tokens)
	Seed        uint64 // where windows fall when MaxTokens samples the text
}

// windows are the options the texts are cut into windows with: BOS and EOS
// as the model wants them.
func (o *EvalOptions) windows(m *Model) texts.WindowOptions {
	return texts.WindowOptions{SeqLen: o.SeqLen, MaxTokens: o.MaxTokens, BOS: m.BOS(), EOS: m.EOS(), Seed: o.Seed}
}

func (o *EvalOptions) defaults(m *Model) error {
	if o.SeqLen == 0 {
		o.SeqLen = min(m.Meta.MaxPositions, DefaultSeqLen)
	}
	if o.BatchSize == 0 {
		o.BatchSize = defaultBatch(m, 4)
	}
	if o.Context == 0 {
		o.Context = compress.DefaultContext
	}
	if o.ProbeTokens == 0 { // one window of a long context; two short ones, up to 1022 tokens
		o.ProbeTokens = max(o.SeqLen-1, min(2*(o.SeqLen-1), 1022))
	}
	switch {
	case o.SeqLen < 2:
		return fmt.Errorf("%w: seq-len %d: at least 2", ErrOption, o.SeqLen)
	case o.MaxTokens < 0:
		return fmt.Errorf("%w: max tokens %d (0 means all)", ErrOption, o.MaxTokens)
	case o.BatchSize < 1:
		return fmt.Errorf("%w: batch size %d: at least 1", ErrOption, o.BatchSize)
	case o.Context < 1:
		return fmt.Errorf("%w: context length %d", ErrOption, o.Context)
	case o.ProbeTokens < 1:
		return fmt.Errorf("%w: probe tokens %d", ErrOption, o.ProbeTokens)
	}
	return nil
}

// Kind is held-out text of one kind, measured on its own: a preset is
// within budget when it is within budget on every kind.
type Kind struct {
	Name     string // what it was read from
	Windows  *texts.Windows
	Baseline float64   // uncompressed perplexity
	nll      []float64 // uncompressed, per predicted token
}

// Session measures compression settings of one model and calibration on
// held-out text of one or more kinds: the baselines once, then any setting
// (measurements are remembered). It implements tune.Evaluator.
type Session struct {
	Model       *Model
	Calibration *kvfile.Calibration
	Source      Source
	Kinds       []*Kind
	// Windows and Baseline are the first kind's.
	Windows  *texts.Windows
	Baseline float64
	Options  EvalOptions
	// Evaluations and Probes count the measurements made (the baselines
	// are evaluations); ProbesRead the probes a search took from the probe
	// file instead (UseProbeFile).
	Evaluations, Probes, ProbesRead int

	progress     Progress
	step, steps  int // numbering of measurements in progress events
	seen         map[string]Measurement
	probeWindows [][]int
	probeBase    *calibration.Reference // the uncompressed model on probeWindows
	probeSeen    map[string]float64
	probeFile    string          // where probes are kept (UseProbeFile)
	probeHeader  probeFile       // its model, calibration and windows
	probeRead    map[string]bool // probes read from it, not used yet
}

// Close frees the model and what the session keeps on its device.
func (s *Session) Close() error {
	s.probeBase.Close()
	s.probeBase = nil
	return s.Model.Close()
}

// NewSession checks that the calibration is the model's, cuts the held-out
// text of each kind (one corpus each) into windows and measures the
// baselines (uncompressed perplexity).
func NewSession(ctx context.Context, m *Model, cal *kvfile.Calibration, src Source, kinds []*texts.Corpus, o EvalOptions, progress Progress) (*Session, error) {
	if err := o.defaults(m); err != nil {
		return nil, fmt.Errorf("kvtorch: %w", err)
	}
	if o.SeqLen > m.Meta.MaxPositions {
		return nil, fmt.Errorf("kvtorch: %w: seq-len %d exceeds the model's %d positions", ErrOption, o.SeqLen, m.Meta.MaxPositions)
	}
	if len(kinds) == 0 {
		return nil, fmt.Errorf("kvtorch: %w: no held-out text", ErrNoText)
	}
	if err := Matches(m, cal); err != nil {
		return nil, err
	}
	s := &Session{Model: m, Calibration: cal, Source: src, Options: o, progress: progress,
		seen: map[string]Measurement{}, probeSeen: map[string]float64{}}
	for _, c := range kinds {
		w, err := c.Windows(m.Tokenizer, m.Meta.VocabSize, o.windows(m))
		if err != nil {
			return nil, fmt.Errorf("kvtorch: %w", err)
		}
		s.Kinds = append(s.Kinds, &Kind{Name: kindName(w), Windows: w})
	}
	s.Windows = s.Kinds[0].Windows
	base := compress.Uncompressed(m.Geometry())
	if err := calibration.Apply(m.Model, cal, base); err != nil {
		return nil, err
	}
	for _, k := range s.Kinds {
		var err error
		if k.nll, err = s.tokenNLL(ctx, "baseline", "uncompressed "+k.Name, k.Windows); err != nil {
			return nil, err
		}
		if k.Baseline, err = calibration.PerplexityOf(k.nll); err != nil {
			return nil, err
		}
		s.Evaluations++
	}
	s.Baseline = s.Kinds[0].Baseline
	return s, nil
}

// kindName names held-out text by its first file (and how many more).
func kindName(w *texts.Windows) string {
	switch len(w.Files) {
	case 0:
		return "held-out text"
	case 1:
		return filepath.Base(w.Files[0].Path)
	}
	return fmt.Sprintf("%s and %d more", filepath.Base(w.Files[0].Path), len(w.Files)-1)
}

// Matches checks that a calibration was made from the model file.
func Matches(m *Model, cal *kvfile.Calibration) error {
	switch {
	case cal.Model.SHA256 != m.SHA256:
		return fmt.Errorf("kvtorch: %w: the calibration is of model %s (sha256 %.12s…), not of %s (sha256 %.12s…)",
			ErrMismatch, cal.Model.File, cal.Model.SHA256, m.Path, m.SHA256)
	case cal.Geometry != m.Geometry():
		return fmt.Errorf("kvtorch: %w: the calibration's cache shape (%v) is not the model's (%v)", ErrMismatch, cal.Geometry, m.Geometry())
	case cal.Model.KVSource != m.Meta.KVSource:
		return fmt.Errorf("kvtorch: %w: the calibration is of %s keys, the model gives %s keys", ErrMismatch, cal.Model.KVSource, m.Meta.KVSource)
	}
	return nil
}

// SetSteps numbers the measurements that follow in progress events: the
// next is step 1 of about n.
func (s *Session) SetSteps(n int) { s.step, s.steps = 0, n }

func (s *Session) tokenNLL(ctx context.Context, task, label string, w *texts.Windows) ([]float64, error) {
	s.step++
	ev := Event{Task: task, Label: label, Total: len(w.Windows), Unit: "windows", Step: s.step, Steps: max(s.steps, s.step)}
	s.progress.send(ev)
	return calibration.TokenNLL(ctx, s.Model.Model, w, s.Options.BatchSize, func(done int) {
		e := ev
		e.Done = done
		s.progress.send(e)
	})
}

// KindMeasurement is a setting measured on one kind of held-out text.
type KindMeasurement struct {
	Name     string  `json:"texts"`
	Baseline float64 `json:"baseline_ppl"`
	PPL      float64 `json:"compressed_ppl"`
	Delta    float64 `json:"ppl_delta"`     // PPL / baseline − 1
	Low      float64 `json:"ppl_delta_low"` // a 90% interval of Delta
	High     float64 `json:"ppl_delta_high"`
}

// Measurement is a measured setting.
type Measurement struct {
	Label string `json:"-"`
	// PPL, Delta, Low and High are the deciding kind's: the one with the
	// largest delta.
	PPL   float64           `json:"compressed_ppl"`
	Delta float64           `json:"ppl_delta"`     // PPL / baseline − 1
	Low   float64           `json:"ppl_delta_low"` // a 90% interval of Delta (see DeltaInterval)
	High  float64           `json:"ppl_delta_high"`
	Ratio float64           `json:"compression_ratio"` // compression of the whole cache at the context length
	Kinds []KindMeasurement `json:"kinds,omitempty"`
}

// Measure applies setting st and measures its perplexity delta on the
// held-out windows of every kind: the largest delta, and its interval
// (remembered: the same setting is measured once).
func (s *Session) Measure(ctx context.Context, st compress.Setting, label string) (tune.Measured, error) {
	m, err := s.MeasureSetting(ctx, st, label)
	return tune.Measured{Delta: m.Delta, Low: m.Low, High: m.High}, err
}

// MeasureSetting is Measure with the whole measurement.
func (s *Session) MeasureSetting(ctx context.Context, st compress.Setting, label string) (Measurement, error) {
	g := s.Model.Geometry()
	if st.Sinks >= s.Windows.SeqLen {
		return Measurement{}, fmt.Errorf("kvtorch: %w: %d sink tokens leave nothing of windows of %d", compress.ErrInvalid, st.Sinks, s.Windows.SeqLen)
	}
	if st.Recent >= s.Windows.SeqLen {
		return Measurement{}, fmt.Errorf("kvtorch: %w: a recent window of %d tokens leaves nothing compressed in windows of %d", compress.ErrInvalid, st.Recent, s.Windows.SeqLen)
	}
	key := st.Key()
	if m, ok := s.seen[key]; ok {
		m.Label = label
		return m, nil
	}
	if err := calibration.Apply(s.Model.Model, s.Calibration, st); err != nil {
		return Measurement{}, err
	}
	m := Measurement{Label: label, Ratio: st.Ratio(g, s.Options.Context), Delta: math.Inf(-1)}
	for _, k := range s.Kinds {
		what := label
		if len(s.Kinds) > 1 {
			what += " on " + k.Name
		}
		nll, err := s.tokenNLL(ctx, "measure", what, k.Windows)
		if err != nil {
			return Measurement{}, err
		}
		ppl, err := calibration.PerplexityOf(nll)
		if err != nil {
			return Measurement{}, err
		}
		lo, hi := DeltaInterval(k.nll, nll)
		km := KindMeasurement{Name: k.Name, Baseline: k.Baseline, PPL: ppl, Delta: ppl/k.Baseline - 1, Low: lo, High: hi}
		m.Kinds = append(m.Kinds, km)
		if km.Delta > m.Delta {
			m.PPL, m.Delta, m.Low, m.High = km.PPL, km.Delta, km.Low, km.High
		}
	}
	s.Evaluations++
	s.seen[key] = m
	s.progress.send(Event{Task: "measure", Label: label, Step: s.step, Steps: max(s.steps, s.step), Finished: true,
		PPL: m.PPL, Delta: m.Delta, Low: m.Low, High: m.High, Ratio: m.Ratio})
	return m, nil
}

// intervalBlock is the length of the blocks of tokens DeltaInterval
// resamples: neighbouring tokens' losses are correlated.
const intervalBlock = 128

// DeltaInterval is a 90% interval of the perplexity delta of comp over base
// (per-token negative log-likelihoods of the same tokens): a paired block
// bootstrap (blocks of 128 tokens, 400 resamples, a fixed seed), so that a
// delta measured on few tokens says how little it knows.
func DeltaInterval(base, comp []float64) (lo, hi float64) {
	n := min(len(base), len(comp))
	blocks := (n + intervalBlock - 1) / intervalBlock
	if blocks == 0 {
		return 0, 0
	}
	diff := make([]float64, blocks) // per block: Σ (comp − base)
	count := make([]float64, blocks)
	for i := 0; i < n; i++ {
		diff[i/intervalBlock] += comp[i] - base[i]
		count[i/intervalBlock]++
	}
	rng := rand.New(rand.NewPCG(19, 21))
	const resamples = 400
	deltas := make([]float64, resamples)
	for r := range deltas {
		d, c := 0.0, 0.0
		for j := 0; j < blocks; j++ {
			b := rng.IntN(blocks)
			d += diff[b]
			c += count[b]
		}
		deltas[r] = math.Exp(d/c) - 1
	}
	sort.Float64s(deltas)
	return deltas[resamples*5/100], deltas[resamples*95/100-1]
}

// Probe measures how far setting st moves the model's next-token
// distributions on a small sample of the held-out windows (ProbeTokens
// predicted tokens, windows spread evenly over the text): the mean KL
// divergence from the uncompressed model, in nats per token. It is a cheap
// proxy of the perplexity cost (for small changes, Δ log perplexity ≈ KL),
// and unlike a perplexity difference on few tokens it is never negative.
func (s *Session) Probe(ctx context.Context, st compress.Setting, label string) (float64, error) {
	key := st.Key()
	if kl, ok := s.probeSeen[key]; ok {
		if s.probeRead[key] {
			delete(s.probeRead, key)
			s.ProbesRead++
		}
		return kl, nil
	}
	if s.probeBase == nil {
		s.chooseProbeWindows()
		if err := calibration.Apply(s.Model.Model, s.Calibration, compress.Uncompressed(s.Model.Geometry())); err != nil {
			return 0, err
		}
		base, err := calibration.NewReference(ctx, s.Model.Model, s.probeWindows)
		if err != nil {
			return 0, err
		}
		s.probeBase = base
	}
	if err := calibration.Apply(s.Model.Model, s.Calibration, st); err != nil {
		return 0, err
	}
	s.step++
	s.progress.send(Event{Task: "probe", Label: label, Total: len(s.probeWindows), Unit: "windows", Step: s.step, Steps: max(s.steps, s.step)})
	kl, err := calibration.KL(ctx, s.Model.Model, s.probeBase)
	if err != nil {
		return 0, err
	}
	s.Probes++
	s.probeSeen[key] = kl
	if err := s.saveProbes(); err != nil {
		return 0, fmt.Errorf("kvtorch: probes %s: %w", s.probeFile, err)
	}
	s.progress.send(Event{Task: "probe", Label: label, Step: s.step, Steps: max(s.steps, s.step), Finished: true, KL: kl,
		Ratio: st.Ratio(s.Model.Geometry(), s.Options.Context)})
	return kl, nil
}

// chooseProbeWindows picks the probe windows (once): n windows of the
// kinds in turn, each kind's spread evenly over it.
func (s *Session) chooseProbeWindows() {
	if s.probeWindows != nil {
		return
	}
	n := max(s.Options.ProbeTokens/(s.Windows.SeqLen-1), 1)
	for k, kind := range s.Kinds {
		all := kind.Windows.Windows
		share := min((n-k+len(s.Kinds)-1)/len(s.Kinds), len(all)) // windows of this kind
		for j := 0; j < share; j++ {
			s.probeWindows = append(s.probeWindows, all[j*len(all)/share])
		}
	}
}

// Report is a preset checked on held-out text.
type Report struct {
	Preset       string  `json:"preset"`
	Budget       float64 `json:"max_ppl_delta"`
	Baseline     float64 `json:"baseline_ppl,omitempty"`
	*Measurement         // nil when nothing was measured (files that do not match)
	SeqLen       int     `json:"seq_len,omitempty"`
	Tokens       int     `json:"tokens,omitempty"`
	EvalSHA256   string  `json:"eval_sha256,omitempty"`
	Pass         bool    `json:"pass"`
	Reason       string  `json:"reason,omitempty"`
}

// CheckPreset verifies that a preset was made for this model and
// calibration, and that its measured perplexity delta is within budget:
// ErrMismatch or ErrOverBudget otherwise (the report is filled either way,
// as far as it got).
func (s *Session) CheckPreset(ctx context.Context, p *kvfile.Preset, budget float64) (Report, error) {
	r := Report{Budget: budget, Baseline: s.Baseline, SeqLen: s.Windows.SeqLen, Tokens: s.Windows.Tokens(), EvalSHA256: s.Windows.SHA256}
	for _, k := range s.Kinds[1:] {
		r.Tokens += k.Windows.Tokens()
	}
	if err := CheckBudget(budget); err != nil {
		r.Reason = err.Error()
		return r, err
	}
	if err := s.PresetMatches(p); err != nil {
		r.Reason = err.Error()
		return r, err
	}
	m, err := s.MeasureSetting(ctx, p.Setting(), "preset")
	if err != nil {
		return r, err
	}
	r.Measurement = &m
	for _, k := range m.Kinds {
		if k.Delta > budget {
			r.Reason = fmt.Sprintf("perplexity delta %+.2f%% on %s exceeds the budget %+.2f%% (%.4f -> %.4f, seq-len %d)",
				100*k.Delta, k.Name, 100*budget, k.Baseline, k.PPL, s.Windows.SeqLen)
			return r, fmt.Errorf("kvtorch: %w: %s", ErrOverBudget, r.Reason)
		}
	}
	r.Pass = true
	return r, nil
}

// PresetMatches checks that a preset was made for the session's model file
// and calibration file (see MatchPreset).
func (s *Session) PresetMatches(p *kvfile.Preset) error {
	return MatchPreset(p, s.Model.File(), s.Calibration, s.Source)
}

// MatchPreset checks that a preset was made for model m and calibration cal
// (read from src): the files by sha256, the cache shape, and the keys
// (pre- or post-RoPE, as the model gives them and the calibration holds
// them). A preset relabelled with another kv_source would apply bases
// learnt on one kind of keys to the other.
func MatchPreset(p *kvfile.Preset, m *File, cal *kvfile.Calibration, src Source) error {
	switch {
	case p.ModelSHA256 != m.SHA256:
		return fmt.Errorf("kvtorch: %w: model %s has sha256 %.12s…, the preset was made for %.12s…", ErrMismatch, m.Path, m.SHA256, p.ModelSHA256)
	case p.CalibrationSHA256 != src.SHA256:
		return fmt.Errorf("kvtorch: %w: calibration %s has sha256 %.12s…, the preset was made with %.12s…", ErrMismatch, src.Path, src.SHA256, p.CalibrationSHA256)
	case p.Geometry() != m.Geometry():
		return fmt.Errorf("kvtorch: %w: the preset's cache shape (%v) is not the model's (%v)", ErrMismatch, p.Geometry(), m.Geometry())
	case p.KVSource != m.Meta.KVSource || p.KVSource != cal.Model.KVSource:
		return fmt.Errorf("kvtorch: %w: the preset is of %s keys; the model gives %s keys and the calibration has %s keys",
			ErrMismatch, p.KVSource, m.Meta.KVSource, cal.Model.KVSource)
	}
	return nil
}

// MaxBudget is the largest perplexity budget kvtorch accepts: +1000%.
const MaxBudget = 10

// CheckBudget refuses a perplexity budget that is not a number in (0,
// MaxBudget]: zero, negative, NaN or infinite budgets would pass or fail
// every preset.
func CheckBudget(b float64) error {
	if !(b > 0 && b <= MaxBudget) {
		return fmt.Errorf("kvtorch: %w: perplexity budget %v: want a fraction in (0, %d], e.g. 0.05 for +5%%", ErrOption, b, MaxBudget)
	}
	return nil
}

// CheckMixed refuses mixed bits (TuneOptions.Mixed) where there is nothing
// to split: fewer than two widths, a basis other than joint (the zero Basis
// is joint for Tune), or the uniform search.
func CheckMixed(o TuneOptions) error {
	switch {
	case !o.Mixed:
		return nil
	case len(o.Bits) < 2:
		return fmt.Errorf("kvtorch: %w: --mixed-bits splits latents by two or more --bits widths: give them, e.g. --bits 16,8,4", ErrOption)
	case o.Basis != "" && o.Basis != compress.Joint:
		return fmt.Errorf("kvtorch: %w: --mixed-bits splits the latents of a joint basis, not of --basis %s", ErrOption, o.Basis)
	case o.Uniform:
		return fmt.Errorf("kvtorch: %w: --mixed-bits is for the search; --uniform gives every layer one rank and bits", ErrOption)
	}
	return nil
}

// TuneOptions say what to search.
type TuneOptions struct {
	Budget  float64 // perplexity delta allowed (0.05: +5%)
	Target  compress.Target
	Bits    []int          // latent bits allowed (16 unless given)
	Basis   compress.Basis // Joint unless asked otherwise
	Sinks   int            // tokens kept exact (0: DefaultSinks; NoSinks: none)
	Recent  int            // the recent window: every query's last positions kept exact (0: none)
	Uniform bool           // the baseline search instead: one per-head rank over a fixed grid
	// Mixed lets a joint side split its latents by bit width (tune.Options.Mixed).
	Mixed bool
	// Checks are more held-out texts (another kind than the session's) the
	// chosen setting is also measured on; their results go into the preset.
	Checks []*texts.Corpus
	// MaxEvaluations bounds the full measurements of the search (12).
	MaxEvaluations int
}

// Tune searches the setting that compresses most within the budget,
// measures it, and returns it as a preset with every candidate measured.
// The held-out text must not be calibration text (ErrHeldOutIsCalibration).
func (s *Session) Tune(ctx context.Context, o TuneOptions) (*kvfile.Preset, tune.Result, error) {
	if err := s.HeldOut(); err != nil {
		return nil, tune.Result{}, err
	}
	if err := CheckBudget(o.Budget); err != nil {
		return nil, tune.Result{}, err
	}
	if o.Target == (compress.Target{}) {
		o.Target = compress.Target{true, true}
	}
	if len(o.Bits) == 0 {
		o.Bits = []int{16}
	}
	if o.Basis == "" {
		o.Basis = compress.Joint
	}
	if o.Sinks == 0 {
		o.Sinks = DefaultSinks
	}
	o.Sinks = max(o.Sinks, 0)
	if o.Basis == compress.None {
		return nil, tune.Result{}, fmt.Errorf("kvtorch: %w: tune searches ranks of a basis (joint or per head); quantization alone is one setting to measure, not to tune", compress.ErrInvalid)
	}
	if err := CheckMixed(o); err != nil {
		return nil, tune.Result{}, err
	}
	if o.Mixed {
		if err := s.Model.Model.CanSplit(); err != nil {
			return nil, tune.Result{}, fmt.Errorf("kvtorch: %w", err)
		}
	}
	if o.Basis == compress.Joint && !s.Calibration.HasJoint() {
		return nil, tune.Result{}, fmt.Errorf("kvtorch: %w: the calibration has no joint bases (made by an older kvtorch): calibrate again, or tune per-head bases", ErrMismatch)
	}
	start := time.Now()
	topts := tune.Options{Geometry: s.Model.Geometry(), Spectra: tune.SpectraOf(s.Calibration), Target: o.Target, Bits: o.Bits,
		Basis: o.Basis, Budget: o.Budget, Sinks: o.Sinks, Recent: o.Recent, Context: s.Options.Context, MaxEvaluations: o.MaxEvaluations,
		Mixed: o.Mixed}
	topts.Defaults()
	steps := topts.Steps(o.Uniform)
	if !o.Uniform { // probes the probe file holds are not measured again
		steps -= min(len(s.probeRead), steps-topts.MaxEvaluations)
	}
	s.SetSteps(steps + 1 + 2*len(o.Checks)) // and the chosen setting, and each check's two
	var res tune.Result
	var err error
	method := "proxy-probed sensitivity, Lagrangian rank/bits allocation, measured and bracketed on the budget"
	if o.Uniform {
		method = "uniform per-head rank grid (the baseline search)"
		res, err = tune.Uniform(ctx, s, topts)
	} else {
		res, err = tune.Search(ctx, s, topts)
	}
	if err != nil {
		return nil, res, err
	}
	best, err := s.MeasureSetting(ctx, res.Best.Setting, "chosen")
	if err != nil {
		return nil, res, err
	}
	p := s.Preset(res.Best.Setting, best, o.Target)
	p.TargetPPLDelta = &o.Budget
	p.Warning = imprecise(best, o.Budget)
	for _, c := range o.Checks {
		m, err := s.MeasureOn(ctx, c, res.Best.Setting)
		if err != nil {
			return nil, res, err
		}
		p.Checks = append(p.Checks, m)
	}
	p.Search = &kvfile.SearchInfo{Method: method, Evaluations: s.Evaluations, Proxies: s.Probes + s.ProbesRead, Seconds: int(time.Since(start).Seconds())}
	return p, res, nil
}

// Preset makes the preset of setting st as measured by m (on the session's
// kinds, in order): the model, the calibration, the texts and every kind's
// delta with its interval. target is the sides the setting was allowed to
// compress.
func (s *Session) Preset(st compress.Setting, m Measurement, target compress.Target) *kvfile.Preset {
	p := kvfile.NewPreset(kvfile.PresetSource{Name: s.Model.Meta.Name, File: s.Model.Path, SHA256: s.Model.SHA256,
		KVSource: s.Model.Meta.KVSource, CalibrationFile: s.Source.Path, CalibrationSHA256: s.Source.SHA256},
		s.Model.Geometry(), st, target, s.Options.Context, s.Baseline, m.Kinds[0].PPL, s.Windows.Info())
	for i, k := range m.Kinds {
		p.Kinds = append(p.Kinds, kvfile.Measurement{EvalInfo: s.Kinds[i].Windows.Info(), BaselinePPL: k.Baseline,
			CompressedPPL: k.PPL, PPLDelta: k.Delta, Low: k.Low, High: k.High})
	}
	return p
}

// imprecise says, when a measurement's interval is far wider than the budget
// it is held to (over twice its size), that the measurement cannot vouch for
// the budget, and how to make it precise; "" otherwise.
func imprecise(m Measurement, budget float64) string {
	for _, k := range m.Kinds {
		if k.High-k.Low > 2*budget {
			return fmt.Sprintf("the 90%% interval of the delta on %s is %+.2f%% to %+.2f%%, far wider than the budget %+.2f%%: "+
				"measure on more tokens before relying on it", k.Name, 100*k.Low, 100*k.High, 100*budget)
		}
	}
	return ""
}

// HeldOut refuses held-out text that is also calibration text.
func (s *Session) HeldOut() error {
	cal := map[string]string{}
	for _, t := range s.Calibration.Texts {
		cal[t.SHA256] = t.Path
	}
	for _, k := range s.Kinds {
		for _, f := range k.Windows.Files {
			if p, ok := cal[f.SHA256]; ok {
				return fmt.Errorf("kvtorch: %w: %s is also calibration text (%s): tune measures on held-out text only", ErrHeldOutIsCalibration, f.Path, p)
			}
		}
		if t, ok := texts.SharedText(s.Calibration.Texts, k.Windows.Lines); ok {
			return fmt.Errorf("kvtorch: %w: the held-out text holds the calibration text %s (most of its lines): tune measures on held-out text only",
				ErrHeldOutIsCalibration, t.Path)
		}
	}
	return nil
}

// MeasureOn measures a setting and the baseline on other held-out text, with
// the session's window length and token limit.
func (s *Session) MeasureOn(ctx context.Context, corpus *texts.Corpus, st compress.Setting) (kvfile.Measurement, error) {
	w, err := corpus.Windows(s.Model.Tokenizer, s.Model.Meta.VocabSize, s.Options.windows(s.Model))
	if err != nil {
		return kvfile.Measurement{}, fmt.Errorf("kvtorch: %w", err)
	}
	if err := calibration.Apply(s.Model.Model, s.Calibration, compress.Uncompressed(s.Model.Geometry())); err != nil {
		return kvfile.Measurement{}, err
	}
	name := kindName(w)
	base, err := s.tokenNLL(ctx, "check", "baseline on "+name, w)
	if err != nil {
		return kvfile.Measurement{}, err
	}
	if err := calibration.Apply(s.Model.Model, s.Calibration, st); err != nil {
		return kvfile.Measurement{}, err
	}
	comp, err := s.tokenNLL(ctx, "check", "chosen setting on "+name, w)
	if err != nil {
		return kvfile.Measurement{}, err
	}
	b, err := calibration.PerplexityOf(base)
	if err != nil {
		return kvfile.Measurement{}, err
	}
	c, err := calibration.PerplexityOf(comp)
	if err != nil {
		return kvfile.Measurement{}, err
	}
	lo, hi := DeltaInterval(base, comp)
	return kvfile.Measurement{EvalInfo: w.Info(), BaselinePPL: b, CompressedPPL: c, PPLDelta: c/b - 1, Low: lo, High: hi}, nil
}
