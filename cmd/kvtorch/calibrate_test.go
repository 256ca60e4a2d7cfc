package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kvtorch/kvtorch/kvfile"
)

var (
	tinyOnce sync.Once
	tinyDir  string
	tinyErr  error
)

// tinyModels builds calibration/testdata/models.py's models once.
func tinyModels(t *testing.T) string {
	py := os.Getenv("KVTORCH_PYTHON")
	if py == "" {
		t.Skip("KVTORCH_PYTHON is not set: the test models need Python torch (run `make test`)")
	}
	tinyOnce.Do(func() {
		tinyDir, tinyErr = os.MkdirTemp("", "kvtcli")
		if tinyErr == nil {
			var out []byte
			out, tinyErr = exec.Command(py, "../../calibration/testdata/models.py", tinyDir).CombinedOutput()
			if tinyErr != nil {
				tinyErr = &cmdError{tinyErr, string(out)}
			}
		}
	})
	if tinyErr != nil {
		t.Fatal(tinyErr)
	}
	return tinyDir
}

type cmdError struct {
	err error
	out string
}

func (e *cmdError) Error() string { return e.err.Error() + "\n" + e.out }

// writeTexts writes a folder of texts long enough for the tiny tokenizer.
func writeTexts(t *testing.T, n int) string {
	dir := t.TempDir()
	for i := 0; i < n; i++ {
		text := strings.Repeat("the quick brown fox jumps over the lazy dog; func main() { return 42 } ", 3+i)
		os.WriteFile(filepath.Join(dir, "t"+string(rune('a'+i))+".txt"), []byte(text), 0o644)
	}
	return dir
}

