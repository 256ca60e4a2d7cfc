package torch

// #include "kvtorch.h"
import "C"

import "os"

// Check returns an error when the device does not exist here, e.g. CUDA on a
// machine without a GPU.
func (d Device) Check() error {
	return takeErr("device "+d.String(), C.kvt_device_check(C.int(d.Type), C.int(d.Index)))
}

// Synchronize waits until all work queued on a CUDA device has finished; for
// the CPU it does nothing.
func (d Device) Synchronize() error {
	return takeErr("synchronize "+d.String(), C.kvt_device_synchronize(C.int(d.Type), C.int(d.Index)))
}

// CUDAAvailable reports whether libtorch sees at least one CUDA device.
func CUDAAvailable() bool { return C.kvt_cuda_is_available() != 0 }

// CUDADeviceCount is the number of CUDA devices libtorch sees.
func CUDADeviceCount() int { return int(C.kvt_cuda_device_count()) }

// DefaultDevice is cuda:0 when CUDA is available, the CPU otherwise.
func DefaultDevice() Device {
	if CUDAAvailable() {
		return CUDA(0)
	}
	return CPU
}

// Version is the version of libtorch that libkvtorch.so was built against.
func Version() string { return C.GoString(C.kvt_torch_version()) }

// ManualSeed seeds libtorch's random number generators (CPU and CUDA).
func ManualSeed(seed uint64) { C.kvt_manual_seed(C.uint64_t(seed)) }

// MapLargeAllocations makes the C allocator (glibc's malloc, which libtorch's
// CPU tensors use) serve allocations of at least n bytes with mmap and give
// them back to the system when they are freed. By default glibc raises that
// threshold up to 32 MB as large blocks are freed, after which tensors of a
// few MB fragment the heap. The price is a page fault per page of every such
// allocation. Process-wide, so for main to decide; it reports whether the
// allocator took the setting.
func MapLargeAllocations(n int) bool { return C.kvt_map_large_allocations(C.size_t(n)) != 0 }

// HugePages makes libtorch put CPU tensors of 2 MB and more on transparent
// huge pages (madvise), unless the environment's THP_MEM_ALLOC_ENABLE says
// otherwise: with MapLargeAllocations every such tensor is mapped afresh,
// and faulted in 2 MB at a time instead of 4 kB its page faults stop being
// a fifth of the CPU time at 4,096 tokens. libtorch reads the variable
// once, at its first allocation: for main to call before any tensor exists.
func HugePages() {
	if _, ok := os.LookupEnv("THP_MEM_ALLOC_ENABLE"); !ok {
		os.Setenv("THP_MEM_ALLOC_ENABLE", "1")
	}
}
