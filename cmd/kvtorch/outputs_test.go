package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRefusedBeforeWork: outputs that are inputs (or each other), output
// folders that do not exist and out-of-range values end with exit 2 and one
// line, before any work, and leave every file as it was.
func TestRefusedBeforeWork(t *testing.T) {
	models := tinyModels(t)
	model := filepath.Join(models, "good.pt")
	texts := writeTexts(t, 2)
	dir := t.TempDir()
	cal := filepath.Join(dir, "calib.pt")
	if code, _, e := runCLI("calibrate", "-q", "--model", model, "--texts", texts, "--output", cal, "--seq-len", "64", "--min-tokens", "8"); code != 0 {
		t.Fatal(e)
	}
	text := filepath.Join(texts, "ta.txt")
	other := filepath.Join(dir, "other-kind.txt")
	if err := os.WriteFile(other, []byte("Text of another kind, to check a preset on.\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	shard := filepath.Join(dir, "s0.pt")
	if code, _, e := runCLI("calibrate", "-q", "--model", model, "--texts", texts, "--stats-out", shard, "--stats-only", "--seq-len", "64", "--min-tokens", "8"); code != 0 {
		t.Fatal(e)
	}
	before := map[string][]byte{}
	for _, f := range []string{model, cal, text, shard, other} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		before[f] = b
	}
	missing := filepath.Join(dir, "no", "such", "folder", "out.pt")
	readOnly := "/sys" // sysfs takes no new files, even for root
	if os.Geteuid() != 0 {
		readOnly = filepath.Join(dir, "ro")
		if err := os.Mkdir(readOnly, 0o555); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"calibrate over its model", []string{"calibrate", "--model", model, "--texts", texts, "--output", model}, "is also input"},
		{"tune over its calibration", []string{"tune", "--model", model, "-c", cal, "--texts", texts, "-o", cal}, "is also input"},
		{"merge over a shard", []string{"merge", "--output", shard, shard}, "is also input"},
		{"plot over a text", []string{"calibrate", "--model", model, "--texts", text, "--output", filepath.Join(dir, "x.pt"), "--plot", text}, "is also input"},
		{"stats over the calibration", []string{"calibrate", "--model", model, "--texts", texts, "--output", filepath.Join(dir, "y.pt"), "--stats-out", filepath.Join(dir, "y.pt")}, "is also --output"},
		{"candidates over a check text", []string{"tune", "--model", model, "-c", cal, "--texts", texts, "--check-texts", other, "--candidates", other}, "is also input"},
		{"plot over the output", []string{"tune", "--model", model, "-c", cal, "--texts", texts, "-o", filepath.Join(dir, "p.json"), "--plot", filepath.Join(dir, "p.json")}, "is also --output"},
		{"unwritable output folder", []string{"calibrate", "--model", model, "--texts", texts, "--output", filepath.Join(readOnly, "calib.pt")}, "does not take new files"},
		{"missing output folder", []string{"tune", "--model", model, "-c", cal, "--texts", texts, "-o", missing}, "does not exist"},
		{"negative rank", []string{"eval", "--model", model, "-c", cal, "--texts", texts, "--rank-v", "-5"}, "must not be negative"},
		{"negative max-tokens", []string{"eval", "--model", model, "-c", cal, "--texts", texts, "--max-tokens", "-3"}, "must not be negative"},
		{"rank past the dimension", []string{"eval", "--model", model, "-c", cal, "--texts", texts, "--seq-len", "64", "--basis", "head", "--rank-k", "1000"}, "out of range"},
		{"bits", []string{"eval", "--model", model, "-c", cal, "--texts", texts, "--bits", "5"}, "want 16, 8 or 4"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, out, stderr := runCLI(c.args...)
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			last := lines[len(lines)-1]
			if code != 2 || !strings.HasPrefix(last, "kvtorch: ") || !strings.Contains(last, c.want) {
				t.Fatalf("exit %d, stderr %q; want exit 2 and one line with %q", code, stderr, c.want)
			}
			if out != "" {
				t.Fatalf("printed %q before refusing", out)
			}
		})
	}
	for f, b := range before {
		if now, err := os.ReadFile(f); err != nil || string(now) != string(b) {
			t.Fatalf("%s changed", f)
		}
	}
	if _, err := os.Stat(filepath.Dir(missing)); !os.IsNotExist(err) {
		t.Fatal("the missing folder was created")
	}
}
