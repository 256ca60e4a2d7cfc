package main

import (
	"encoding/json"
	"fmt"
	"math"
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

// TestRecentWindow: eval --recent measures a setting with a recent window
// and writes it into the preset (recent_tokens, counted at full size);
// check measures the preset with its window; --recent 0 on the preset
// takes the window away; tune --recent keeps it in what it writes.
func TestRecentWindow(t *testing.T) {
	model, cal, evalDir := tinyCalibrated(t)
	dir := t.TempDir()
	preset := filepath.Join(dir, "p.json")
	args := []string{"--model", model, "--calibration", cal, "--texts", evalDir, "--seq-len", "64", "--rank-k", "4", "--rank-v", "4", "--bits", "4"}
	none := runEval(t, args...)
	with := runEval(t, append(args, "--recent", "16", "--output", preset)...)
	delta := func(r evalReport) float64 { return r.Rows[1].PPL/r.Baseline - 1 }
	if !strings.Contains(with.Rows[1].Label, "recent 16") || !(delta(with) < delta(none)) || !(with.Rows[1].Ratio < none.Rows[1].Ratio) {
		t.Fatalf("with a window of 16: %+v; without: %+v", with.Rows[1], none.Rows[1])
	}
	p, err := kvfile.LoadPreset(preset)
	if err != nil || p.RecentTokens != 16 || p.Version != kvfile.PresetVersion {
		t.Fatalf("preset: %v %+v", err, p)
	}
	code, out, e := runCLI("check", "--json", "--preset", preset, "--max-ppl-delta", "10")
	var rep struct {
		Delta float64 `json:"ppl_delta"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil || math.Abs(rep.Delta-delta(with)) > 1e-9 {
		t.Fatalf("check of a preset with a window: exit %d, %+v (eval measured %v)\n%s%s", code, rep, delta(with), out, e)
	}
	if again := runEval(t, "--model", model, "--preset", preset, "--texts", evalDir, "--seq-len", "64", "--recent", "0"); math.Abs(delta(again)-delta(none)) > 1e-9 {
		t.Fatalf("--recent 0 on the preset: %v, want %v", delta(again), delta(none))
	}
	tuned := filepath.Join(dir, "tuned.json")
	if code, _, e := runCLI("tune", "-q", "--model", model, "--calibration", cal, "--texts", evalDir, "--seq-len", "64",
		"--recent", "8", "--max-evaluations", "3", "--output", tuned); code != 0 {
		t.Fatal(e)
	}
	if p, err := kvfile.LoadPreset(tuned); err != nil || p.RecentTokens != 8 {
		t.Fatalf("tune --recent 8: %v %+v", err, p)
	}
	if code, _, e := runCLI("eval", "--model", model, "--calibration", cal, "--texts", evalDir, "--recent", "-1"); code != 2 || !strings.Contains(e, "--recent -1") {
		t.Fatalf("--recent -1: exit %d %s", code, e)
	}
}

// TestProbeFile: tune --probes keeps every probe; a second tune of the same
// model, calibration and text reads them all, measures none again and
// chooses the same preset; a file of other text or not a probe file is
// refused with one line.
func TestProbeFile(t *testing.T) {
	model, cal, evalDir := tinyCalibrated(t)
	dir := t.TempDir()
	probes := filepath.Join(dir, "probes.json")
	tune := func(out string, extra ...string) (int, string) {
		args := append([]string{"tune", "--model", model, "--calibration", cal, "--texts", evalDir, "--seq-len", "64",
			"--bits", "16,4", "--max-evaluations", "3", "--probes", probes, "--output", filepath.Join(dir, out)}, extra...)
		code, _, e := runCLI(args...)
		return code, e
	}
	if code, e := tune("a.json"); code != 0 || strings.Contains(e, "read from") {
		t.Fatalf("first tune: exit %d\n%s", code, e)
	}
	var f struct {
		Format string             `json:"format"`
		Probes map[string]float64 `json:"probes"`
	}
	b, _ := os.ReadFile(probes)
	a, err := kvfile.LoadPreset(filepath.Join(dir, "a.json"))
	if err != nil || json.Unmarshal(b, &f) != nil || f.Format != "kvtorch-probes" || len(f.Probes) != a.Search.Proxies || len(f.Probes) < 2*2+1 {
		t.Fatalf("probe file after the first tune: %v %+v (search %+v)", err, f, a.Search)
	}
	code, e := tune("b.json")
	want := fmt.Sprintf("probes: %d of the search's %d read from", len(f.Probes), len(f.Probes))
	if code != 0 || !strings.Contains(e, want) || strings.Contains(e, "probe: layer") {
		t.Fatalf("second tune: exit %d, want %q and no probe measured\n%s", code, want, e)
	}
	p, err := kvfile.LoadPreset(filepath.Join(dir, "b.json"))
	if err != nil || fmt.Sprint(p.Layers) != fmt.Sprint(a.Layers) || p.PPLDelta != a.PPLDelta {
		t.Fatalf("the same search on the same probes chose another preset: %v\n%+v\n%+v", err, p.Layers, a.Layers)
	}
	if code, e := tune("c.json", "--seq-len", "32"); code != 1 || !strings.Contains(e, "other text") || strings.Count(e, "kvtorch:") != 1 {
		t.Fatalf("probes of other windows: exit %d\n%s", code, e)
	}
	for _, bad := range []struct{ text, want string }{
		{`{"format": "kvtorch-preset"}`, "not a kvtorch probe file"},
		{`{"format": "kvtorch-probes", "version": 2, "probes": {}, "later": 1}`, "version 2"},
		{`{"format": "kvtorch-probes", "version": 1, "probes": {"s4": -1}}`, "another model"},
	} {
		os.WriteFile(probes, []byte(bad.text), 0o644)
		if code, e := tune("d.json"); code != 1 || !strings.Contains(e, bad.want) || strings.Count(e, "kvtorch:") != 1 {
			t.Fatalf("%s: exit %d, want %q\n%s", bad.text, code, bad.want, e)
		}
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
		"bits":      {edit("bits", func(m map[string]any) { m["layers"].([]any)[1].(map[string]any)["bits_v"] = 3.0 }), "bits_v is 3"},
		"layers":    {edit("layers", func(m map[string]any) { m["layers"] = []any{} }), "layers listed"},
		"model sha": {edit("modelsha", func(m map[string]any) { m["model_sha256"] = "abc" }), "sha256"},
		"missing":   {filepath.Join(dir, "absent.json"), "no such file"},
		// Issue 21: keys differing only in case (Go's json matched them to
		// the same field), a key twice, unknown keys, NaN, and a preset
		// relabelled with another kv_source.
		"upper-case key": {rawEdit(t, dir, "upper", raw, `"rank_k":`, `"RANK_K": 1, "rank_k":`), `unknown key "RANK_K"`},
		"key twice":      {rawEdit(t, dir, "twice", raw, `"rank_k":`, `"rank_k": 1, "rank_k":`), `key "rank_k" given twice`},
		"unknown key":    {edit("unknown", func(m map[string]any) { m["recent"] = 3.0 }), `unknown key "recent"`},
		"NaN":            {rawEdit(t, dir, "nan", raw, `"baseline_ppl":`, `"baseline_ppl": NaN, "x":`), "not a preset JSON"},
		"kv_source":      {edit("kvsource", func(m map[string]any) { m["kv_source"] = "post_rope" }), "the preset is of post_rope keys"},
	}
	for name, c := range cases {
		code, _, e := runCLI("check", "--preset", c.path)
		if code != 1 || !strings.Contains(e, c.want) || strings.Count(strings.TrimSpace(e), "\n") != 0 {
			t.Errorf("%s: exit %d, stderr %q; want exit 1 and one line with %q", name, code, e, c.want)
		}
	}
}

// rawEdit writes raw with the first old replaced by new, as name.json.
func rawEdit(t *testing.T, dir, name string, raw []byte, old, new string) string {
	t.Helper()
	s := string(raw)
	if !strings.Contains(s, old) {
		t.Fatalf("%s: %q is not in the preset", name, old)
	}
	p := filepath.Join(dir, name+".json")
	if err := os.WriteFile(p, []byte(strings.Replace(s, old, new, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTuneRefusesCalibrationTextOnStdin: calibration files concatenated on
// stdin (issue 21: `cat calib/*.txt | kvtorch tune --texts -` got past the
// guard, which compared files' sha256s) are recognised by their lines.
func TestTuneRefusesCalibrationTextOnStdin(t *testing.T) {
	model := filepath.Join(tinyModels(t), "good.pt")
	dir := t.TempDir()
	words := strings.Fields("the quick brown fox jumps over lazy dog func main return value cache layer key")
	var all []byte
	for f := 0; f < 3; f++ {
		var b strings.Builder
		for i := 0; i < 100; i++ {
			for j := 0; j < 9; j++ {
				b.WriteString(words[(f*7+i*3+j*j+i*j)%len(words)] + " ")
			}
			fmt.Fprintf(&b, "%d %d\n", f, i)
		}
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("c%d.txt", f)), []byte(b.String()), 0o644)
		all = append(all, b.String()...)
	}
	cal := filepath.Join(dir, "calib.pt")
	if code, _, e := runCLI("calibrate", "-q", "--model", model, "--texts", dir, "--output", cal, "--seq-len", "64"); code != 0 {
		t.Fatal(e)
	}
	stdin := filepath.Join(t.TempDir(), "stdin.txt")
	os.WriteFile(stdin, all, 0o644)
	f, err := os.Open(stdin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	saved := os.Stdin
	os.Stdin = f
	defer func() { os.Stdin = saved }()
	code, _, e := runCLI("tune", "-q", "--model", model, "--calibration", cal, "--texts", "-", "--seq-len", "32",
		"--output", filepath.Join(dir, "p.json"))
	if code != 1 || !strings.Contains(e, "holds the calibration text") {
		t.Fatalf("exit %d: %s", code, e)
	}
}
