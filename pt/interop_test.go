package pt

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func pythonForTests(t *testing.T) string {
	py := os.Getenv("KVTORCH_PYTHON")
	if py == "" {
		t.Skip("KVTORCH_PYTHON is not set: interop tests need Python torch (run `make test`)")
	}
	return py
}

func interop(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(pythonForTests(t), append([]string{"testdata/interop.py"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("interop.py %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// normalized round-trips v through JSON, so Go- and Python-made descriptions compare.
func normalized(t *testing.T, v any) any {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func writeExpect(t *testing.T, path string, v any, shares [][2]string) {
	if shares == nil {
		shares = [][2]string{}
	}
	b, err := json.Marshal(map[string]any{"value": encodeExpect(v), "_shares": shares})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestGoFilesLoadInPython(t *testing.T) {
	pythonForTests(t)
	dir := t.TempDir()
	v := richValue(t)
	path := filepath.Join(dir, "go_values.pt")
	if err := Save(path, v); err != nil {
		t.Fatal(err)
	}
	writeExpect(t, filepath.Join(dir, "go_values.json"), v, [][2]string{{"base", "transposed"}, {"base", "sliced"}})
	t.Log(strings.TrimSpace(interop(t, "check", path, filepath.Join(dir, "go_values.json"))))
}

func TestGoZip64FilesLoadInPython(t *testing.T) {
	pythonForTests(t)
	old := zip64Limit
	zip64Limit = 1 // every size and offset >= 1 gets zip64 records
	defer func() { zip64Limit = old }()
	dir := t.TempDir()
	v := richValue(t)
	path := filepath.Join(dir, "zip64.pt")
	if err := Save(path, v); err != nil {
		t.Fatal(err)
	}
	zip64Limit = old
	writeExpect(t, filepath.Join(dir, "zip64.json"), v, nil)
	interop(t, "check", path, filepath.Join(dir, "zip64.json"))
	back, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(normalized(t, encodeExpect(back)), normalized(t, encodeExpect(v))) {
		t.Fatal("zip64 file: Go read back different values")
	}
}

func TestPythonFilesLoadInGo(t *testing.T) {
	dir := t.TempDir()
	interop(t, "make", dir)
	for _, name := range []string{"python_values", "state_dict", "torch1_layout"} {
		t.Run(name, func(t *testing.T) {
			got, err := Load(filepath.Join(dir, name+".pt"))
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(filepath.Join(dir, name+".json"))
			if err != nil {
				t.Fatal(err)
			}
			var want map[string]any
			if err := json.Unmarshal(b, &want); err != nil {
				t.Fatal(err)
			}
			if g := normalized(t, encodeExpect(got)); !reflect.DeepEqual(g, want["value"]) {
				gb, _ := json.Marshal(g)
				wb, _ := json.Marshal(want["value"])
				t.Fatalf("values differ\n got:  %.1500s\n want: %.1500s", gb, wb)
			}
		})
	}
	// Views of one storage stay views of one storage.
	v, err := Load(filepath.Join(dir, "python_values.pt"))
	if err != nil {
		t.Fatal(err)
	}
	d := v.(*Dict)
	a, _ := d.Get("transposed")
	b, _ := d.Get("sliced")
	if a.(*Tensor).Storage != b.(*Tensor).Storage {
		t.Fatal("transposed and sliced views of one tensor got different storages")
	}
	if _, err := Load(filepath.Join(dir, "legacy.pt")); err == nil || !strings.Contains(err.Error(), "legacy") {
		t.Fatalf("legacy file: got %v, want a legacy-format error", err)
	}
}
