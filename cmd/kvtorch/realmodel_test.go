package main

import (
	"bufio"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// realModel is a real pretrained model `make real-model` exports: its
// folder, named by the environment variable env (KVTORCH_REAL_MODEL_DIR:
// SmolLM2-135M-Instruct; KVTORCH_GEMMA_DIR: Gemma-3-270M).
func realModel(t *testing.T, env string) string {
	dir := os.Getenv(env)
	if dir == "" || os.Getenv("KVTORCH_PYTHON") == "" {
		t.Skip(env + " or KVTORCH_PYTHON is not set: the real models come with `make test` (make real-model)")
	}
	if _, err := os.Stat(filepath.Join(dir, "model.pt")); err != nil {
		t.Fatalf("the real model is missing (run `make real-model`): %v", err)
	}
	return dir
}

// TestRealModel runs the real pretrained models end to end: kvtorch's
// tokenizer against HuggingFace's, calibration on a few thousand tokens,
// perplexity against an independent transformers computation (Gemma's with
// the BOS it expects before every window), and a preset through
// KVTorchCache, in perplexity, bytes and generation.
func TestRealModel(t *testing.T) {
	for _, c := range []struct {
		name, env    string
		rankK, rankV string // of 192 (SmolLM2: 3 KV heads of 64) and 256 (Gemma: 1 of 256)
		minTok       int64
	}{
		{"SmolLM2-135M", "KVTORCH_REAL_MODEL_DIR", "96", "144", 2000},
		{"Gemma-3-270M", "KVTORCH_GEMMA_DIR", "128", "192", 2000},
	} {
		t.Run(c.name, func(t *testing.T) { realModelEndToEnd(t, realModel(t, c.env), c.name, c.rankK, c.rankV, c.minTok) })
	}
}

func realModelEndToEnd(t *testing.T, dir, name, rankK, rankV string, minTokens int64) {
	model := filepath.Join(dir, "model.pt")
	calibTexts := []string{"../../testdata/calib/002-prose.txt", "../../testdata/calib/003-technical.txt"}
	evalTexts := []string{"../../testdata/legal/Apache-2.0.txt", "../../testdata/eval/004-prose.txt"}
	const seqLen = 512

	// 1. kvtorch tokenize (compared with HF's ids, file by file, below).
	code, tokOut, e := runCLI(append([]string{"tokenize", "--json", "--no-special", "--model", model}, append(calibTexts, evalTexts...)...)...)
	if code != 0 {
		t.Fatal(e)
	}

	// 2. Calibrate on a few thousand tokens.
	cal := filepath.Join(t.TempDir(), "calib.pt")
	calArgs := []string{"calibrate", "-q", "--json", "--model", model, "--output", cal}
	for _, f := range calibTexts {
		calArgs = append(calArgs, "--texts", f)
	}
	code, calOut, e := runCLI(calArgs...)
	if code != 0 {
		t.Fatal(e)
	}
	var sum struct {
		Tokens int64 `json:"tokens"`
	}
	json.Unmarshal([]byte(calOut), &sum)
	if sum.Tokens < minTokens {
		t.Fatalf("calibrated on %d tokens", sum.Tokens)
	}

	// 3. Perplexity: kvtorch's baseline is the transformers model's; a
	// compressed setting costs something, finitely.
	evalArgs := []string{"--model", model, "--calibration", cal, "--seq-len", "512", "--max-tokens", "2044",
		"--rank-k", rankK, "--rank-v", rankV, "--bits", "8"}
	for _, f := range append(calibTexts, evalTexts...) {
		evalArgs = append(evalArgs, "--texts", f)
	}
	preset := filepath.Join(t.TempDir(), "preset.json") // the setting, for step 4
	rep := runEval(t, append(evalArgs, "--output", preset)...)
	c := rep.Rows[1]
	if !(c.PPL > rep.Baseline) || math.IsInf(c.PPL, 0) || c.Ratio < 2.5 {
		t.Fatalf("joint ranks %s/%s with 8-bit latents: perplexity %v (baseline %v), ratio %v", rankK, rankV, c.PPL, rep.Baseline, c.Ratio)
	}

	// 4. The same setting as a preset, applied by the Python package's
	// KVTorchCache inside transformers' own model: the perplexity kvtorch
	// measured (up to the cache's float16 scales), at the bytes it counted.
	// The independent computation, with transformers and tokenizers alone
	// (and kvtorch's Python package for the cache), in one process.
	args := append([]string{"testdata/hf_reference.py", "--preset", preset, filepath.Join(dir, "hf"), "512", "2044"},
		append(calibTexts, evalTexts...)...)
	cmd := exec.Command(os.Getenv("KVTORCH_PYTHON"), args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("hf_reference.py: %v", err)
	}
	var ref struct {
		IDs        map[string][]int `json:"ids"`
		PPL        float64          `json:"ppl"`
		Tokens     int              `json:"tokens"`
		PPLCache   float64          `json:"ppl_cache"`
		CacheBytes int64            `json:"cache_bytes"`
		Generated  map[string][]int `json:"generated"`
	}
	if err := json.Unmarshal(out, &ref); err != nil {
		t.Fatal(err)
	}
	checkIDs(t, tokOut, ref.IDs)
	if rep.Tokens != ref.Tokens || math.Abs(rep.Baseline/ref.PPL-1) > 1e-4 {
		t.Fatalf("baseline perplexity %v over %d tokens, transformers %v over %d", rep.Baseline, rep.Tokens, ref.PPL, ref.Tokens)
	}
	t.Logf("%s: baseline %.4f (transformers %.4f) on %d tokens; K %s / V %s, 8-bit: %.4f (%+.2f%%) at %.2fx",
		name, rep.Baseline, ref.PPL, rep.Tokens, rankK, rankV, c.PPL, 100*(c.PPL/rep.Baseline-1), c.Ratio)
	var p struct {
		Sinks  int64   `json:"sink_tokens"`
		Before int64   `json:"bytes_per_token_before"`
		After  int64   `json:"bytes_per_token_compressed"`
		PPL    float64 `json:"compressed_ppl"`
	}
	b, err := os.ReadFile(preset)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	if math.Abs(ref.PPLCache/p.PPL-1) > 1e-3 {
		t.Fatalf("through KVTorchCache: perplexity %v, kvtorch eval %v", ref.PPLCache, p.PPL)
	}
	if want := p.Sinks*p.Before + seqLen*p.After; ref.CacheBytes != want {
		t.Fatalf("KVTorchCache holds %d bytes for %d tokens, the preset counts %d", ref.CacheBytes, seqLen, want)
	}
	g := ref.Generated
	if len(g["kvtorch"]) != 20 {
		t.Fatalf("generate with KVTorchCache gave %d tokens", len(g["kvtorch"]))
	}
	t.Logf("through KVTorchCache: %.4f (kvtorch eval %.4f); greedy tokens %v (DynamicCache %v)", ref.PPLCache, p.PPL,
		g["kvtorch"], g["dynamic"])
}

// checkIDs compares kvtorch tokenize --json output with HF's ids by file.
func checkIDs(t *testing.T, tokOut string, hf map[string][]int) {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(tokOut))
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	n := 0
	for sc.Scan() {
		var rec struct {
			Source string `json:"source"`
			IDs    []int  `json:"input_ids"`
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(rec.IDs, hf[rec.Source]) {
			t.Fatalf("%s: kvtorch's %d ids differ from HuggingFace's %d", rec.Source, len(rec.IDs), len(hf[rec.Source]))
		}
		n += len(rec.IDs)
	}
	if n == 0 {
		t.Fatal("no ids")
	}
}
