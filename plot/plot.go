// Package plot draws kvtorch's figures as PNG files with gonum.org/v1/plot:
// the perplexity/compression trade-off of measured candidates, and the
// explained-variance spectra of a calibration.
package plot

import (
	"fmt"
	"image/color"
	"io"

	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/kvfile"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Point is one measured setting.
type Point struct {
	Ratio float64 // compression ratio
	Delta float64 // perplexity delta, a fraction
}

// Series is one method's measured points; Chosen, when set, is marked.
type Series struct {
	Name   string
	Points []Point
	Chosen *Point
}

// Tradeoff draws perplexity delta (%) against compression ratio for each
// series, with the budget as a horizontal line.
func Tradeoff(path, title string, budget float64, series []Series) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "compression ratio of the whole KV cache (x)"
	p.Y.Label.Text = "perplexity delta (%)"
	p.Add(plotter.NewGrid())
	maxRatio := 1.0
	for i, s := range series {
		pts := make(plotter.XYs, 0, len(s.Points))
		for _, q := range s.Points {
			if q.Delta*100 > 50 { // keep the budget region readable
				continue
			}
			pts = append(pts, plotter.XY{X: q.Ratio, Y: 100 * q.Delta})
			maxRatio = max(maxRatio, q.Ratio)
		}
		sc, err := plotter.NewScatter(pts)
		if err != nil {
			return err
		}
		sc.Color = plotutil.Color(i)
		sc.Shape = plotutil.Shape(i)
		p.Add(sc)
		p.Legend.Add(s.Name, sc)
		if s.Chosen != nil {
			ch, err := plotter.NewScatter(plotter.XYs{{X: s.Chosen.Ratio, Y: 100 * s.Chosen.Delta}})
			if err != nil {
				return err
			}
			ch.Color = plotutil.Color(i)
			ch.Radius = vg.Points(6)
			p.Add(ch)
		}
	}
	line, err := plotter.NewLine(plotter.XYs{{X: 1, Y: 100 * budget}, {X: maxRatio, Y: 100 * budget}})
	if err != nil {
		return err
	}
	line.Color = color.RGBA{R: 200, A: 255}
	line.Dashes = []vg.Length{vg.Points(4), vg.Points(4)}
	p.Add(line)
	p.Legend.Add(fmt.Sprintf("budget %+.0f%%", 100*budget), line)
	p.Legend.Top = false
	wt, err := p.WriterTo(8*vg.Inch, 5*vg.Inch, "png")
	if err != nil {
		return err
	}
	return writeAtomic(path, func(w io.Writer) error {
		_, err := wt.WriteTo(w)
		return err
	})
}

// Spectra draws, per layer, the explained variance against rank, for K and
// V side by side: of the joint bases (one over the KV heads joined) when the
// calibration has them, else of the per-head bases (mean over heads).
func Spectra(path string, cal *kvfile.Calibration) error {
	var plots []*plot.Plot
	joint := cal.HasJoint()
	for _, kind := range compress.Kinds {
		p := plot.New()
		p.Title.Text = kind.String()
		if kind == compress.K {
			p.Title.Text = fmt.Sprintf("K (%s)", cal.Model.KVSource)
		}
		p.X.Label.Text = "rank (per KV head)"
		if joint {
			p.X.Label.Text = fmt.Sprintf("rank (joint over %d KV heads)", cal.Geometry.Heads)
		}
		p.Y.Label.Text = "explained variance"
		p.Y.Min, p.Y.Max = 0, 1
		p.Add(plotter.NewGrid())
		for l, pair := range cal.Layers {
			b := pair[kind].PerHead
			if joint {
				b = pair[kind].Joint
			}
			pts := make(plotter.XYs, b.Dim+1)
			for r := 0; r <= b.Dim; r++ {
				pts[r] = plotter.XY{X: float64(r), Y: b.ExplainedVariance(-1, r)}
			}
			ln, err := plotter.NewLine(pts)
			if err != nil {
				return err
			}
			ln.Color = plotutil.DarkColors[l%len(plotutil.DarkColors)]
			ln.Dashes = plotutil.Dashes(l / len(plotutil.DarkColors))
			p.Add(ln)
			p.Legend.Add(fmt.Sprintf("layer %d", l), ln)
		}
		p.Legend.Top = false
		p.Legend.Left = false
		p.Legend.XOffs = -vg.Points(5)
		p.Legend.YOffs = vg.Points(5)
		plots = append(plots, p)
	}
	img := vgimgCanvas(12*vg.Inch, 5*vg.Inch)
	tiles := plotTiles(1, 2)
	for i, p := range plots {
		p.Draw(tiles.At(img.dc, 0, i))
	}
	return img.save(path)
}
