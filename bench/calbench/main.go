// Command calbench runs kvtorch and the Python pipeline it replaces
// (bench/oldtool/oldtool.py) side by side on the same model and texts, in one
// invocation, and prints Markdown for docs/BENCHMARKS.md:
//
//   - the cost of the statistics on top of the forward passes;
//   - calibration wall time and peak RSS, at 1x, 4x and 16x the tokens (or
//     1x only, -scaling=false);
//   - the compression table within a perplexity budget: the old tool's
//     method, uniform ranks, kvtorch tune at 16 bits and with 16/8/4-bit
//     latents, and plain quantization without projection; each measured on
//     the held-out text tune used and on text of another kind (-check);
//   - the figures PREFIX-tradeoff.png and PREFIX-spectra.png.
//
// Run by `make bench` (after `make build`), from the repository root, once
// for the reference model and once for the real model.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/kvtorch/kvtorch"
	"github.com/kvtorch/kvtorch/bench/internal/stat"
	"github.com/kvtorch/kvtorch/calibration"
	"github.com/kvtorch/kvtorch/kvfile"
	"github.com/kvtorch/kvtorch/plot"
	"github.com/kvtorch/kvtorch/texts"
	"github.com/kvtorch/kvtorch/torch"
)

var (
	model     = flag.String("model", "build/refmodel.pt", "kvtorch model")
	name      = flag.String("name", "reference model", "the model's name in the tables")
	calibDir  = flag.String("calib", "testdata/calib", "calibration texts")
	evalDir   = flag.String("eval", "testdata/eval", "held-out texts tune measures on")
	checkDir  = flag.String("check", "testdata/legal", "held-out texts of another kind")
	baseFiles = flag.Int("base-files", 8, "calibration files in the 1x set")
	maxTokens = flag.Int("max-tokens", 16384, "held-out tokens per perplexity evaluation")
	budget    = flag.Float64("budget", 0.05, "perplexity budget")
	figures   = flag.String("figures", "docs/benchmarks/refmodel", "path prefix of the PNG figures")
	scaling   = flag.Bool("scaling", true, "calibrate at 4x and 16x the tokens too")
	python    = flag.Bool("python-tune", true, "run the Python pipeline's own search (re-calibrating per rank)")
	onlyCost  = flag.Bool("only-overhead", false, "measure only the statistics overhead")
	workdir   = flag.String("workdir", "", "keep the calibrations and presets here (p<row>.json; default: a temporary folder)")
)

type run struct {
	wall  time.Duration
	rssKB int64
	out   []byte
}

