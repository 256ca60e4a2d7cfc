package pt

import (
	"bytes"
	"testing"
)

// FuzzRead feeds arbitrary bytes to the reader: it must return a value or an
// error, never panic, and whatever it returns must save and read back.
// `go test` runs the seeds; `go test -fuzz=FuzzRead ./pt` explores.
func FuzzRead(f *testing.F) {
	var buf bytes.Buffer
	if err := Write(&buf, richValue(f), "seed"); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add(goodFileF(f))
	f.Add(archiveOf([]byte("\x80\x02}q\x00(X\x01\x00\x00\x00a]q\x01(K\x01G?\xf0\x00\x00\x00\x00\x00\x00\x88Neu.")))
	f.Add(archiveOf(tensorPickle(8, []int64{2, 4}, []int64{4, 1}), make([]byte, 32)))
	f.Add(archiveOf([]byte("\x80\x02]q\x00h\x00a.")))
	f.Add([]byte("PK\x05\x06" + string(make([]byte, 18))))
	f.Add(legacyMagic)
	// The hostile files of issue 14: repeated memo references, a cycle,
	// expanded (stride-0) views.
	f.Add(laughs(40))
	f.Add(archiveOf([]byte("\x80\x02]r\x00\x00\x00\x00j\x00\x00\x00\x00a.")))
	f.Add(archiveOf(tensorPickle(1, []int64{1, 1 << 30, 1 << 30}, []int64{0, 0, 0}), make([]byte, 4)))
	f.Add(archiveOf(tensorPickle(1, []int64{3, 1 << 62}, []int64{0, 0}), make([]byte, 4)))
	f.Add(archiveOf(tensorPickle(1, []int64{1 << 20}, []int64{0}), make([]byte, 4)))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Read(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := Write(&out, file.Value, "fuzz"); err != nil {
			t.Fatalf("read a value that does not save: %v", err)
		}
		if _, err := Read(bytes.NewReader(out.Bytes()), int64(out.Len())); err != nil {
			t.Fatalf("saved value does not read back: %v", err)
		}
	})
}

func goodFileF(f *testing.F) []byte {
	var buf bytes.Buffer
	x := mustT(FromSlice([]float32{1, 2, 3, 4}, 2, 2))
	if err := Write(&buf, NewDict().Set("x", x), "a"); err != nil {
		f.Fatal(err)
	}
	return buf.Bytes()
}
