// Command tokbench measures kvtorch's Go tokenizer against HuggingFace
// tokenizers (Python, single thread) on the same text in one run: encode
// throughput in MB/s, medians over rounds, and whether the ids agree.
// Run by `make bench`.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/kvtorch/kvtorch/bench/internal/stat"
	"github.com/kvtorch/kvtorch/tokenizer"
)

const pyBench = `
import json, sys, time, os
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
docs = json.load(open(sys.argv[2]))
rounds = int(sys.argv[3])
times, ids = [], None
for r in range(rounds):
    t0 = time.perf_counter()
    out = [tok.encode(d).ids for d in docs]
    times.append(time.perf_counter() - t0)
    ids = out
print(json.dumps({"times": times, "ids": ids}))
`

func main() {
	tokPath := flag.String("tokenizer", "testdata/refmodel.tokenizer.json", "tokenizer.json")
	textDir := flag.String("texts", "testdata/eval", "folder of .txt files to encode")
	rounds := flag.Int("rounds", 5, "rounds")
	flag.Parse()
	if err := run(*tokPath, *textDir, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "tokbench:", err)
		os.Exit(1)
	}
}

func run(tokPath, textDir string, rounds int) error {
	py := os.Getenv("KVTORCH_PYTHON")
	if py == "" {
		return fmt.Errorf("KVTORCH_PYTHON is not set (run through `make bench`)")
	}
	files, _ := filepath.Glob(filepath.Join(textDir, "*.txt"))
	if len(files) == 0 {
		return fmt.Errorf("no .txt files in %s", textDir)
	}
	var docs []string
	size := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		docs = append(docs, string(b))
		size += len(b)
	}
	tok, err := tokenizer.LoadFile(tokPath)
	if err != nil {
		return err
	}
	docsJSON := filepath.Join(os.TempDir(), "tokbench-docs.json")
	b, _ := json.Marshal(docs)
	if err := os.WriteFile(docsJSON, b, 0o644); err != nil {
		return err
	}
	defer os.Remove(docsJSON)

	var goTimes []float64
	var goIDs [][]int
	for r := 0; r < rounds; r++ {
		t0 := time.Now()
		out := make([][]int, len(docs))
		for i, d := range docs {
			out[i] = tok.Encode(d)
		}
		goTimes = append(goTimes, time.Since(t0).Seconds())
		goIDs = out
	}
	cmd := exec.Command(py, "-c", pyBench, tokPath, docsJSON, fmt.Sprint(rounds))
	cmd.Stderr = os.Stderr
	outb, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("python: %w", err)
	}
	var res struct {
		Times []float64 `json:"times"`
		IDs   [][]int   `json:"ids"`
	}
	if err := json.Unmarshal(outb, &res); err != nil {
		return err
	}
	same := len(res.IDs) == len(goIDs)
	tokens := 0
	for i := range goIDs {
		same = same && slices.Equal(goIDs[i], res.IDs[i])
		tokens += len(goIDs[i])
	}
	mb := float64(size) / 1e6
	// The first round fills both BPE caches; report the median of the rest.
	g, p := stat.Median(goTimes[1:]), stat.Median(res.Times[1:])
	fmt.Printf("tokenizer: %s on %d files (%.2f MB, %d tokens), single thread, median of %d warm rounds\n",
		filepath.Base(tokPath), len(docs), mb, tokens, rounds-1)
	fmt.Printf("  kvtorch Go tokenizer     %7.2f MB/s  (first round %.2f MB/s)\n", mb/g, mb/goTimes[0])
	fmt.Printf("  HF tokenizers (Python)   %7.2f MB/s  (first round %.2f MB/s)\n", mb/p, mb/res.Times[0])
	fmt.Printf("  Go/HF throughput: %.2fx; ids identical: %v\n", p/g, same)
	if !same {
		return fmt.Errorf("the ids differ from HF's")
	}
	return nil
}
