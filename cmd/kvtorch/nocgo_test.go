package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestWithoutCgo builds kvtorch with CGO_ENABLED=0 (no libtorch) and runs
// what needs no device: inspect, tokenize and merge --stats-only; what does
// need libtorch fails with one line saying so.
func TestWithoutCgo(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "kvtorch-nocgo")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build with CGO_ENABLED=0: %v\n%s", err, out)
	}
	// Statistics shards from the full build, merged by the pure one.
	model := filepath.Join(tinyModels(t), "good.pt")
	texts := writeTexts(t, 4)
	files, _ := filepath.Glob(filepath.Join(texts, "*.txt"))
	var shards []string
	for i, f := range files[:2] {
		s := filepath.Join(dir, "s"+string(rune('0'+i))+".pt")
		if code, _, e := runCLI("calibrate", "-q", "--model", model, "--texts", f, "--stats-out", s, "--stats-only", "--seq-len", "32"); code != 0 {
			t.Fatal(e)
		}
		shards = append(shards, s)
	}
	run := func(stdin string, args ...string) (string, string, int) {
		cmd := exec.Command(bin, args...)
		cmd.Stdin = strings.NewReader(stdin)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return out.String(), errb.String(), code
	}
	merged := filepath.Join(dir, "all.pt")
	if _, e, code := run("", append([]string{"merge", "--stats-only", "--stats-out", merged, "-q"}, shards...)...); code != 0 {
		t.Fatalf("merge --stats-only: exit %d: %s", code, e)
	}
	if out, e, code := run("", "inspect", merged); code != 0 || !strings.Contains(out, "kvtorch-stats") {
		t.Fatalf("inspect: exit %d: %s%s", code, out, e)
	}
	if out, e, code := run("", "inspect", model); code != 0 || !strings.Contains(out, "TorchScript model") {
		t.Fatalf("inspect of a model: exit %d: %s%s", code, out, e)
	}
	if out, e, code := run("the quick brown fox", "tokenize", "--model", model); code != 0 || len(strings.Fields(out)) == 0 {
		t.Fatalf("tokenize: exit %d: %s%s", code, out, e)
	}
	_, e, code := run("", "calibrate", "--model", model, "--texts", texts, "--output", filepath.Join(dir, "c.pt"))
	if code != 1 || !strings.Contains(e, "without cgo") || strings.Count(strings.TrimSpace(e), "\n") != 0 {
		t.Fatalf("calibrate without libtorch: exit %d, stderr %q", code, e)
	}
}
