package pt

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"hash/crc32"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// scriptZip is a TorchScript-shaped zip: a code/ entry, the given extra
// files (stored), and n deflated extra files f0..f(n-1) of size zero bytes
// each, whose compressed data is made once and copied (a zip bomb: n × size
// bytes declared in a file of a few MB).
func scriptZip(t testing.TB, extras map[string]string, n int, size int) []byte {
	t.Helper()
	var buf bytes.Buffer
	z := zip.NewWriter(&buf)
	w, err := z.CreateHeader(&zip.FileHeader{Name: "m/code/__torch__.py", Method: zip.Store})
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("# code"))
	for name, body := range extras {
		w, err := z.CreateHeader(&zip.FileHeader{Name: "m/extra/" + name, Method: zip.Store})
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(body))
	}
	if n > 0 {
		var comp bytes.Buffer
		fw, _ := flate.NewWriter(&comp, flate.BestCompression)
		zeros := make([]byte, size)
		fw.Write(zeros)
		fw.Close()
		crc := crc32.ChecksumIEEE(zeros)
		for i := 0; i < n; i++ {
			w, err := z.CreateRaw(&zip.FileHeader{Name: "m/extra/f" + string(rune('a'+i%26)) + strings.Repeat("x", i/26),
				Method: zip.Deflate, CRC32: crc, CompressedSize64: uint64(comp.Len()), UncompressedSize64: uint64(size)})
			if err != nil {
				t.Fatal(err)
			}
			w.Write(comp.Bytes())
		}
	}
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestReadScriptBomb: a zip of a few MB declaring 130 extra files of 63 MB
// each (issue 21: `inspect` and `tokenize --model` ran out of memory) costs
// only what is asked for; asking for them all is refused before reading.
func TestReadScriptBomb(t *testing.T) {
	data := scriptZip(t, map[string]string{"kvtorch.json": `{"a": 1}`}, 130, 63<<20)
	if len(data) > 16<<20 {
		t.Fatalf("the bomb is %d bytes", len(data))
	}
	path := filepath.Join(t.TempDir(), "bomb.pt")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	s, err := ReadScript(path, "kvtorch.json")
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Extras) != 131 || string(s.Data["kvtorch.json"]) != `{"a": 1}` || len(s.Data) != 1 {
		t.Fatalf("%d extras, data %v", len(s.Extras), s.Data)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
		t.Fatalf("reading one small extra file allocated %d MB", alloc>>20)
	}
	_, err = ReadScript(path, s.Extras...)
	if err == nil || !strings.Contains(err.Error(), "together") {
		t.Fatalf("reading every extra file: %v", err)
	}
}

func TestReadScriptNotScript(t *testing.T) {
	dir := t.TempDir()
	var buf bytes.Buffer
	if err := Write(&buf, NewDict().Set("x", int64(1)), "a"); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"save.pt": buf.Bytes(), "text.pt": []byte("not a zip")} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, 0o644)
		if _, err := ReadScript(p); err == nil || !strings.Contains(err.Error(), "not a TorchScript file") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := ReadScript("/dev/zero"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("/dev/zero: %v", err)
	}
}

// FuzzReadScript: arbitrary bytes give extra files or an error, never a
// panic, and never more than the bounds' worth of data. The seeds hold the
// hostile shapes of issue 21 (small enough to be seeds).
func FuzzReadScript(f *testing.F) {
	f.Add(scriptZip(f, map[string]string{"kvtorch.json": "{}", "tokenizer.json": "{}"}, 0, 0))
	f.Add(scriptZip(f, map[string]string{"kvtorch.json": "{}"}, 3, 1<<20))
	f.Add(scriptZip(f, nil, 2, 70<<20)) // each over MaxExtraBytes
	f.Add([]byte("PK\x05\x06" + string(make([]byte, 18))))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "f.pt")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := ReadScript(path, "kvtorch.json", "tokenizer.json", "fa", "fb")
		if err != nil {
			return
		}
		total := 0
		for _, b := range s.Data {
			total += len(b)
		}
		if total > MaxExtraTotal {
			t.Fatalf("read %d bytes", total)
		}
	})
}
