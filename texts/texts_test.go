package texts

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/kvtorch/kvtorch/tokenizer"
)

func TestCorpus(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.txt"), []byte("hello world"), 0o644)
	os.WriteFile(filepath.Join(dir, "b.jsonl"), []byte("{\"text\": \"one\"}\n\n{\"input_ids\": [5, 6, 7]}\n"), 0o644)
	c, err := ReadCorpus([]string{dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Docs) != 3 || c.Files[1].Documents != 2 || c.Docs[2].Source != filepath.Join(dir, "b.jsonl")+":3" {
		t.Fatalf("docs: %+v", c.Docs)
	}
	d, err := c.Load(c.Docs[2])
	if err != nil || !d.Pre || len(d.IDs) != 3 || d.IDs[2] != 7 {
		t.Fatalf("input_ids: %+v %v", d, err)
	}
	if d, _ := c.Load(c.Docs[1]); d.Text != "one" {
		t.Fatalf("text: %+v", d)
	}
	stdin, err := ReadCorpus([]string{"-"}, strings.NewReader("from stdin"))
	if err != nil || len(stdin.Docs) != 1 {
		t.Fatal(err)
	}
	if d, _ := stdin.Load(stdin.Docs[0]); d.Text != "from stdin" {
		t.Fatalf("stdin: %q", d.Text)
	}
	bin := filepath.Join(dir, "bin.txt")
	os.WriteFile(bin, []byte("ELF\x00\x01\x02"), 0o644)
	os.Mkdir(filepath.Join(dir, "f"), 0o755)
	fifo := filepath.Join(dir, "f", "x.txt")
	syscall.Mkfifo(fifo, 0o644)
	for _, tc := range []struct{ path, want string }{
		{bin, "looks binary"}, {fifo, "FIFO"}, {"/dev/zero", "device"},
	} {
		if _, err := ReadCorpus([]string{tc.path}, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.path, err, tc.want)
		}
	}
	if _, err := ReadCorpus([]string{filepath.Join(dir, "f")}, nil); err == nil || !strings.Contains(err.Error(), "FIFO") {
		t.Errorf("a FIFO in a folder: %v", err)
	}
	for _, line := range []string{`{"text": 3}`, `{"input_ids": [1, -2]}`, `{"text": "a", "input_ids": [1]}`, `{}`, `[1]`} {
		p := filepath.Join(t.TempDir(), "bad.jsonl")
		os.WriteFile(p, []byte(line+"\n"), 0o644)
		if _, err := ReadCorpus([]string{p}, nil); err == nil || !strings.Contains(err.Error(), "bad.jsonl:1") {
			t.Errorf("%s: got %v", line, err)
		}
	}
}

