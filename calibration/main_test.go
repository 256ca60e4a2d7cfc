package calibration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kvtorch/kvtorch/kvfile"
	"github.com/kvtorch/kvtorch/texts"
	"github.com/kvtorch/kvtorch/torch"
)

// modelsDir holds the tiny models made by testdata/models.py (good and
// broken); empty when Python is not available.
var modelsDir string

func TestMain(m *testing.M) {
	if py := os.Getenv("KVTORCH_PYTHON"); py != "" {
		dir, err := os.MkdirTemp("", "kvtmodels")
		if err == nil {
			out, err := exec.Command(py, "testdata/models.py", dir).CombinedOutput()
			if err != nil {
				fmt.Fprintf(os.Stderr, "models.py: %v\n%s", err, out)
				os.Exit(1)
			}
			modelsDir = dir
		}
	}
	code := m.Run()
	if modelsDir != "" {
		os.RemoveAll(modelsDir)
	}
	os.Exit(code)
}

func tinyModel(t *testing.T, name string) string {
	t.Helper()
	if modelsDir == "" {
		t.Skip("KVTORCH_PYTHON is not set: the test models need Python torch (run `make test`)")
	}
	return filepath.Join(modelsDir, name+".pt")
}

// load reads a model's metadata and loads it on the CPU.
func load(path string) (*Model, error) {
	md, tok, err := kvfile.ReadModel(path)
	if err != nil {
		return nil, err
	}
	return LoadModel(path, md, tok, torch.CPU)
}

func loadTiny(t *testing.T, name string) *Model {
	t.Helper()
	m, err := load(tinyModel(t, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// someSequences makes n sequences of varied lengths from the tiny vocabulary.
func someSequences(n, maxLen int) []texts.Sequence {
	var seqs []texts.Sequence
	for i := 0; i < n; i++ {
		l := maxLen - (i*7)%(maxLen/2)
		ids := make([]int, l)
		for j := range ids {
			ids[j] = (i*31 + j*17 + j*j) % 290
		}
		seqs = append(seqs, texts.Sequence{IDs: ids, Source: fmt.Sprintf("seq%d", i)})
	}
	return seqs
}
