package kvtorch_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"testing"

	"github.com/kvtorch/kvtorch"
	"github.com/kvtorch/kvtorch/texts"
)

// The whole workflow as a library: calibrate on sample text, tune a preset
// within +5% on held-out text, save it, and check it as CI would.
func Example() {
	ctx := context.Background()
	m, err := kvtorch.Open("model.pt", kvtorch.OpenOptions{Device: "cpu"})
	if err != nil {
		log.Fatal(err)
	}

	calib, err := texts.ReadCorpus([]string{"calib/"}, nil)
	if err != nil {
		log.Fatal(err)
	}
	res, err := kvtorch.Calibrate(ctx, m, calib, kvtorch.CalibrateOptions{}, nil)
	if err != nil {
		log.Fatal(err)
	}
	if err := res.Calibration.Save("calib.pt"); err != nil {
		log.Fatal(err)
	}
	sha, err := kvtorch.HashFile("calib.pt", "-")
	if err != nil {
		log.Fatal(err)
	}

	held, err := texts.ReadCorpus([]string{"heldout/"}, nil)
	if err != nil {
		log.Fatal(err)
	}
	s, err := kvtorch.NewSession(ctx, m, res.Calibration, kvtorch.Source{Path: "calib.pt", SHA256: sha},
		[]*texts.Corpus{held}, kvtorch.EvalOptions{MaxTokens: 4096}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close() // and the model
	preset, _, err := s.Tune(ctx, kvtorch.TuneOptions{Budget: 0.05, Bits: []int{16, 8, 4}})
	if err != nil {
		log.Fatal(err)
	}
	if err := preset.Save("preset.json"); err != nil {
		log.Fatal(err)
	}
	report, err := s.CheckPreset(ctx, preset, 0.05)
	if errors.Is(err, kvtorch.ErrOverBudget) {
		log.Fatal(report.Reason)
	} else if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%.2fx at %+.2f%%\n", preset.CompressionRatio, 100*report.Measurement.Delta)
}

// TestWorkflow runs Example's calls on the reference model (make build
// exports it): the library's workflow without the command line.
func TestWorkflow(t *testing.T) {
	model := filepath.Join("build", "refmodel.pt")
	if _, err := os.Stat(model); err != nil {
		t.Skip("build/refmodel.pt: run make build")
	}
	ctx := context.Background()
	m, err := kvtorch.Open(model, kvtorch.OpenOptions{Device: "cpu", HashCache: "-"})
	if err != nil {
		t.Fatal(err)
	}
	calib, err := texts.ReadCorpus([]string{"testdata/calib"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := kvtorch.Calibrate(ctx, m, calib, kvtorch.CalibrateOptions{MaxLength: 256, NumSamples: 4}, nil)
	if err != nil {
		t.Fatal(err)
	}
	calPath := filepath.Join(t.TempDir(), "calib.pt")
	if err := res.Calibration.Save(calPath); err != nil {
		t.Fatal(err)
	}
	sha, err := kvtorch.HashFile(calPath, "-")
	if err != nil {
		t.Fatal(err)
	}

	held, err := texts.ReadCorpus([]string{"testdata/eval"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := kvtorch.NewSession(ctx, m, res.Calibration, kvtorch.Source{Path: calPath, SHA256: sha},
		[]*texts.Corpus{held}, kvtorch.EvalOptions{SeqLen: 256, MaxTokens: 1020}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close() // and the model
	preset, _, err := s.Tune(ctx, kvtorch.TuneOptions{Budget: 0.05, Bits: []int{16, 8}, MaxEvaluations: 4})
	if err != nil {
		t.Fatal(err)
	}
	if !(preset.CompressionRatio > 1) || preset.PPLDelta > 0.05 {
		t.Fatalf("tuned preset: %.2fx at %+.2f%%", preset.CompressionRatio, 100*preset.PPLDelta)
	}
	report, err := s.CheckPreset(ctx, preset, 0.05)
	if err != nil || !report.Pass || report.Measurement.Delta != preset.PPLDelta {
		t.Fatalf("check of the tuned preset: %v (pass %v, delta %v, tuned %v)", err, report.Pass,
			report.Measurement.Delta, preset.PPLDelta)
	}
	// A budget below what the preset costs fails with ErrOverBudget.
	if report, err := s.CheckPreset(ctx, preset, preset.PPLDelta/2-1e-6); !errors.Is(err, kvtorch.ErrOverBudget) || report.Pass {
		t.Fatalf("check at half the delta: %v (pass %v)", err, report.Pass)
	}

	// Tuning on the calibration's own text is refused (a session owns its
	// model: another one for it).
	m2, err := kvtorch.Open(model, kvtorch.OpenOptions{Device: "cpu", HashCache: "-"})
	if err != nil {
		t.Fatal(err)
	}
	s2, err := kvtorch.NewSession(ctx, m2, res.Calibration, kvtorch.Source{Path: calPath, SHA256: sha},
		[]*texts.Corpus{calib}, kvtorch.EvalOptions{SeqLen: 256, MaxTokens: 255}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, _, err := s2.Tune(ctx, kvtorch.TuneOptions{Budget: 0.05}); !errors.Is(err, kvtorch.ErrHeldOutIsCalibration) {
		t.Fatalf("tuning on the calibration text: %v", err)
	}
}
