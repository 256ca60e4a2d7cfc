// Command ptbench measures kvtorch's pure-Go .pt writer and reader against
// Python's torch.save / torch.load on the same machine, in one run: rounds
// alternate between Go and Python, and the medians and their ratios are
// printed. Run by `make bench`.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	"github.com/kvtorch/kvtorch/bench/internal/stat"
	"github.com/kvtorch/kvtorch/pt"
)

func main() {
	mib := flag.Int("mib", 1024, "total tensor data per file, in MiB")
	tensors := flag.Int("tensors", 64, "number of float32 tensors")
	rounds := flag.Int("rounds", 3, "rounds (each: Go then Python)")
	dir := flag.String("dir", "", "folder for the files (default: a temporary folder)")
	flag.Parse()
	if err := run(*mib, *tensors, *rounds, *dir); err != nil {
		fmt.Fprintln(os.Stderr, "ptbench:", err)
		os.Exit(1)
	}
}

func run(mib, n, rounds int, dir string) error {
	py := os.Getenv("KVTORCH_PYTHON")
	if py == "" {
		return fmt.Errorf("KVTORCH_PYTHON is not set (run through `make bench`)")
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "ptbench")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	numel := mib << 20 / 4 / n
	gib := float64(n*numel*4) / (1 << 30)
	var goWrite, goSave, goRead, pySave, pyLoad []float64
	script := filepath.Join(filepath.Dir(os.Args[0]), "pt_bench.py")
	if _, err := os.Stat(script); err != nil {
		script = "bench/ptbench/pt_bench.py"
	}
	for r := 0; r < rounds; r++ {
		value := pt.NewDict()
		rng := rand.New(rand.NewPCG(uint64(r), 1))
		for i := 0; i < n; i++ {
			data := make([]float32, numel)
			for j := range data {
				data[j] = float32(rng.NormFloat64())
			}
			t, err := pt.FromSlice(data, int64(numel))
			if err != nil {
				return err
			}
			value.Set(fmt.Sprintf("t%d", i), t)
		}
		path := filepath.Join(dir, "go.pt")
		// Write: what torch.save does (no fsync).
		t0 := time.Now()
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := pt.Write(f, value, "go"); err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		goWrite = append(goWrite, time.Since(t0).Seconds())
		// Save: atomic, with fsync (what kvtorch commands use).
		t0 = time.Now()
		if err := pt.Save(path, value); err != nil {
			return err
		}
		goSave = append(goSave, time.Since(t0).Seconds())
		value = nil
		runtime.GC()
		t0 = time.Now()
		back, err := pt.Load(path)
		if err != nil {
			return err
		}
		goRead = append(goRead, time.Since(t0).Seconds())
		if back.(*pt.Dict).Len() != n {
			return fmt.Errorf("read back %d tensors", back.(*pt.Dict).Len())
		}
		back = nil
		os.Remove(path)
		runtime.GC()

		out, err := exec.Command(py, script, dir, fmt.Sprint(n), fmt.Sprint(numel), fmt.Sprint(r)).Output()
		if err != nil {
			return fmt.Errorf("python: %w", err)
		}
		var res struct{ SaveS, LoadS float64 }
		if err := json.Unmarshal(out, &struct {
			SaveS *float64 `json:"save_s"`
			LoadS *float64 `json:"load_s"`
		}{&res.SaveS, &res.LoadS}); err != nil {
			return fmt.Errorf("python output %q: %w", out, err)
		}
		pySave = append(pySave, res.SaveS)
		pyLoad = append(pyLoad, res.LoadS)
	}
	fmt.Printf(".pt I/O: %d float32 tensors, %.2f GiB per file, median of %d rounds (Go and Python alternating)\n", n, gib, rounds)
	fmt.Printf("  %-32s %8s %10s\n", "", "seconds", "GiB/s")
	row := func(name string, xs []float64) float64 {
		m := stat.Median(xs)
		fmt.Printf("  %-32s %8.3f %10.2f\n", name, m, gib/m)
		return m
	}
	gw := row("Go pt.Write (no fsync)", goWrite)
	gs := row("Go pt.Save (atomic, fsync)", goSave)
	ps := row("Python torch.save", pySave)
	gr := row("Go pt.Load", goRead)
	pl := row("Python torch.load", pyLoad)
	fmt.Printf("  write throughput, Go/Python: %.2fx (pt.Write), %.2fx (pt.Save)\n", ps/gw, ps/gs)
	fmt.Printf("  read throughput, Go/Python:  %.2fx\n", pl/gr)
	return nil
}
