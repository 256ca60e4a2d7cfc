package plot

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

type canvas struct {
	img *vgimg.Canvas
	dc  draw.Canvas
}

func vgimgCanvas(w, h vg.Length) *canvas {
	img := vgimg.New(w, h)
	return &canvas{img: img, dc: draw.New(img)}
}

func (c *canvas) save(path string) error {
	return writeAtomic(path, func(w io.Writer) error {
		_, err := (vgimg.PngCanvas{Canvas: c.img}).WriteTo(w)
		return err
	})
}

// writeAtomic writes a file under a temporary name in the same folder and
// renames it, so a failure never leaves a half-written file at path.
func writeAtomic(path string, write func(io.Writer) error) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err = write(tmp); err != nil {
		return fmt.Errorf("plot: %s: %w", path, err)
	}
	if err = tmp.Chmod(0o644); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

type tiles struct{ t draw.Tiles }

func plotTiles(rows, cols int) tiles {
	return tiles{draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}}
}

func (t tiles) At(c draw.Canvas, row, col int) draw.Canvas { return t.t.At(c, col, row) }
