package plot

import (
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/kvfile"
)

func decodePNG(t *testing.T, path string) (w, h int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s is not a PNG: %v", path, err)
	}
	b := img.Bounds()
	// Not blank: some pixel differs from the top-left corner.
	c0 := img.At(b.Min.X, b.Min.Y)
	for y := b.Min.Y; y < b.Max.Y; y += 7 {
		for x := b.Min.X; x < b.Max.X; x += 7 {
			if img.At(x, y) != c0 {
				return b.Dx(), b.Dy()
			}
		}
	}
	t.Fatalf("%s is blank", path)
	return 0, 0
}

func TestTradeoff(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.png")
	series := []Series{
		{Name: "a", Points: []Point{{1.5, 0.001}, {3, 0.02}, {6, 0.3}, {9, 2}}, Chosen: &Point{3, 0.02}},
		{Name: "b", Points: []Point{{1.2, 0}, {2, 0.04}}},
	}
	if err := Tradeoff(path, "test", 0.05, series); err != nil {
		t.Fatal(err)
	}
	if w, h := decodePNG(t, path); w < 500 || h < 300 {
		t.Fatalf("size %dx%d", w, h)
	}
}

func TestSpectra(t *testing.T) {
	basis := func(groups, dim int, scale float64) *kvfile.Basis {
		b := &kvfile.Basis{Groups: groups, Dim: dim}
		for g := 0; g < groups; g++ {
			for i := 0; i < dim; i++ {
				b.Eigenvalues = append(b.Eigenvalues, scale/float64(i+1))
			}
		}
		return b
	}
	side := func(scale float64) kvfile.SideBases {
		return kvfile.SideBases{PerHead: basis(2, 8, scale), Joint: basis(1, 16, scale)}
	}
	cal := &kvfile.Calibration{Header: kvfile.Header{Model: kvfile.ModelInfo{KVSource: "pre_rope"},
		Geometry: compress.Geometry{Layers: 2, Heads: 2, Dims: [2]int{8, 8}}},
		Layers: [][2]kvfile.SideBases{{side(1), side(2)}, {side(3), side(4)}}}
	path := filepath.Join(t.TempDir(), "s.png")
	if err := Spectra(path, cal); err != nil {
		t.Fatal(err)
	}
	if w, h := decodePNG(t, path); w < 800 || h < 300 {
		t.Fatalf("size %dx%d", w, h)
	}
	if err := Spectra(filepath.Join(t.TempDir(), "missing", "s.png"), cal); err == nil {
		t.Fatal("writing into a missing folder: got nil error")
	}
}
