package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The bundled reference model, exported by `make deps`.
func refModel(t *testing.T) string {
	p, _ := filepath.Abs("../../build/refmodel.pt")
	if _, err := os.Stat(p); err != nil {
		t.Skip("build/refmodel.pt is not exported (run `make deps`)")
	}
	return p
}

func TestPerplexityGrowsAsRankFalls(t *testing.T) {
	model := refModel(t)
	cal := filepath.Join(t.TempDir(), "calib.pt")
	if code, _, e := runCLI("calibrate", "-q", "--model", model, "--texts", "../../testdata/calib", "--output", cal); code != 0 {
		t.Fatal(e)
	}
	for _, c := range []struct {
		args []string
		full string
	}{
		{[]string{"--basis", "head", "--sinks", "0", "--ranks", "64,48,32,24,16,8,4"}, "per head, no sinks"},
		{[]string{"--basis", "joint", "--ranks", "128,96,64,48,32,16,8"}, "joint, 4 sinks"},
	} {
		t.Run(c.full, func(t *testing.T) { monotonic(t, model, cal, c.args) })
	}
}

// monotonic checks that perplexity never falls as the uniform rank falls
// (the first rank being the full one).
func monotonic(t *testing.T, model, cal string, args []string) {
	rep := runEval(t, append([]string{"--model", model, "--calibration", cal, "--texts", "../../testdata/eval",
		"--max-tokens", "8192"}, args...)...)
	if len(rep.Rows) != 8 {
		t.Fatalf("rows: %+v", rep.Rows)
	}
	if rep.Rows[1].PPL != rep.Baseline {
		t.Fatalf("full rank (uncompressed) gave %v, baseline %v", rep.Rows[1].PPL, rep.Baseline)
	}
	for i := 2; i < len(rep.Rows); i++ {
		if rep.Rows[i].PPL < rep.Rows[i-1].PPL {
			t.Fatalf("perplexity fell as the rank fell: %s %.4f < %s %.4f", rep.Rows[i].Label, rep.Rows[i].PPL, rep.Rows[i-1].Label, rep.Rows[i-1].PPL)
		}
	}
	t.Logf("baseline %.4f, rank 4: %.4f", rep.Baseline, rep.Rows[len(rep.Rows)-1].PPL)
}

// TestSIGTERMLeavesNothing: SIGTERM (what Slurm and Kubernetes send on
// preemption) during a calibration ends it with status 143 and "interrupted",
// and leaves no output and no temporary file in the output folder.
func TestSIGTERMLeavesNothing(t *testing.T) {
	model := refModel(t)
	dir := t.TempDir()
	done := make(chan struct{})
	var code int
	var stderr string
	go func() {
		defer close(done)
		code, _, stderr = runCLI("calibrate", "-q", "--model", model, "--texts", "../../testdata/calib", "--texts", "../../testdata/eval",
			"--output", filepath.Join(dir, "calib.pt"), "--stats-out", filepath.Join(dir, "stats.pt"))
	}()
	time.Sleep(time.Second) // run has installed its handler; the forward passes take several seconds
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("calibrate did not stop within 60 s of SIGTERM")
	}
	if code != 143 || !strings.Contains(stderr, "interrupted") {
		t.Fatalf("status %d, stderr %q; want 143 and interrupted", code, stderr)
	}
	left, _ := os.ReadDir(dir)
	for _, e := range left {
		t.Errorf("left behind: %s", e.Name())
	}
}
