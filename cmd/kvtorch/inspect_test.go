package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvtorch/kvtorch/pt"
)

func writePT(t *testing.T) string {
	t.Helper()
	x, err := pt.FromSlice([]float32{1, -2, 3, 6}, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "calib.pt")
	v := pt.NewDict().Set("version", int64(1)).Set("name", "ref").
		Set("layers", []any{pt.NewDict().Set("U", x)}).Set("texts", []string{"a", "b", "c"})
	if err := pt.Save(path, v); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestInspectTree(t *testing.T) {
	path := writePT(t)
	code, out, errOut := runCLI("inspect", "--stats", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{`archive "calib"`, "version: int 1", `name: str "ref"`, "U: tensor float32[2, 2]", "min -2  max 6  mean 2", "texts: list (3)"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	_, out, _ = runCLI("inspect", "--max-items", "1", path)
	if !strings.Contains(out, "… 3 more") || strings.Contains(out, "name:") {
		t.Errorf("--max-items 1 did not elide:\n%s", out)
	}
}

func TestInspectJSON(t *testing.T) {
	code, out, _ := runCLI("inspect", "--json", writePT(t))
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	var doc struct {
		Storages int `json:"storages"`
		Value    struct {
			Type  string `json:"type"`
			Items []struct {
				Key string `json:"key"`
			} `json:"items"`
		} `json:"value"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("--json output is not JSON: %v\n%s", err, out)
	}
	if doc.Storages != 1 || doc.Value.Type != "dict" || len(doc.Value.Items) != 4 || doc.Value.Items[2].Key != "layers" {
		t.Fatalf("unexpected document: %+v", doc)
	}
	if strings.Contains(out, `"stats"`) {
		t.Error("--json without --stats printed stats")
	}
}

func TestInspectPythonFile(t *testing.T) {
	py := os.Getenv("KVTORCH_PYTHON")
	if py == "" {
		t.Skip("KVTORCH_PYTHON is not set: this test needs Python torch to write the file (run `make test`)")
	}
	dir := t.TempDir()
	if out, err := exec.Command(py, "../../pt/testdata/interop.py", "make", dir).CombinedOutput(); err != nil {
		t.Fatalf("interop.py: %v\n%s", err, out)
	}
	code, out, errOut := runCLI("inspect", "--stats", filepath.Join(dir, "state_dict.pt"))
	if code != 0 || !strings.Contains(out, "weight: tensor float32[2, 3]") || !strings.Contains(out, "bias: tensor float32[2]") {
		t.Fatalf("exit %d, stderr %s, output:\n%s", code, errOut, out)
	}
}

func TestInspectBadFiles(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pt")
	os.WriteFile(junk, []byte("not a zip"), 0o644)
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"inspect", filepath.Join(dir, "missing.pt")}, 1, "no such file"},
		{[]string{"inspect", junk}, 1, "not a torch.save file"},
		{[]string{"inspect", dir}, 1, "a folder"},
		{[]string{"inspect", "/dev/zero"}, 1, "a device"},
		{[]string{"inspect"}, 2, "one FILE.pt"},
	} {
		code, _, errOut := runCLI(c.args...)
		if code != c.code || !strings.Contains(errOut, c.want) || strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and one line with %q", c.args, code, errOut, c.code, c.want)
		}
	}
}
