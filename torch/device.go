package torch

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
