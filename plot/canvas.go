package plot

import (
	"fmt"
	"io"

	"github.com/kvtorch/kvtorch/internal/atomicfile"
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

// writeAtomic writes a PNG so that a failure leaves no half-written file.
func writeAtomic(path string, write func(io.Writer) error) error {
	if err := atomicfile.Write(path, write); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	return nil
}

type tiles struct{ t draw.Tiles }

func plotTiles(rows, cols int) tiles {
	return tiles{draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}}
}

func (t tiles) At(c draw.Canvas, row, col int) draw.Canvas { return t.t.At(c, col, row) }