func TestCalibrateTinyModel(t *testing.T) {
	models := tinyModels(t)
	texts := writeTexts(t, 5)
	out := filepath.Join(t.TempDir(), "calib.pt")
	code, stdout, stderr := runCLI("calibrate", "--model", filepath.Join(models, "good.pt"), "--texts", texts,
		"--output", out, "--max-length", "32", "--batch-size", "3", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var summary struct {
		Tokens            int64 `json:"tokens"`
		ExplainedVariance []struct {
			K struct {
				PerHead []float64 `json:"per_head"`
				Joint   []float64 `json:"joint"`
			} `json:"k"`
		} `json:"explained_variance"`
	}
	if err := json.Unmarshal([]byte(stdout), &summary); err != nil {
		t.Fatalf("--json: %v\n%s", err, stdout)
	}
	cal, err := kvfile.LoadCalibration(out)
	if err != nil {
		t.Fatal(err)
	}
	if cal.Tokens != summary.Tokens || len(summary.ExplainedVariance) != 2 || len(cal.Texts) != 5 ||
		len(summary.ExplainedVariance[1].K.Joint) != 3 || !cal.HasJoint() {
		t.Fatalf("summary %+v, calibration tokens %d, texts %d", summary, cal.Tokens, len(cal.Texts))
	}
	if !strings.Contains(stderr, "explained variance") {
		t.Errorf("no summary on stderr:\n%s", stderr)
	}
}

func TestCalibrateShardsMerge(t *testing.T) {
	models := tinyModels(t)
	dir := t.TempDir()
	texts := writeTexts(t, 6)
	files, _ := filepath.Glob(filepath.Join(texts, "*.txt"))
	model := filepath.Join(models, "good.pt")
	common := []string{"--model", model, "--max-length", "32", "--accumulate", "float64", "-q"}
	whole := filepath.Join(dir, "whole.pt")
	if code, _, e := runCLI(append([]string{"calibrate", "--texts", texts, "--out", whole}, common...)...); code != 0 {
		t.Fatal(e)
	}
	var shards []string
	for i, part := range [][]string{files[:3], files[3:]} {
		s := filepath.Join(dir, "stats"+string(rune('0'+i))+".pt")
		args := []string{"calibrate", "--stats-out", s, "--stats-only"}
		for _, f := range part {
			args = append(args, "--texts", f)
		}
		if code, _, e := runCLI(append(args, common...)...); code != 0 {
			t.Fatal(e)
		}
		shards = append(shards, s)
	}
	merged := filepath.Join(dir, "merged.pt")
	if code, _, e := runCLI(append([]string{"merge", "-q", "--out", merged}, shards...)...); code != 0 {
		t.Fatal(e)
	}
	a, _ := kvfile.LoadCalibration(whole)
	b, _ := kvfile.LoadCalibration(merged)
	if a.Tokens != b.Tokens {
		t.Fatalf("tokens %d vs %d", a.Tokens, b.Tokens)
	}
	for l := range a.Layers {
		for kind := range a.Layers[l] {
			for _, pair := range [][2]*kvfile.Basis{{a.Layers[l][kind].PerHead, b.Layers[l][kind].PerHead}, {a.Layers[l][kind].Joint, b.Layers[l][kind].Joint}} {
				x, y := pair[0].Eigenvalues, pair[1].Eigenvalues
				for i := range x {
					if d := x[i] - y[i]; d > 1e-5*x[0] || d < -1e-5*x[0] {
						t.Fatalf("layer %d kind %d eigenvalue %d: %v vs %v", l, kind, i, x[i], y[i])
					}
				}
			}
		}
	}
}

func TestCalibrateBadInputs(t *testing.T) {
	models := tinyModels(t)
	texts := writeTexts(t, 2)
	empty := t.TempDir()
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no usable text", []string{"--model", "good.pt", "--texts", texts, "--min-tokens", "100000"}, 1, "no usable text"},
		{"empty folder", []string{"--model", "good.pt", "--texts", empty}, 1, "no usable text"},
		{"missing texts", []string{"--model", "good.pt", "--texts", filepath.Join(empty, "nope")}, 1, "no such file"},
		{"missing model", []string{"--model", "absent.pt", "--texts", texts}, 1, "no such file"},
		{"not a model", []string{"--model", texts, "--texts", texts}, 1, "a folder"},
		{"breaks contract", []string{"--model", "wrong_kshape.pt", "--texts", texts}, 1, "K of layer 0 has shape"},
		{"no metadata", []string{"--model", "no_meta.pt", "--texts", texts}, 1, "no kvtorch.json"},
		{"NaN in K", []string{"--model", "nan.pt", "--texts", texts}, 1, "NaN or Inf) in K of layer 1, head 1, batch 0"},
		{"bad accumulate", []string{"--model", "good.pt", "--texts", texts, "--accumulate", "int8"}, 2, "accumulate"},
		{"stats-only without stats-out", []string{"--model", "good.pt", "--stats-only"}, 2, "--stats-out"},
		{"cuda model on cpu", []string{"--model", "good.pt", "--texts", texts, "--device", "cuda:7"}, 1, "cuda:7"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "calib.pt")
			args := []string{"calibrate", "--out", out}
			for i, a := range c.args {
				if i > 0 && c.args[i-1] == "--model" && !filepath.IsAbs(a) {
					a = filepath.Join(models, a)
				}
				args = append(args, a)
			}
			code, _, stderr := runCLI(args...)
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			last := lines[len(lines)-1]
			if code != c.code || !strings.Contains(last, c.want) || !strings.HasPrefix(last, "kvtorch: ") {
				t.Fatalf("exit %d, stderr %q; want exit %d and a last line with %q", code, stderr, c.code, c.want)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Fatalf("a failed calibrate left %s", out)
			}
		})
	}
}

