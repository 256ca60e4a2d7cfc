package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvtorch/kvtorch/kvfile"
)

// tinyCalibrated calibrates the tiny model on texts and returns the model,
// calibration and a separate folder of evaluation texts.
func tinyCalibrated(t *testing.T) (model, cal, evalDir string) {
	t.Helper()
	model = filepath.Join(tinyModels(t), "good.pt")
	cal = filepath.Join(t.TempDir(), "calib.pt")
	if code, _, e := runCLI("calibrate", "-q", "--model", model, "--texts", writeTexts(t, 6), "--output", cal, "--max-length", "64"); code != 0 {
		t.Fatal(e)
	}
	evalDir = t.TempDir()
	for i := 0; i < 4; i++ {
		text := strings.Repeat("lazy dogs return 42 quick brown foxes; main func over the jumps ", 8+i)
		os.WriteFile(filepath.Join(evalDir, "e"+string(rune('a'+i))+".txt"), []byte(text), 0o644)
	}
	return model, cal, evalDir
}

func TestFullRankEqualsBaseline(t *testing.T) {
	model, cal, evalDir := tinyCalibrated(t)
	rep := runEval(t, "--model", model, "--calibration", cal, "--texts", evalDir, "--seq-len", "64",
		"--rank-k", "16", "--rank-v", "16", "--basis", "head")
	if len(rep.Rows) != 2 || rep.Tokens == 0 {
		t.Fatalf("report: %+v", rep)
	}
	if d := rep.Rows[1].PPL/rep.Baseline - 1; d > 1e-6 || d < -1e-6 || rep.Rows[1].Ratio != 1 {
		t.Fatalf("full rank: ppl %v vs baseline %v (ratio %v)", rep.Rows[1].PPL, rep.Baseline, rep.Rows[1].Ratio)
	}
}

func TestTuneThenCheck(t *testing.T) {
	model, cal, evalDir := tinyCalibrated(t)
	dir := t.TempDir()
	preset := filepath.Join(dir, "preset.json")
	code, _, e := runCLI("tune", "-q", "--model", model, "--calibration", cal, "--texts", evalDir, "--seq-len", "64",
		"--bits", "16,8,4", "--target-ppl-delta", "0.02", "--output", preset)
	if code != 0 {
		t.Fatal(e)
	}
	p, err := kvfile.LoadPreset(preset)
	if err != nil {
		t.Fatal(err)
	}
	if p.PPLDelta > 0.02 || p.CompressionRatio < 1 || p.Eval.SeqLen != 64 || p.BytesBefore != 2*2*(16+16)*2 {
		t.Fatalf("preset: delta %v ratio %v seq %d before %d", p.PPLDelta, p.CompressionRatio, p.Eval.SeqLen, p.BytesBefore)
	}
	if code, out, e := runCLI("check", "--preset", preset); code != 0 || !strings.Contains(out, "check passed") {
		t.Fatalf("check of tune's preset: exit %d\n%s%s", code, out, e)
	}
	// A budget below the preset's delta fails with a one-line reason and --json.
	if p.PPLDelta > 0 {
		code, out, e := runCLI("check", "--preset", preset, "--max-ppl-delta", "1e-9", "--json")
		var rep map[string]any
		if code != 1 || json.Unmarshal([]byte(out), &rep) != nil || rep["pass"] != false || !strings.Contains(e, "exceeds the budget") {
			t.Fatalf("tight budget: exit %d\n%s%s", code, out, e)
		}
	}
	// A changed calibration no longer matches the preset's sha256.
	other := filepath.Join(dir, "other.pt")
	if code, _, e := runCLI("calibrate", "-q", "--model", model, "--texts", writeTexts(t, 3), "--output", other, "--max-length", "64"); code != 0 {
		t.Fatal(e)
	}
	code, _, e = runCLI("check", "--preset", preset, "--calibration", other)
	if code != 1 || !strings.Contains(e, "sha256") {
		t.Fatalf("mismatched calibration: exit %d %s", code, e)
	}
}

func TestTuneRefusesCalibrationTextForEval(t *testing.T) {
	model := filepath.Join(tinyModels(t), "good.pt")
	texts := writeTexts(t, 4)
	cal := filepath.Join(t.TempDir(), "calib.pt")
	if code, _, e := runCLI("calibrate", "-q", "--model", model, "--texts", texts, "--output", cal); code != 0 {
		t.Fatal(e)
	}
	code, _, e := runCLI("tune", "-q", "--model", model, "--calibration", cal, "--texts", texts, "--seq-len", "32")
	if code != 1 || !strings.Contains(e, "also calibration text") {
		t.Fatalf("exit %d: %s", code, e)
	}
}

func TestBadPresets(t *testing.T) {
	model, cal, evalDir := tinyCalibrated(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "good.json")
	if code, _, e := runCLI("tune", "-q", "--uniform", "--model", model, "--calibration", cal, "--texts", evalDir, "--seq-len", "64", "--output", good); code != 0 {
		t.Fatal(e)
	}
	raw, _ := os.ReadFile(good)
	edit := func(name string, f func(m map[string]any)) string {
		var m map[string]any
		json.Unmarshal(raw, &m)
		f(m)
		b, _ := json.Marshal(m)
		p := filepath.Join(dir, name+".json")
		os.WriteFile(p, b, 0o644)
		return p
	}
	cases := map[string]struct {
		path string
		want string
	}{
		"not json":  {func() string { p := filepath.Join(dir, "junk.json"); os.WriteFile(p, []byte("{nope"), 0o644); return p }(), "not a preset JSON"},
		"format":    {edit("format", func(m map[string]any) { m["format"] = "other" }), "format"},
		"rank":      {edit("rank", func(m map[string]any) { m["layers"].([]any)[0].(map[string]any)["rank_k"] = 999.0 }), "out of range"},
		"bits":      {edit("bits", func(m map[string]any) { m["layers"].([]any)[1].(map[string]any)["bits_v"] = 3.0 }), "bits 3"},
		"layers":    {edit("layers", func(m map[string]any) { m["layers"] = []any{} }), "layers listed"},
		"model sha": {edit("modelsha", func(m map[string]any) { m["model_sha256"] = "abc" }), "sha256"},
		"missing":   {filepath.Join(dir, "absent.json"), "no such file"},
	}
	for name, c := range cases {
		code, _, e := runCLI("check", "--preset", c.path)
		if code != 1 || !strings.Contains(e, c.want) || strings.Count(strings.TrimSpace(e), "\n") != 0 {
			t.Errorf("%s: exit %d, stderr %q; want exit 1 and one line with %q", name, code, e, c.want)
		}
	}
}
