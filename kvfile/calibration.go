package kvfile

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/pt"
)

// Calibration is the content of a calibration file: per layer, the PCA
// bases of K and of V, per KV head and joint.
type Calibration struct {
	Header
	Tokens int64
	Layers [][2]SideBases // [layer][K, V]
}

// HasJoint reports whether the file holds joint bases (format 2 does).
func (c *Calibration) HasJoint() bool {
	return len(c.Layers) > 0 && c.Layers[0][0].Joint != nil
}

// Basis returns the basis a side of a setting uses.
func (c *Calibration) Basis(layer int, k compress.Kind, b compress.Basis) (*Basis, error) {
	sb := c.Layers[layer][k]
	if b == compress.Joint {
		if sb.Joint == nil {
			return nil, fmt.Errorf("%w: the calibration has no joint bases (made by an older kvtorch): calibrate again", ErrMismatch)
		}
		return sb.Joint, nil
	}
	return sb.PerHead, nil
}

// basisDict lays a basis out as calibration files hold it: a per-head basis
// [H, D, D] and [H, D]; a joint basis without the group axis, [E, E] and [E].
func basisDict(b *Basis, joint bool) *pt.Dict {
	g, n := int64(b.Groups), int64(b.Dim)
	shape := []int64{g, n}
	if joint {
		shape = []int64{n}
	}
	return pt.NewDict().Set("U", f32(b.U, append(append([]int64{}, shape...), n)...)).
		Set("eigenvalues", f32(b.Eigenvalues, shape...)).Set("mean", f32(b.Mean, shape...)).
		Set("latent_std", f32(b.LatentStd(), shape...)).Set("energy_fraction", f32(b.energyFraction(), shape...))
}

// Save writes the calibration file, atomically. It refuses to write one that
// LoadCalibration (or Python) would refuse: values that are not finite in
// float32, bases that are not orthonormal.
func (c *Calibration) Save(path string) error {
	if err := c.valid(); err != nil {
		return err
	}
	return c.save(path)
}

// valid checks every basis as LoadCalibration does.
func (c *Calibration) valid() error {
	for l, pair := range c.Layers {
		for _, k := range compress.Kinds {
			for _, b := range []*Basis{pair[k].PerHead, pair[k].Joint} {
				if b == nil {
					continue
				}
				if err := b.valid(); err != nil {
					return fmt.Errorf("kvfile: calibration: layer %d %s: %w", l, k, err)
				}
			}
		}
	}
	return nil
}

// save writes the file, unchecked.
func (c *Calibration) save(path string) error {
	d := c.dict("kvtorch-calibration")
	d.Set("tokens", c.Tokens)
	layers := []any{}
	for _, pair := range c.Layers {
		ld := pt.NewDict()
		for _, k := range compress.Kinds {
			bd := basisDict(pair[k].PerHead, false)
			if pair[k].Joint != nil {
				bd.Set("joint", basisDict(pair[k].Joint, true))
			}
			ld.Set(k.String(), bd)
		}
		layers = append(layers, ld)
	}
	d.Set("layers", layers)
	if err := pt.Save(path, d); err != nil {
		return fmt.Errorf("kvfile: %w", err)
	}
	return nil
}

func (r *reader) basis(d *pt.Dict, groups, dim int64, joint bool) *Basis {
	shape := []int64{groups, dim}
	if joint {
		shape = []int64{dim}
	}
	b := &Basis{Groups: int(groups), Dim: int(dim), U: r.floats(d, "U", append(append([]int64{}, shape...), dim)...),
		Eigenvalues: r.floats(d, "eigenvalues", shape...), Mean: r.floats(d, "mean", shape...)}
	if r.err == nil {
		if err := b.check(); err != nil {
			r.fail("%v", err)
		}
	}
	return b
}

// valid is check, and values that float32 (the file's dtype) holds.
func (b *Basis) valid() error {
	for _, xs := range [][]float64{b.U, b.Eigenvalues, b.Mean} {
		for _, x := range xs {
			if f := float32(x); math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
				return fmt.Errorf("%w: a value (%g) that is not finite in float32", ErrFormat, x)
			}
		}
	}
	if err := b.check(); err != nil {
		return fmt.Errorf("%w: %v", ErrFormat, err)
	}
	return nil
}

// check refuses eigenvalues below zero and bases that are not orthonormal:
// UᵀU v = v for random probes v (cheap where checking UᵀU = I is not).
func (b *Basis) check() error {
	for i, v := range b.Eigenvalues {
		if v < 0 {
			return fmt.Errorf("eigenvalue %d is negative (%g)", i, v)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	n := b.Dim
	v, uv, back := make([]float64, n), make([]float64, n), make([]float64, n)
	for g := 0; g < b.Groups; g++ {
		u := b.U[g*n*n : (g+1)*n*n]
		for probe := 0; probe < 2; probe++ {
			for i := range v {
				v[i] = rng.NormFloat64()
			}
			for j := 0; j < n; j++ { // uv = Uᵀ v
				s := 0.0
				for i := 0; i < n; i++ {
					s += u[i*n+j] * v[i]
				}
				uv[j] = s
			}
			norm, diff := 0.0, 0.0
			for i := 0; i < n; i++ { // back = U uv
				s := 0.0
				for j := 0; j < n; j++ {
					s += u[i*n+j] * uv[j]
				}
				back[i] = s
				norm += v[i] * v[i]
				diff += (s - v[i]) * (s - v[i])
			}
			if math.Sqrt(diff/norm) > 1e-3 { // stored as float32
				return fmt.Errorf("the basis of group %d is not orthonormal (relative error %.2g)", g, math.Sqrt(diff/norm))
			}
		}
	}
	return nil
}

// LoadCalibration reads a calibration file (format 1 or 2), checking its
// schema, shapes, values and bases.
func LoadCalibration(path string) (*Calibration, error) {
	r, d, h, ver, err := readHeader(path, "kvtorch-calibration", 1)
	if err != nil {
		return nil, err
	}
	c := &Calibration{Header: h, Tokens: r.int(d, "tokens")}
	g := h.Geometry
	heads := int64(g.Heads)
	for _, ld := range r.layers(d, g.Layers) {
		var pair [2]SideBases
		for _, k := range compress.Kinds {
			bd := r.dict(ld, k.String())
			dim := int64(g.Dims[k])
			pair[k].PerHead = r.basis(bd, heads, dim, false)
			if ver >= 2 {
				pair[k].Joint = r.basis(r.dict(bd, "joint"), 1, heads*dim, true)
			}
		}
		c.Layers = append(c.Layers, pair)
		if r.err != nil {
			break
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	if c.Tokens < 2 {
		return nil, fmt.Errorf("%s: %w: %d tokens", path, ErrFormat, c.Tokens)
	}
	return c, nil
}