func TestCalibrateFromStdin(t *testing.T) {
	models := tinyModels(t)
	out := filepath.Join(t.TempDir(), "calib.pt")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		w.Write([]byte(strings.Repeat("the quick brown fox jumps over the lazy dog ", 40)))
		w.Close()
	}()
	old := os.Stdin
	os.Stdin = r
	defer func() { os.Stdin = old }()
	code, _, e := runCLI("calibrate", "-q", "--model", filepath.Join(models, "good.pt"), "--texts", "-", "--out", out)
	if code != 0 {
		t.Fatal(e)
	}
	cal, err := kvfile.LoadCalibration(out)
	if err != nil || len(cal.Texts) != 1 || cal.Texts[0].Path != "-" || cal.Tokens == 0 {
		t.Fatalf("%v %+v", err, cal)
	}
}

// TestCalibrateTextOnce: the same text given twice (one file named twice,
// or a copy under another name) counts once, with a note; the shard it makes
// merges on its own (issue 21: it counted twice, and merge refused it).
func TestCalibrateTextOnce(t *testing.T) {
	model := filepath.Join(tinyModels(t), "good.pt")
	dir := t.TempDir()
	texts := writeTexts(t, 2)
	a := filepath.Join(texts, "ta.txt")
	copyOf := filepath.Join(dir, "copy.txt")
	b, _ := os.ReadFile(a)
	os.WriteFile(copyOf, b, 0o644)
	common := []string{"--model", model, "--max-length", "32", "--json"}
	tokens := func(args ...string) (int64, string) {
		code, out, e := runCLI(append(append([]string{"calibrate"}, common...), args...)...)
		if code != 0 {
			t.Fatal(e)
		}
		var sum struct {
			Tokens int64 `json:"tokens"`
		}
		json.Unmarshal([]byte(out), &sum)
		return sum.Tokens, e
	}
	once, _ := tokens("--texts", a, "--output", filepath.Join(dir, "once.pt"))
	twice, note := tokens("--texts", a, "--texts", a, "--texts", copyOf, "--output", filepath.Join(dir, "twice.pt"),
		"--stats-out", filepath.Join(dir, "s.pt"))
	if once == 0 || twice != once || strings.Count(note, "same content as") != 2 {
		t.Fatalf("tokens once %d, given three times %d; stderr %q", once, twice, note)
	}
	if code, _, e := runCLI("merge", "-q", "--output", filepath.Join(dir, "merged.pt"), filepath.Join(dir, "s.pt")); code != 0 {
		t.Fatalf("merge of the shard alone: %s", e)
	}
}

// TestMergeRefusesOverflow: finite but huge statistics (issue 21: sum 1e200,
// shift 1e300, XᵀX 1e300) end in an error, and no calibration kvtorch would
// later refuse is written.
func TestMergeRefusesOverflow(t *testing.T) {
	model := filepath.Join(tinyModels(t), "good.pt")
	dir := t.TempDir()
	shard := filepath.Join(dir, "s.pt")
	if code, _, e := runCLI("calibrate", "-q", "--model", model, "--texts", writeTexts(t, 2), "--max-length", "32",
		"--stats-out", shard, "--stats-only"); code != 0 {
		t.Fatal(e)
	}
	for name, mutate := range map[string]func(m *kvfile.Moments){
		"sum":   func(m *kvfile.Moments) { m.Sum[0] = 1e200 },
		"shift": func(m *kvfile.Moments) { m.Shift[0] = 1e300 },
		"xtx":   func(m *kvfile.Moments) { m.XTX[0] = 1e300 },
	} {
		s, err := kvfile.LoadStats(shard)
		if err != nil {
			t.Fatal(err)
		}
		mutate(s.Layers[0][0])
		bad := filepath.Join(dir, name+".pt")
		if err := s.Save(bad); err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, name+"-calib.pt")
		code, _, e := runCLI("merge", "-q", "--output", out, bad)
		t.Logf("%s: %s", name, strings.TrimSpace(e))
		if code != 1 || strings.Count(strings.TrimSpace(e), "\n") != 0 {
			t.Errorf("%s: exit %d, stderr %q", name, code, e)
		}
		if _, err := os.Stat(out); err == nil {
			t.Errorf("%s: merge wrote %s", name, out)
		}
	}
}