// TestCorpusBOM: a byte order mark at the start of a file is not text, nor
// a JSONL parse error (issue 21: "invalid character 'ï'").
func TestCorpusBOM(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.jsonl"), []byte("\xef\xbb\xbf{\"text\": \"one\"}\n{\"text\": \"two\"}\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "b.txt"), []byte("\xef\xbb\xbfhello"), 0o644)
	c, err := ReadCorpus([]string{dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range c.Docs {
		doc, err := c.Load(d)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, doc.Text)
	}
	if strings.Join(got, "|") != "one|two|hello" {
		t.Fatalf("documents %q", got)
	}
}

// TestWindowsMemoryFollowsTokens: --max-tokens bounds what is read and
// tokenized whatever the text's shape (issue 21: a file without blank lines
// was tokenized whole; 100 MB of one sentence per line took 4.28 GB).
func TestWindowsMemoryFollowsTokens(t *testing.T) {
	tok, err := tokenizer.LoadFile("../testdata/refmodel.tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	line := "The quick brown fox jumps over the lazy dog, again and again.\n"
	for name, text := range map[string]string{
		"lines.txt": strings.Repeat(line, (32<<20)/len(line)),                        // no blank line
		"one.txt":   strings.Repeat(strings.TrimSpace(line)+" ", (32<<20)/len(line)), // no line break
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := ReadCorpus([]string{path}, nil)
		if err != nil {
			t.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		w, err := c.Windows(tok, 4096, WindowOptions{SeqLen: 512, MaxTokens: 2044, BOS: -1, EOS: -1})
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatal(err)
		}
		if w.Tokens() != 2044 {
			t.Fatalf("%s: %d tokens", name, w.Tokens())
		}
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 24<<20 {
			t.Fatalf("%s: 2,044 tokens of a 32 MB file allocated %d MB", name, alloc>>20)
		}
	}
}

func refTokenizer(t *testing.T) *tokenizer.Tokenizer {
	t.Helper()
	tok, err := tokenizer.LoadFile("../testdata/refmodel.tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// numbered writes files of numbered lines: file f's line i says "file f line i".
func numbered(t *testing.T, files, lines int) string {
	t.Helper()
	dir := t.TempDir()
	for f := 0; f < files; f++ {
		var b strings.Builder
		for i := 0; i < lines; i++ {
			fmt.Fprintf(&b, "file %c line %d of the text, with a few more words.\n", 'a'+f, i)
		}
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("%c.txt", 'a'+f)), []byte(b.String()), 0o644)
	}
	return dir
}

// TestWindowsSpread: a sample of windows comes from every document of every
// path, not the first files only (issue 19: a --max-tokens run read only
// the first licence), the same for the same seed, and records its documents.
func TestWindowsSpread(t *testing.T) {
	tok := refTokenizer(t)
	dir := numbered(t, 6, 8000) // about 6 × 400 kB: sampled
	c, err := ReadCorpus([]string{dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	o := WindowOptions{SeqLen: 128, MaxTokens: 12 * 127, BOS: -1, EOS: 0}
	w, err := c.Windows(tok, 4096, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Windows) != 12 || len(w.Documents) != 6 {
		t.Fatalf("%d windows from documents %v", len(w.Windows), w.Documents)
	}
	for _, win := range w.Windows {
		if len(win) != 128 {
			t.Fatalf("a window of %d tokens", len(win))
		}
	}
	again, _ := c.Windows(tok, 4096, o)
	if fmt.Sprint(again.Windows) != fmt.Sprint(w.Windows) {
		t.Fatal("the same seed gave other windows")
	}
	o.Seed = 1
	other, _ := c.Windows(tok, 4096, o)
	if fmt.Sprint(other.Windows) == fmt.Sprint(w.Windows) {
		t.Fatal("another seed gave the same windows")
	}
	// A small text: its windows are all of it, evenly chosen, from every file.
	small := numbered(t, 4, 60)
	c, _ = ReadCorpus([]string{small}, nil)
	w, err = c.Windows(tok, 4096, WindowOptions{SeqLen: 64, MaxTokens: 4 * 63, BOS: -1, EOS: 0})
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Windows) != 4 || len(w.Documents) < 3 {
		t.Fatalf("%d windows from documents %v", len(w.Windows), w.Documents)
	}
}

// TestWindowsStartWithBOS: with a BOS, every window starts with it and
// holds SeqLen − 1 tokens of text (issue 20: a model that expects BOS was
// fed without it); a document's own leading BOS is not repeated.
func TestWindowsStartWithBOS(t *testing.T) {
	tok := refTokenizer(t)
	dir := numbered(t, 2, 300)
	os.WriteFile(filepath.Join(dir, "pre.jsonl"), []byte(`{"input_ids": [7, 100, 101, 102, 103, 104]}`+"\n"), 0o644)
	c, err := ReadCorpus([]string{dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, max := range []int{0, 10 * 63} {
		w, err := c.Windows(tok, 4096, WindowOptions{SeqLen: 64, MaxTokens: max, BOS: 7, EOS: 0})
		if err != nil {
			t.Fatal(err)
		}
		for i, win := range w.Windows {
			if len(win) != 64 || win[0] != 7 || slices.Contains(win[1:], 7) {
				t.Fatalf("max %d window %d: %v", max, i, win[:8])
			}
		}
		if w.Tokens() != 63*len(w.Windows) {
			t.Fatalf("%d tokens predicted", w.Tokens())
		}
	}
	seqs, _, err := c.Sequences(tok, 4096, c.Docs, SequenceOptions{MaxLength: 50, MinTokens: 2, BOS: 7})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range seqs {
		if s.IDs[0] != 7 || len(s.IDs) > 50 || slices.Contains(s.IDs[1:], 7) {
			t.Fatalf("sequence of %s: %v", s.Source, s.IDs[:min(8, len(s.IDs))])
		}
	}
}

// TestFiles lists what ReadCorpus reads: a folder's *.txt and *.jsonl files
// (recursively, sorted), files as they are, no stdin.
func TestFiles(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "sub"), 0o755)
	for _, f := range []string{"b.txt", "a.jsonl", "notes.md", "sub/c.txt"} {
		os.WriteFile(filepath.Join(dir, f), []byte("{\"text\": \""+f+"\"}\n"), 0o644) // distinct: copies are read once
	}
	got := Files([]string{dir, "-", "missing.txt"})
	want := []string{filepath.Join(dir, "a.jsonl"), filepath.Join(dir, "b.txt"), filepath.Join(dir, "sub", "c.txt"), "missing.txt"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Files: got %v, want %v", got, want)
	}
	c, err := ReadCorpus([]string{dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Docs) != 3 {
		t.Fatalf("ReadCorpus read %d documents of the folder, Files lists 3", len(c.Docs))
	}
}
