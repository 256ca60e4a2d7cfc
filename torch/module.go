package torch

// #include <stdlib.h>
// #include "kvtorch.h"
import "C"

import (
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"unsafe"
)

// Module is a TorchScript module loaded onto a device, in eval mode.
type Module struct {
	c        *C.kvt_module
	cleanup  runtime.Cleanup
	path     string
	device   Device
	optimize atomic.Bool
}

// Load loads a TorchScript file (torch.jit.save) onto dev. A traced model
// usually runs only on the device it was traced for.
func Load(path string, dev Device) (*Module, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var out *C.kvt_module
	if err := takeErr("load "+path, C.kvt_module_load(cpath, C.int(dev.Type), C.int(dev.Index), &out)); err != nil {
		return nil, err
	}
	m := &Module{c: out, path: path, device: dev}
	m.optimize.Store(true) // libtorch's default
	m.cleanup = runtime.AddCleanup(m, func(c *C.kvt_module) { C.kvt_module_free(c) }, out)
	return m, nil
}

// SetOptimize turns TorchScript's graph executor optimizations on (libtorch's
// default) or off for this module's Forward calls. Off runs graphs as they
// are; on, the profiling executor re-specialises a graph for every new input
// shape, which costs much when lengths vary from batch to batch. libtorch
// keeps the switch per thread; Forward sets it around each call, so it holds
// whatever OS thread the goroutine runs on, and other modules are unaffected.
func (m *Module) SetOptimize(on bool) { m.optimize.Store(on) }

// Close frees the module. It is idempotent and always returns nil.
func (m *Module) Close() error {
	if m == nil || m.c == nil {
		return nil
	}
	m.cleanup.Stop()
	C.kvt_module_free(m.c)
	m.c = nil
	return nil
}

// Path is the file the module was loaded from.
func (m *Module) Path() string { return m.path }

// Device is the device the module was loaded onto.
func (m *Module) Device() Device { return m.device }

func (m *Module) handle() (*C.kvt_module, error) {
	if m == nil || m.c == nil {
		return nil, ErrClosed
	}
	return m.c, nil
}

// Forward runs the module's forward method on the inputs. The result is a
// Go value tree (see Value); the caller closes its tensors, e.g. with
// CloseValue.
func (m *Module) Forward(inputs ...*Tensor) (Value, error) {
	return m.Run("forward", inputs...)
}

// Run runs the module's method name on the inputs, as Forward runs forward.
func (m *Module) Run(name string, inputs ...*Tensor) (Value, error) {
	c, err := m.handle()
	if err != nil {
		return nil, err
	}
	// Go memory holding C pointers only, which cgo allows passing.
	cin := make([]*C.kvt_tensor, len(inputs)+1)
	for i, t := range inputs {
		h, err := t.handle()
		if err != nil {
			return nil, fmt.Errorf("torch: %s input %d: %w", name, i, err)
		}
		cin[i] = h
	}
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	var out *C.kvt_value
	e := C.kvt_module_run_method(c, cname, &cin[0], C.int(len(inputs)), cbool(m.optimize.Load()), &out)
	runtime.KeepAlive(inputs)
	runtime.KeepAlive(m)
	if err := takeErr(name, e); err != nil {
		return nil, err
	}
	defer C.kvt_value_free(out)
	return convertValue(out)
}

// Methods lists the module's own methods (forward and any other exported
// with it).
func (m *Module) Methods() ([]string, error) {
	c, err := m.handle()
	if err != nil {
		return nil, err
	}
	var names *C.char
	e := C.kvt_module_method_names(c, &names)
	runtime.KeepAlive(m)
	if err := takeErr("method names", e); err != nil {
		return nil, err
	}
	return splitLines(takeString(names)), nil
}

// BufferNames lists the module's buffers, recursively, with dotted names
// ("layers.0.attn.k_up").
func (m *Module) BufferNames() ([]string, error) {
	c, err := m.handle()
	if err != nil {
		return nil, err
	}
	var names *C.char
	e := C.kvt_module_buffer_names(c, &names)
	runtime.KeepAlive(m)
	if err := takeErr("buffer names", e); err != nil {
		return nil, err
	}
	return splitLines(takeString(names)), nil
}

// Buffer returns the named buffer; the tensor shares memory with the module's.
func (m *Module) Buffer(name string) (*Tensor, error) {
	c, err := m.handle()
	if err != nil {
		return nil, err
	}
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	var out *C.kvt_tensor
	e := C.kvt_module_buffer(c, cname, &out)
	runtime.KeepAlive(m)
	if err := takeErr("buffer", e); err != nil {
		return nil, err
	}
	return newTensor(out), nil
}

// SetBuffer overwrites the named buffer's values with src's; the shapes must
// be equal, dtype and device are converted to the buffer's.
func (m *Module) SetBuffer(name string, src *Tensor) error {
	c, err := m.handle()
	if err != nil {
		return err
	}
	s, err := src.handle()
	if err != nil {
		return err
	}
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	e := C.kvt_module_set_buffer(c, cname, s)
	runtime.KeepAlive(m)
	runtime.KeepAlive(src)
	return takeErr("set buffer", e)
}

// ExtraFileNames lists the extra files stored in a TorchScript file
// (torch.jit.save's _extra_files), without loading the model.
func ExtraFileNames(path string) ([]string, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var names *C.char
	if err := takeErr("read "+path, C.kvt_extra_file_names(cpath, &names)); err != nil {
		return nil, err
	}
	return splitLines(takeString(names)), nil
}

// ExtraFile returns the contents of one extra file stored in a TorchScript file.
func ExtraFile(path, name string) ([]byte, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	var data *C.char
	var n C.size_t
	if err := takeErr("read "+path, C.kvt_extra_file(cpath, cname, &data, &n)); err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(data))
	return C.GoBytes(unsafe.Pointer(data), C.int(n)), nil
}

// ExtraFile returns the contents of one extra file stored in the module's file.
func (m *Module) ExtraFile(name string) ([]byte, error) { return ExtraFile(m.path, name) }

func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}