// measure runs a command and returns its wall time and peak RSS.
func measure(name string, args ...string) (run, error) {
	cmd := exec.Command(name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	out, err := cmd.Output()
	r := run{wall: time.Since(start), out: out}
	if err != nil {
		return r, fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.rssKB = ru.Maxrss
	}
	return r, nil
}

func main() {
	flag.Parse()
	if err := bench(); err != nil {
		fmt.Fprintln(os.Stderr, "calbench:", err)
		os.Exit(1)
	}
}

const kv = "bin/kvtorch"

func bench() error {
	py := os.Getenv("KVTORCH_PYTHON")
	if py == "" {
		return fmt.Errorf("KVTORCH_PYTHON is not set (run through `make bench`)")
	}
	fmt.Printf("## %s\n\n", *name)
	if *onlyCost {
		return statsOverhead()
	}
	tmp := *workdir
	if tmp == "" {
		var err error
		if tmp, err = os.MkdirTemp("", "calbench"); err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
	} else if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	if err := calibrationCost(py, tmp); err != nil {
		return err
	}
	if err := compressionTable(py, tmp); err != nil {
		return err
	}
	// Last: it runs the model in this process, and a child's peak RSS
	// starts from its parent's (Linux carries the high-water mark through
	// fork and exec), which would hide the commands' own peaks above.
	return statsOverhead()
}

func calibrationCost(py, tmp string) error {
	files, _ := filepath.Glob(filepath.Join(*calibDir, "*.txt"))
	sort.Strings(files)
	if len(files) < *baseFiles {
		return fmt.Errorf("%d calibration files, want %d", len(files), *baseFiles)
	}
	base := files[:*baseFiles]
	mults := []int{1, 4, 16}
	if !*scaling {
		mults = []int{1}
	}
	fmt.Println("### Calibration cost")
	fmt.Println()
	fmt.Println("| tokens | kvtorch calibrate | Python pipeline (rank 48) | time ratio | kvtorch peak RSS | Python peak RSS | RSS ratio |")
	fmt.Println("| --- | --- | --- | --- | --- | --- | --- |")
	for _, mult := range mults {
		var texts []string
		for i := 0; i < mult; i++ {
			texts = append(texts, base...)
		}
		args := []string{"calibrate", "-q", "--json", "--model", *model, "--output", filepath.Join(tmp, "k.pt")}
		for _, t := range texts {
			args = append(args, "--texts", t)
		}
		k, err := measure(kv, args...)
		if err != nil {
			return err
		}
		var sum struct {
			Tokens int64 `json:"tokens"`
		}
		json.Unmarshal(k.out, &sum)
		o, err := measure(py, append([]string{"bench/oldtool/oldtool.py", "calibrate", "--model", *model, "--rank", "48",
			"--out", filepath.Join(tmp, "o.pt"), "--texts"}, texts...)...)
		if err != nil {
			return err
		}
		fmt.Printf("| %d (%dx) | %.1f s (%.0f tok/s) | %.1f s | %.2fx faster | %d MiB | %d MiB | %.2fx less |\n", sum.Tokens, mult,
			k.wall.Seconds(), float64(sum.Tokens)/k.wall.Seconds(), o.wall.Seconds(), o.wall.Seconds()/k.wall.Seconds(),
			k.rssKB>>10, o.rssKB>>10, float64(o.rssKB)/float64(k.rssKB))
	}
	fmt.Println()
	return nil
}

// row is one method of the compression table.
type row struct {
	name, short, cal string
	tune             []string // kvtorch tune arguments, or
	eval             []string // kvtorch eval arguments writing one setting as a preset
}

func compressionTable(py, tmp string) error {
	fmt.Printf("### Compression within %+.0f%% perplexity\n\n", 100**budget)
	cal := filepath.Join(tmp, "calib.pt")   // joint and per-head bases, the first 4 tokens left out
	old := filepath.Join(tmp, "calib-0.pt") // per-head bases pooled over the heads, every token (the old tool's)
	per := filepath.Join(tmp, "calib-h.pt") // per-head bases, every token
	kcal, err := measure(kv, "calibrate", "-q", "--model", *model, "--texts", *calibDir, "--output", cal, "--plot", *figures+"-spectra.png")
	if err != nil {
		return err
	}
	if _, err := measure(kv, "calibrate", "-q", "--model", *model, "--texts", *calibDir, "--output", old, "--shared-heads", "--sinks", "0"); err != nil {
		return err
	}
	if _, err := measure(kv, "calibrate", "-q", "--model", *model, "--texts", *calibDir, "--output", per, "--sinks", "0"); err != nil {
		return err
	}
	budgetArg := fmt.Sprint(*budget)
	rows := []row{
		{"(a) the old tool's method: V only, one basis pooled over the heads, uniform rank grid, 16/8-bit, no sinks", "(a) old method", old,
			[]string{"--uniform", "--target", "v", "--basis", "head", "--bits", "16,8", "--sinks", "0"}, nil},
		{"(b) uniform rank grid, K and V, a basis per head, 16-bit, no sinks", "(b) uniform K+V", per,
			[]string{"--uniform", "--target", "kv", "--basis", "head", "--bits", "16", "--sinks", "0"}, nil},
		{"(d) kvtorch tune, 16-bit latents (joint bases, 4 sinks)", "(d) tune 16-bit", cal, []string{"--bits", "16"}, nil},
		{"(e) kvtorch tune, 16/8/4-bit latents (joint bases, 4 sinks)", "(e) tune 16/8/4-bit", cal, []string{"--bits", "16,8,4"}, nil},
		{"(f) plain per-token 8-bit K and V, no projection (4 sinks)", "", cal, nil, []string{"--basis", "none", "--bits", "8"}},
		{"(f) plain per-token 4-bit K and V, no projection (4 sinks)", "", cal, nil, []string{"--basis", "none", "--bits", "4"}},
	}
	common := []string{"--model", *model, "--texts", *evalDir, "--max-tokens", fmt.Sprint(*maxTokens)}
	var series []plot.Series
	fmt.Printf("Held-out text tune measures on: %s; text of another kind: %s; %d tokens each, seq-len 512; ratios at a context of 4,096 tokens.\n\n",
		*evalDir, *checkDir, *maxTokens)
	fmt.Println("| method | compression | delta (tune text) | delta (other kind) | evaluations (+ probes) | wall time |")
	fmt.Println("| --- | --- | --- | --- | --- | --- |")
	for i, r := range rows {
		preset := filepath.Join(tmp, fmt.Sprintf("p%d.json", i))
		cands := filepath.Join(tmp, fmt.Sprintf("c%d.json", i))
		var res run
		if r.tune != nil {
			args := append([]string{"tune", "-q", "--calibration", r.cal, "--target-ppl-delta", budgetArg, "--output", preset,
				"--candidates", cands}, common...)
			res, err = measure(kv, append(args, r.tune...)...)
		} else {
			args := append([]string{"eval", "--json", "--calibration", r.cal, "--output", preset}, common...)
			res, err = measure(kv, append(args, r.eval...)...)
		}
		if err != nil {
			return err
		}
		p, err := kvfile.LoadPreset(preset)
		if err != nil {
			return err
		}
		other, err := measure(kv, "eval", "--json", "--model", *model, "--calibration", r.cal, "--preset", preset,
			"--texts", *checkDir, "--max-tokens", fmt.Sprint(*maxTokens))
		if err != nil {
			return err
		}
		var rep struct {
			Rows []struct {
				Delta float64 `json:"ppl_delta"`
			} `json:"rows"`
		}
		if err := json.Unmarshal(other.out, &rep); err != nil || len(rep.Rows) != 2 {
			return fmt.Errorf("eval on %s: %v", *checkDir, err)
		}
		evals := "1"
		if p.Search != nil {
			evals = fmt.Sprint(p.Search.Evaluations)
			if p.Search.Proxies > 0 {
				evals += fmt.Sprintf(" + %d", p.Search.Proxies)
			}
		}
		fmt.Printf("| %s | %.2fx | %+.2f%% | %+.2f%% | %s | %.0f s |\n", r.name, p.CompressionRatio, 100*p.PPLDelta,
			100*rep.Rows[1].Delta, evals, res.wall.Seconds())
		if r.tune != nil {
			var rows []struct {
				Delta float64 `json:"ppl_delta"`
				Ratio float64 `json:"compression_ratio"`
				Probe bool    `json:"probe"`
			}
			b, _ := os.ReadFile(cands)
			json.Unmarshal(b, &rows)
			s := plot.Series{Name: r.short, Chosen: &plot.Point{Ratio: p.CompressionRatio, Delta: p.PPLDelta}}
			for _, row := range rows {
				if !row.Probe {
					s.Points = append(s.Points, plot.Point{Ratio: row.Ratio, Delta: row.Delta})
				}
			}
			series = append(series, s)
		}
	}
	if *python {
		// The Python pipeline's own search over the same grid, re-calibrating per rank.
		o, err := measure(py, "bench/oldtool/oldtool.py", "tune", "--model", *model, "--calib-texts", *calibDir, "--texts", *evalDir,
			"--target", "v", "--target-ppl-delta", budgetArg, "--max-tokens", fmt.Sprint(*maxTokens), "--workdir", tmp)
		if err != nil {
			return err
		}
		var old struct {
			Best *struct {
				Delta float64 `json:"ppl_delta"`
				Ratio float64 `json:"compression_ratio"`
			} `json:"best"`
			Candidates []struct {
				Delta float64 `json:"ppl_delta"`
				Ratio float64 `json:"compression_ratio"`
			} `json:"candidates"`
		}
		if err := json.Unmarshal(o.out, &old); err != nil {
			return fmt.Errorf("oldtool tune output: %v", err)
		}
		s := plot.Series{Name: "Python pipeline (old tool)"}
		for _, cnd := range old.Candidates {
			s.Points = append(s.Points, plot.Point{Ratio: cnd.Ratio, Delta: cnd.Delta})
		}
		ratio, delta := 1.0, 0.0
		if old.Best != nil {
			ratio, delta = old.Best.Ratio, old.Best.Delta
			s.Chosen = &plot.Point{Ratio: ratio, Delta: delta}
		}
		series = append([]plot.Series{s}, series...)
		fmt.Printf("| the Python pipeline (old tool): same grid as (a), re-calibrating per rank | %.2fx | %+.2f%% | | %d | %.0f s |\n",
			ratio, 100*delta, len(old.Candidates), o.wall.Seconds())
	}
	fmt.Printf("\nkvtorch's calibration for these runs took %.1f s (once).\n\n", kcal.wall.Seconds())
	return plot.Tradeoff(*figures+"-tradeoff.png", *name+": perplexity against KV-cache compression", *budget, series)
}

// statsOverhead times the forward passes of calibration with and without the
// statistics hook, alternating, on the same batches.
func statsOverhead() error {
	m, err := kvtorch.Open(*model, kvtorch.OpenOptions{})
	if err != nil {
		return err
	}
	defer m.Close()
	corpus, err := texts.ReadCorpus([]string{*calibDir}, nil)
	if err != nil {
		return err
	}
	seqs, _, err := corpus.Sequences(m.Tokenizer, m.Meta.VocabSize, corpus.Docs[:min(len(corpus.Docs), *baseFiles)],
		texts.SequenceOptions{MaxLength: 512, MinTokens: 32, BOS: m.BOS()})
	if err != nil {
		return err
	}
	opts := calibration.RunOptions{BatchSize: 8}
	ctx := context.Background()
	var bare, stats []float64
	for round := 0; round < 5; round++ {
		start := time.Now()
		if err := calibration.Run(ctx, m.Model, seqs, opts); err != nil {
			return err
		}
		bare = append(bare, time.Since(start).Seconds())
		st := calibration.NewStats(m.Model, torch.Float32, kvtorch.DefaultSinks)
		start = time.Now()
		err := calibration.Run(ctx, m.Model, seqs, opts, st)
		stats = append(stats, time.Since(start).Seconds())
		st.Close()
		if err != nil {
			return err
		}
	}
	b, s := stat.Median(bare[1:]), stat.Median(stats[1:])
	fmt.Println("### Cost of the statistics on top of the forward passes")
	fmt.Println()
	fmt.Printf("%d calibration sequences, batch 8, CPU; median of 4 rounds after a warm-up, alternating:\n\n", len(seqs))
	fmt.Println("| forward passes only | forward + statistics (float32, joint) | overhead |")
	fmt.Println("| --- | --- | --- |")
	fmt.Printf("| %.2f s | %.2f s | %+.1f%% |\n\n", b, s, 100*(s/b-1))
	return nil
}
