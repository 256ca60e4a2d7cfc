package main

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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

// TestScriptBomb: a model file of a few MB whose zip declares 130 extra
// files of 63 MB each (issue 21) is inspected and tokenized with bounded
// memory: only kvtorch.json and the tokenizer are read.
func TestScriptBomb(t *testing.T) {
	tok, err := os.ReadFile("../../testdata/refmodel.tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	meta := `{"format_version": 2, "name": "bomb", "architecture": "llama", "n_layers": 1, "n_heads": 1, "n_kv_heads": 1,
		"head_dim_k": 4, "head_dim_v": 4, "vocab_size": 4096, "max_positions": 64, "dtype": "float32", "device": "cpu",
		"kv_source": "pre_rope", "hook": {"k": "l.{layer}.k", "v": "l.{layer}.v"}, "tokenizer": "tokenizer.json"}`
	var buf bytes.Buffer
	z := zip.NewWriter(&buf)
	for name, body := range map[string][]byte{"m/code/x.py": []byte("#"), "m/extra/kvtorch.json": []byte(meta), "m/extra/tokenizer.json": tok} {
		w, _ := z.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Store})
		w.Write(body)
	}
	var comp bytes.Buffer
	fw, _ := flate.NewWriter(&comp, flate.BestCompression)
	zeros := make([]byte, 63<<20)
	fw.Write(zeros)
	fw.Close()
	for i := 0; i < 130; i++ {
		w, err := z.CreateRaw(&zip.FileHeader{Name: fmt.Sprintf("m/extra/f%d", i), Method: zip.Deflate,
			CRC32: crc32.ChecksumIEEE(zeros), CompressedSize64: uint64(comp.Len()), UncompressedSize64: uint64(len(zeros))})
		if err != nil {
			t.Fatal(err)
		}
		w.Write(comp.Bytes())
	}
	z.Close()
	path := filepath.Join(t.TempDir(), "bomb.pt")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	code, out, e := runCLI("inspect", path)
	if code != 0 || !strings.Contains(out, "name bomb") || !strings.Contains(out, "f129") {
		t.Fatalf("inspect: exit %d %s%s", code, out, e)
	}
	code, out, e = runCLI("tokenize", "--model", path, "-")
	if code != 0 {
		t.Fatalf("tokenize: exit %d %s%s", code, out, e)
	}
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 256<<20 {
		t.Fatalf("inspect and tokenize allocated %d MB", alloc>>20)
	}
}

// TestInspectLargeList: a plain list too long to show is called that, not a
// value that repeats shared parts (issue 21).
func TestInspectLargeList(t *testing.T) {
	xs := make([]any, 200001)
	for i := range xs {
		xs[i] = int64(i)
	}
	path := filepath.Join(t.TempDir(), "list.pt")
	if err := pt.Save(path, xs); err != nil {
		t.Fatal(err)
	}
	code, _, e := runCLI("inspect", "--json", path)
	if code != 1 || !strings.Contains(e, "has more than 100000 items") || strings.Contains(e, "shared") {
		t.Fatalf("exit %d, stderr %q", code, e)
	}
	code, out, _ := runCLI("inspect", "--max-items", "0", path)
	if code != 0 || !strings.Contains(out, "has more than 100000 items") {
		t.Fatalf("exit %d, tail %q", code, out[max(0, len(out)-200):])
	}
}
