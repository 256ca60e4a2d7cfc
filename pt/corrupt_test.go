package pt

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

func mustZip(t *testing.T, b []byte) *zip.Reader {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	return zr
}

// archiveOf builds a torch.save-style zip from a hand-made data.pkl and
// storage records (key -> bytes), in that order.
func archiveOf(pkl []byte, storages ...[]byte) []byte {
	var buf bytes.Buffer
	z := newZipWriter(&buf)
	z.add("a/data.pkl", pkl)
	for i, s := range storages {
		z.add("a/data/"+string(rune('0'+i)), s)
	}
	z.add("a/version", []byte("3\n"))
	if err := z.close(); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// tensorPickle is data.pkl for one float32 tensor over storage "0" with the
// given declared numel, size and stride.
func tensorPickle(numel int64, size, stride []int64) []byte {
	e := &encoder{keys: map[*Storage]int{}}
	e.buf.Write([]byte{opProto, 2})
	e.global("torch._utils", "_rebuild_tensor_v2")
	e.op(opMark)
	e.op(opMark)
	e.str("storage")
	e.global("torch", "FloatStorage")
	e.str("0")
	e.str("cpu")
	e.int(numel)
	e.op(opTuple)
	e.op(opBinPersID)
	e.int(0)
	e.ints(size)
	e.ints(stride)
	e.bool(false)
	e.global("collections", "OrderedDict")
	e.op(opEmptyTuple)
	e.op(opReduce)
	e.op(opTuple)
	e.op(opReduce)
	e.op(opStop)
	return e.buf.Bytes()
}

func readBytes(b []byte) error {
	_, err := Read(bytes.NewReader(b), int64(len(b)))
	return err
}

func goodFile(t *testing.T) []byte {
	var buf bytes.Buffer
	x := mustT(FromSlice([]float32{1, 2, 3, 4, 5, 6, 7, 8}, 2, 4))
	if err := Write(&buf, NewDict().Set("x", x).Set("s", "text"), "a"); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestCorruptInputs(t *testing.T) {
	good := goodFile(t)
	if err := readBytes(good); err != nil {
		t.Fatalf("the good file: %v", err)
	}
	f32 := make([]byte, 4*8)
	storageOffset := func() int64 {
		zr := mustZip(t, good)
		for _, e := range zr.File {
			if e.Name == "a/data/0" {
				off, _ := e.DataOffset()
				return off
			}
		}
		t.Fatal("no storage record")
		return 0
	}()
	flipped := append([]byte{}, good...)
	flipped[storageOffset+3] ^= 0x40

	cases := []struct {
		name string
		data []byte
		want string // a fragment the error must contain
	}{
		{"empty file", nil, "empty file"},
		{"not a zip", []byte("hello, this is text\n"), "not a torch.save file"},
		{"legacy format", append(append([]byte{}, legacyMagic...), 0x2e), "legacy"},
		{"truncated", good[:len(good)/2], "zip"},
		{"truncated end", good[:len(good)-10], "zip"},
		{"zip without data.pkl", func() []byte {
			var buf bytes.Buffer
			zw := zip.NewWriter(&buf)
			w, _ := zw.Create("other.txt")
			w.Write([]byte("x"))
			zw.Close()
			return buf.Bytes()
		}(), "data.pkl"},
		{"corrupt storage bytes", flipped, "CRC"},
		{"other global", archiveOf([]byte("\x80\x02cos\nsystem\n.")), "unsupported global os.system"},
		{"builtins eval", archiveOf([]byte("\x80\x02cbuiltins\neval\n.")), "builtins.eval"},
		{"unknown opcode", archiveOf([]byte("\x80\x02I42\n.")), "unsupported pickle opcode 0x49"},
		{"no STOP", archiveOf([]byte("\x80\x02}")), "STOP"},
		{"stack underflow", archiveOf([]byte("\x80\x02s.")), "underflow"},
		{"bad memo", archiveOf([]byte("\x80\x02h\x05.")), "memo"},
		{"huge string length", archiveOf([]byte("\x80\x02X\xff\xff\xff\x7f.")), "truncated"},
		{"huge integer", archiveOf([]byte("\x80\x02\x8a\x10" + strings.Repeat("\x01", 16) + ".")), "int64"},
		{"invalid utf-8", archiveOf([]byte("\x80\x02X\x02\x00\x00\x00\xff\xfe.")), "UTF-8"},
		{"cyclic list", archiveOf([]byte("\x80\x02]q\x00h\x00a.")), "cyclic"},
		{"missing storage", archiveOf(tensorPickle(8, []int64{8}, []int64{1})), "missing"},
		{"storage size mismatch", archiveOf(tensorPickle(8, []int64{8}, []int64{1}), f32[:12]), "declares 8 elements"},
		{"huge declared storage", archiveOf(tensorPickle(1<<60, []int64{8}, []int64{1}), f32), "declares 1152921504606846976"},
		{"view past storage", archiveOf(tensorPickle(8, []int64{3, 4}, []int64{4, 1}), f32), "reaches element 11"},
		{"negative stride", archiveOf(tensorPickle(8, []int64{2}, []int64{-1}), f32), "negative"},
		{"protocol 9", archiveOf([]byte("\x80\x09N.")), "protocol 9"},
		{"values left", archiveOf([]byte("\x80\x02NN.")), "left on the stack"},
	}
	for _, c := range cases {
		err := readBytes(c.data)
		if err == nil {
			t.Errorf("%s: got nil error", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q does not mention %q", c.name, err, c.want)
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error spans lines: %q", c.name, err)
		}
	}
}

func TestDeclaredSizeBeyondFile(t *testing.T) {
	// A stored record whose header claims far more bytes than the file has.
	good := goodFile(t)
	zr := mustZip(t, good)
	_ = zr
	bad := append([]byte{}, good...)
	// Patch the central directory's uncompressed size of a/data.pkl.
	cd := bytes.Index(bad, []byte("PK\x01\x02"))
	binary.LittleEndian.PutUint32(bad[cd+20:], 0x7fffffff)
	binary.LittleEndian.PutUint32(bad[cd+24:], 0x7fffffff)
	err := readBytes(bad)
	if err == nil {
		t.Fatal("got nil error")
	}
	t.Logf("oversized record: %v", err)
}
