// Command calbench runs kvtorch and the Python pipeline it replaces
// (bench/oldtool/oldtool.py) side by side on the same model and texts, in one
// invocation, and prints Markdown for docs/BENCHMARKS.md:
//
//   - calibration wall time and peak RSS at 1x, 4x and 16x the tokens;
//   - the search for a preset within a perplexity budget: the old tool's grid
//     (re-calibrating for every rank) against kvtorch's, and kvtorch tune;
//   - the figures docs/benchmarks/tradeoff.png and spectra.png.
//
// Run by `make bench` (after `make build`), from the repository root.
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
	"github.com/kvtorch/kvtorch/torch"
)

var (
	model     = flag.String("model", "build/refmodel.pt", "kvtorch model")
	calibDir  = flag.String("calib", "testdata/calib", "calibration texts")
	evalDir   = flag.String("eval", "testdata/eval", "held-out texts")
	baseFiles = flag.Int("base-files", 8, "calibration files in the 1x set")
	maxTokens = flag.Int("max-tokens", 16384, "held-out tokens per perplexity evaluation")
	budget    = flag.Float64("budget", 0.05, "perplexity budget")
	outDir    = flag.String("figures", "docs/benchmarks", "folder for the PNG figures")
	skipScale = flag.Bool("skip-scaling", false, "skip the 1x/4x/16x calibration runs")
	onlyCost  = flag.Bool("only-overhead", false, "measure only the statistics overhead")
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

func bench() error {
	py := os.Getenv("KVTORCH_PYTHON")
	if py == "" {
		return fmt.Errorf("KVTORCH_PYTHON is not set (run through `make bench`)")
	}
	if err := statsOverhead(); err != nil {
		return err
	}
	if *onlyCost {
		return nil
	}
	kv := "bin/kvtorch"
	tmp, err := os.MkdirTemp("", "calbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	files, _ := filepath.Glob(filepath.Join(*calibDir, "*.txt"))
	sort.Strings(files)
	if len(files) < *baseFiles {
		return fmt.Errorf("%d calibration files, want %d", len(files), *baseFiles)
	}
	base := files[:*baseFiles]

	if !*skipScale {
		fmt.Println("### Calibration cost as the text grows")
		fmt.Println()
		fmt.Println("| tokens | kvtorch calibrate | Python pipeline (rank 48) | time ratio | kvtorch peak RSS | Python peak RSS | RSS ratio |")
		fmt.Println("| --- | --- | --- | --- | --- | --- | --- |")
		for _, mult := range []int{1, 4, 16} {
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
			fmt.Printf("| %d (%dx) | %.1f s | %.1f s | %.2fx faster | %d MiB | %d MiB | %.2fx less |\n", sum.Tokens, mult,
				k.wall.Seconds(), o.wall.Seconds(), o.wall.Seconds()/k.wall.Seconds(), k.rssKB>>10, o.rssKB>>10,
				float64(o.rssKB)/float64(k.rssKB))
		}
		fmt.Println()
	}

	fmt.Printf("### Finding a preset within %+.0f%% perplexity\n\n", 100**budget)
	common := []string{"--model", *model, "--texts", *evalDir, "--max-tokens", fmt.Sprint(*maxTokens), "-q"}
	cal := filepath.Join(tmp, "calib.pt")
	shared := filepath.Join(tmp, "shared.pt")
	kcal, err := measure(kv, "calibrate", "-q", "--model", *model, "--texts", *calibDir, "--output", cal, "--plot", filepath.Join(*outDir, "spectra.png"))
	if err != nil {
		return err
	}
	if _, err := measure(kv, "calibrate", "-q", "--model", *model, "--texts", *calibDir, "--output", shared, "--shared-heads"); err != nil {
		return err
	}
	type method struct {
		name, cal string
		args      []string
	}
	methods := []method{
		{"(a) old method in kvtorch: V only, heads shared, uniform rank, 16/8-bit", shared, []string{"--uniform", "--target", "v", "--bits", "16,8"}},
		{"(b) uniform rank, K and V, per-head bases, 16-bit", cal, []string{"--uniform", "--target", "kv", "--bits", "16"}},
		{"(c) kvtorch tune, 16-bit", cal, []string{"--bits", "16"}},
		{"(d) kvtorch tune, 16/8/4-bit latents", cal, []string{"--bits", "16,8,4"}},
	}
	var series []plot.Series
	fmt.Println("| method | compression | perplexity delta | evaluations | wall time |")
	fmt.Println("| --- | --- | --- | --- | --- |")
	for i, m := range methods {
		preset := filepath.Join(tmp, fmt.Sprintf("p%d.json", i))
		cands := filepath.Join(tmp, fmt.Sprintf("c%d.json", i))
		args := append([]string{"tune", "--calibration", m.cal, "--target-ppl-delta", fmt.Sprint(*budget), "--output", preset, "--candidates", cands}, common...)
		r, err := measure(kv, append(args, m.args...)...)
		if err != nil {
			return err
		}
		p, err := kvfile.LoadPreset(preset)
		if err != nil {
			return err
		}
		fmt.Printf("| %s | %.2fx | %+.2f%% | %d | %.0f s |\n", m.name, p.CompressionRatio, 100*p.PPLDelta, p.Search.Evaluations, r.wall.Seconds())
		var rows []struct {
			Delta float64 `json:"ppl_delta"`
			Ratio float64 `json:"compression_ratio"`
		}
		b, _ := os.ReadFile(cands)
		json.Unmarshal(b, &rows)
		s := plot.Series{Name: m.name, Chosen: &plot.Point{Ratio: p.CompressionRatio, Delta: p.PPLDelta}}
		for _, row := range rows {
			s.Points = append(s.Points, plot.Point{Ratio: row.Ratio, Delta: row.Delta})
		}
		series = append(series, s)
	}
	// The Python pipeline's own search over the same grid, re-calibrating per rank.
	o, err := measure(py, "bench/oldtool/oldtool.py", "tune", "--model", *model, "--calib-texts", *calibDir, "--texts", *evalDir,
		"--target", "v", "--target-ppl-delta", fmt.Sprint(*budget), "--max-tokens", fmt.Sprint(*maxTokens), "--workdir", tmp)
	if err != nil {
		return err
	}
	var old struct {
		Best *struct {
			Rank  int     `json:"rank"`
			Bits  int     `json:"bits"`
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
	s := plot.Series{Name: "Python pipeline (old tool): V only, shared heads, rank grid x 16/8-bit"}
	for _, cnd := range old.Candidates {
		s.Points = append(s.Points, plot.Point{Ratio: cnd.Ratio, Delta: cnd.Delta})
	}
	ratio, delta := 1.0, 0.0
	if old.Best != nil {
		ratio, delta = old.Best.Ratio, old.Best.Delta
		s.Chosen = &plot.Point{Ratio: ratio, Delta: delta}
	}
	series = append([]plot.Series{s}, series...)
	fmt.Printf("| Python pipeline (old tool): same grid, re-calibrating per rank | %.2fx | %+.2f%% | %d | %.0f s |\n",
		ratio, 100*delta, len(old.Candidates), o.wall.Seconds())
	fmt.Printf("\nkvtorch's calibration for these runs took %.1f s (once); the old pipeline re-calibrated %d times.\n",
		kcal.wall.Seconds(), 7)
	return plot.Tradeoff(filepath.Join(*outDir, "tradeoff.png"), "reference model: perplexity against KV-cache compression", *budget, series)
}

// statsOverhead times the forward passes of calibration with and without the
// statistics hook, alternating, on the same batches.
func statsOverhead() error {
	m, err := kvtorch.Open(*model, kvtorch.OpenOptions{})
	if err != nil {
		return err
	}
	defer m.Close()
	texts, err := kvfile.ReadCorpus([]string{*calibDir}, nil)
	if err != nil {
		return err
	}
	seqs, _, err := texts.Encode(m.Tokenizer, m.Meta.VocabSize, texts.Docs, kvfile.EncodeOptions{MaxLength: 512, MinTokens: 32})
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
	fmt.Printf("Calibration texts (%d sequences), batch 8, CPU; median of 4 rounds after a warm-up, alternating:\n\n", len(seqs))
	fmt.Println("| forward passes only | forward + statistics (float32) | overhead |")
	fmt.Println("| --- | --- | --- |")
	fmt.Printf("| %.2f s | %.2f s | %+.1f%% |\n\n", b, s, 100*(s/b-1))
	return nil
}
