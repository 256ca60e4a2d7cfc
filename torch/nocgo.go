//go:build !cgo

package torch

// Built without cgo (CGO_ENABLED=0), this package has no libtorch: every
// operation returns ErrNoLibtorch, so that the packages above it compile and
// their pure-Go parts (file formats, tokenizer, inspect, merge) work anywhere.

import "errors"

// ErrNoLibtorch is returned by every operation of a build without cgo.
var ErrNoLibtorch = errors.New("torch: this kvtorch was built without cgo (CGO_ENABLED=0) and has no libtorch; build it with `make build`")

// Tensor is a libtorch tensor; without cgo there are none.
type Tensor struct{}

// Module is a TorchScript module; without cgo there are none.
type Module struct{}

func (t *Tensor) Close() error                                    { return nil }
func (t *Tensor) DType() DType                                    { return Invalid }
func (t *Tensor) Shape() []int64                                  { return nil }
func (t *Tensor) Dim() int                                        { return 0 }
func (t *Tensor) Numel() int64                                    { return 0 }
func (t *Tensor) Device() Device                                  { return CPU }
func (t *Tensor) String() string                                  { return "Tensor(unavailable: no cgo)" }
func (t *Tensor) Bytes() ([]byte, error)                          { return nil, ErrNoLibtorch }
func (t *Tensor) Float64s() ([]float64, error)                    { return nil, ErrNoLibtorch }
func (t *Tensor) To(Device, DType) (*Tensor, error)               { return nil, ErrNoLibtorch }
func (t *Tensor) ToDevice(Device) (*Tensor, error)                { return nil, ErrNoLibtorch }
func (t *Tensor) ToDType(DType) (*Tensor, error)                  { return nil, ErrNoLibtorch }
func (t *Tensor) Clone() (*Tensor, error)                         { return nil, ErrNoLibtorch }
func (t *Tensor) Reshape(...int64) (*Tensor, error)               { return nil, ErrNoLibtorch }
func (t *Tensor) Transpose(int64, int64) (*Tensor, error)         { return nil, ErrNoLibtorch }
func (t *Tensor) Permute(...int64) (*Tensor, error)               { return nil, ErrNoLibtorch }
func (t *Tensor) Narrow(int64, int64, int64) (*Tensor, error)     { return nil, ErrNoLibtorch }
func (t *Tensor) Flip(...int64) (*Tensor, error)                  { return nil, ErrNoLibtorch }
func (t *Tensor) Matmul(*Tensor) (*Tensor, error)                 { return nil, ErrNoLibtorch }
func (t *Tensor) Add(*Tensor) (*Tensor, error)                    { return nil, ErrNoLibtorch }
func (t *Tensor) Sub(*Tensor) (*Tensor, error)                    { return nil, ErrNoLibtorch }
func (t *Tensor) Mul(*Tensor) (*Tensor, error)                    { return nil, ErrNoLibtorch }
func (t *Tensor) MulScalar(float64) (*Tensor, error)              { return nil, ErrNoLibtorch }
func (t *Tensor) AddInPlace(*Tensor) error                        { return ErrNoLibtorch }
func (t *Tensor) CopyFrom(*Tensor) error                          { return ErrNoLibtorch }
func (t *Tensor) Sum(bool, ...int64) (*Tensor, error)             { return nil, ErrNoLibtorch }
func (t *Tensor) Mean(bool, ...int64) (*Tensor, error)            { return nil, ErrNoLibtorch }
func (t *Tensor) LogSoftmax(int64) (*Tensor, error)               { return nil, ErrNoLibtorch }
func (t *Tensor) Exp() (*Tensor, error)                           { return nil, ErrNoLibtorch }
func (t *Tensor) Gather(int64, *Tensor) (*Tensor, error)          { return nil, ErrNoLibtorch }
func (t *Tensor) IsFinite() (*Tensor, error)                      { return nil, ErrNoLibtorch }
func (t *Tensor) AllFinite() (bool, error)                        { return false, ErrNoLibtorch }
func FromSlice[T Element]([]T, ...int64) (*Tensor, error)         { return nil, ErrNoLibtorch }
func FromBytes([]byte, DType, ...int64) (*Tensor, error)          { return nil, ErrNoLibtorch }
func ToSlice[T Element](*Tensor) ([]T, error)                     { return nil, ErrNoLibtorch }
func Zeros(DType, Device, ...int64) (*Tensor, error)              { return nil, ErrNoLibtorch }
func Randn(DType, Device, ...int64) (*Tensor, error)              { return nil, ErrNoLibtorch }
func Eigh(*Tensor) (eigenvalues, eigenvectors *Tensor, err error) { return nil, nil, ErrNoLibtorch }
func SVD(*Tensor) (u, s, vh *Tensor, err error)                   { return nil, nil, nil, ErrNoLibtorch }

func Load(string, Device) (*Module, error)              { return nil, ErrNoLibtorch }
func (m *Module) Close() error                          { return nil }
func (m *Module) SetOptimize(bool)                      {}
func (m *Module) Path() string                          { return "" }
func (m *Module) Device() Device                        { return CPU }
func (m *Module) Forward(...*Tensor) (Value, error)     { return nil, ErrNoLibtorch }
func (m *Module) Run(string, ...*Tensor) (Value, error) { return nil, ErrNoLibtorch }
func (m *Module) Methods() ([]string, error)            { return nil, ErrNoLibtorch }
func (m *Module) BufferNames() ([]string, error)        { return nil, ErrNoLibtorch }
func (m *Module) Buffer(string) (*Tensor, error)        { return nil, ErrNoLibtorch }
func (m *Module) SetBuffer(string, *Tensor) error       { return ErrNoLibtorch }
func (m *Module) ExtraFile(string) ([]byte, error)      { return nil, ErrNoLibtorch }
func ExtraFileNames(string) ([]string, error)           { return nil, ErrNoLibtorch }
func ExtraFile(string, string) ([]byte, error)          { return nil, ErrNoLibtorch }

func (d Device) Check() error       { return ErrNoLibtorch }
func (d Device) Synchronize() error { return ErrNoLibtorch }
func CUDAAvailable() bool           { return false }
func CUDADeviceCount() int          { return 0 }
func DefaultDevice() Device         { return CPU }
func Version() string               { return "none (built without cgo)" }
func ManualSeed(uint64)             {}
func MapLargeAllocations(int) bool  { return false }
func HugePages()                    {}
