//go:build cgo

package torch

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

type fixtureTensor struct {
	Shape []int64   `json:"shape"`
	Data  []float64 `json:"data"`
}

type fixtureExpected struct {
	Input         []int64           `json:"input"`
	InputShape    []int64           `json:"input_shape"`
	Outputs       []fixtureTensor   `json:"outputs"`
	OutputsScale2 []fixtureTensor   `json:"outputs_scale2"`
	Body          []fixtureTensor   `json:"body"`
	ExtraFiles    map[string]string `json:"extra_files"`
	Buffers       []string          `json:"buffers"`
}

// pythonForTests is the interpreter with torch that fixture scripts run on:
// $KVTORCH_PYTHON (make test sets it to the project's venv).
func pythonForTests(t *testing.T) string {
	py := os.Getenv("KVTORCH_PYTHON")
	if py == "" {
		t.Skip("KVTORCH_PYTHON is not set: the TorchScript fixture needs Python torch (run `make test`)")
	}
	return py
}

// buildFixture runs testdata/fixture.py and returns the model path and what
// Python computed.
func buildFixture(t *testing.T) (string, fixtureExpected) {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command(pythonForTests(t), "testdata/fixture.py", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("fixture.py: %v\n%s", err, out)
	}
	var exp fixtureExpected
	b, err := os.ReadFile(filepath.Join(dir, "expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err = json.Unmarshal(b, &exp); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "fixture.pt"), exp
}

// flatten lists the tensors of a value tree in depth-first order.
func flatten(t *testing.T, v Value) []*Tensor {
	switch x := v.(type) {
	case *Tensor:
		return []*Tensor{x}
	case Tuple:
		var out []*Tensor
		for _, e := range x {
			out = append(out, flatten(t, e)...)
		}
		return out
	case List:
		var out []*Tensor
		for _, e := range x {
			out = append(out, flatten(t, e)...)
		}
		return out
	}
	t.Fatalf("unexpected value %T in forward output", v)
	return nil
}

func compareOutputs(t *testing.T, what string, out Value, want []fixtureTensor) {
	t.Helper()
	got := flatten(t, out)
	if len(got) != len(want) {
		t.Fatalf("%s: %d tensors, want %d", what, len(got), len(want))
	}
	for i := range got {
		if !equalShape(got[i].Shape(), want[i].Shape) {
			t.Fatalf("%s: tensor %d shape %v, want %v", what, i, got[i].Shape(), want[i].Shape)
		}
		assertClose(t, what, must(got[i].Float64s()), want[i].Data, 1e-6, 1e-6)
	}
}

func TestModuleMatchesPython(t *testing.T) {
	path, exp := buildFixture(t)
	m := must(Load(path, CPU))
	defer m.Close()
	ids := must(FromSlice(exp.Input, exp.InputShape...))
	defer ids.Close()

	out := must(m.Forward(ids))
	// The structure: (logits, (k0, k1), [v0, v1]).
	tup, ok := out.(Tuple)
	if !ok || len(tup) != 3 {
		t.Fatalf("forward returned %T of %v, want a 3-tuple", out, out)
	}
	if _, ok := tup[1].(Tuple); !ok {
		t.Fatalf("element 1 is %T, want Tuple", tup[1])
	}
	if _, ok := tup[2].(List); !ok {
		t.Fatalf("element 2 is %T, want List", tup[2])
	}
	compareOutputs(t, "forward", out, exp.Outputs)
	CloseValue(out)

	names := must(m.BufferNames())
	if !slices.Equal(names, exp.Buffers) {
		t.Fatalf("buffers: got %v, want %v", names, exp.Buffers)
	}
	scale := must(m.Buffer("block.scale"))
	defer scale.Close()
	two := must(FromSlice([]float64{2, 2, 2, 2, 2, 2, 2, 2}, 8)) // float64 converted to the buffer's float32
	defer two.Close()
	if err := m.SetBuffer("block.scale", two); err != nil {
		t.Fatal(err)
	}
	assertClose(t, "buffer after set", must(scale.Float64s()), []float64{2, 2, 2, 2, 2, 2, 2, 2}, 0, 0)
	out2 := must(m.Forward(ids))
	compareOutputs(t, "forward after SetBuffer", out2, exp.OutputsScale2)
	CloseValue(out2)

	if err := m.SetBuffer("block.scale", ids); err == nil || !strings.Contains(err.Error(), "shape") {
		t.Fatalf("SetBuffer with a wrong shape: got %v, want a shape error", err)
	}
	if err := m.SetBuffer("no.such", two); err == nil || !strings.Contains(err.Error(), "no.such") {
		t.Fatalf("SetBuffer of a missing buffer: got %v", err)
	}
}

func TestExtraFiles(t *testing.T) {
	path, exp := buildFixture(t)
	names := must(ExtraFileNames(path))
	slices.Sort(names)
	if !slices.Equal(names, []string{"kvtorch.json", "notes.txt"}) {
		t.Fatalf("extra files: got %v", names)
	}
	for name, want := range exp.ExtraFiles {
		if got := string(must(ExtraFile(path, name))); got != want {
			t.Fatalf("extra file %s: got %q, want %q", name, got, want)
		}
	}
	if _, err := ExtraFile(path, "missing.json"); err == nil || !strings.Contains(err.Error(), "missing.json") {
		t.Fatalf("missing extra file: got %v", err)
	}
}

func TestModuleErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(filepath.Join(dir, "absent.pt"), CPU); err == nil || !strings.Contains(err.Error(), "absent.pt") {
		t.Fatalf("missing file: got %v", err)
	}
	junk := filepath.Join(dir, "junk.pt")
	os.WriteFile(junk, []byte("this is not a TorchScript archive\n"), 0o644)
	if _, err := Load(junk, CPU); err == nil {
		t.Fatal("junk file: got nil error")
	} else {
		t.Logf("junk file: %v", err)
	}
	if _, err := ExtraFileNames(junk); err == nil {
		t.Fatal("extra files of a junk file: got nil error")
	}

	path, _ := buildFixture(t)
	if _, err := Load(path, CUDA(CUDADeviceCount())); err == nil {
		t.Fatal("load onto a missing CUDA device: got nil error")
	}
	m := must(Load(path, CPU))
	// Wrong input shape: 3-D ids where forward unpacks two dimensions.
	ids3 := must(FromSlice([]int64{1, 2, 3, 4}, 1, 2, 2))
	defer ids3.Close()
	if _, err := m.Forward(ids3); err == nil {
		t.Fatal("forward with a 3-D input: got nil error")
	} else {
		t.Logf("wrong shape: %v", err)
	}
	// Wrong dtype: float ids cannot index an embedding.
	f := must(FromSlice([]float32{1, 2}, 1, 2))
	defer f.Close()
	if _, err := m.Forward(f); err == nil {
		t.Fatal("forward with float input: got nil error")
	}
	// Out-of-range token id.
	big := must(FromSlice([]int64{1, 999}, 1, 2))
	defer big.Close()
	if _, err := m.Forward(big); err == nil {
		t.Fatal("forward with an out-of-range id: got nil error")
	}
	m.Close()
	if _, err := m.Forward(ids3); err == nil {
		t.Fatal("forward after Close: got nil error")
	}
}

// TestRunMethod: a method other than forward runs by name, and the module
// lists its methods; an unknown method is an error naming it.
func TestRunMethod(t *testing.T) {
	path, exp := buildFixture(t)
	m := must(Load(path, CPU))
	defer m.Close()
	names := must(m.Methods())
	if !slices.Contains(names, "forward") || !slices.Contains(names, "body") {
		t.Fatalf("methods %v", names)
	}
	ids := must(FromSlice(exp.Input, exp.InputShape...))
	defer ids.Close()
	out := must(m.Run("body", ids))
	defer CloseValue(out)
	compareOutputs(t, "body", out, exp.Body)
	if _, err := m.Run("nothing", ids); err == nil || !strings.Contains(err.Error(), "no method nothing") {
		t.Fatalf("unknown method: %v", err)
	}
}
