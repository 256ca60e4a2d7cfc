// Package torch is kvtorch's Go binding of libtorch: devices, tensors and
// TorchScript modules, over the plain C ABI in cgo/kvtorch.h (libkvtorch.so).
//
// It knows nothing about KV caches or calibration; it is the small part of
// libtorch that kvtorch needs, with Go errors instead of C++ exceptions.
//
// Memory: a Tensor, Module or forward result holds libtorch memory (possibly on
// a GPU) that the Go garbage collector cannot see. Close each one when done;
// a cleanup registered with runtime.AddCleanup frees forgotten ones eventually,
// as a safety net only. Close is idempotent; any other use after Close returns
// ErrClosed. A single Tensor must not be closed while another goroutine uses
// it; distinct tensors may be used from many goroutines at once.
//
// Go code links only libkvtorch.so, never libtorch's C++ symbols, so a binary
// built on a CPU machine runs on a CUDA machine against a libkvtorch.so rebuilt
// there (LD_LIBRARY_PATH wins over the RUNPATH baked in at link time).
package torch
