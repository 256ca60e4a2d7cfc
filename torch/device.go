package torch

// #include "kvtorch.h"
import "C"

import (
	"fmt"
	"strconv"
	"strings"
)

// DeviceType is CPU or CUDA. The values match enum kvt_device_type in kvtorch.h.
type DeviceType int

const (
	CPUType  DeviceType = 0
	CUDAType DeviceType = 1
)

// Device is where a tensor lives: the CPU, or a CUDA device by index.
type Device struct {
	Type  DeviceType
	Index int // CUDA device index; 0 for the CPU
}

// CPU is the host.
var CPU = Device{Type: CPUType}

// CUDA returns the CUDA device with the given index.
func CUDA(index int) Device { return Device{Type: CUDAType, Index: index} }

func (d Device) String() string {
	if d.Type == CUDAType {
		return "cuda:" + strconv.Itoa(d.Index)
	}
	return "cpu"
}

// IsCUDA reports whether d is a CUDA device.
func (d Device) IsCUDA() bool { return d.Type == CUDAType }

// ParseDevice parses "cpu", "cuda" (= cuda:0) or "cuda:N". It does not check
// that the device exists; see Device.Check.
func ParseDevice(s string) (Device, error) {
	switch {
	case s == "cpu":
		return CPU, nil
	case s == "cuda":
		return CUDA(0), nil
	case strings.HasPrefix(s, "cuda:"):
		n, err := strconv.Atoi(s[len("cuda:"):])
		if err != nil || n < 0 {
			return Device{}, fmt.Errorf("torch: bad CUDA device %q (want cuda:N)", s)
		}
		return CUDA(n), nil
	}
	return Device{}, fmt.Errorf("torch: unknown device %q (want cpu, cuda or cuda:N)", s)
}

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
