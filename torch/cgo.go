package torch

// The build: `make build` (CMake) puts libkvtorch.so in build/ at the
// repository root; the RUNPATH below lets binaries find it there without
// LD_LIBRARY_PATH, and libkvtorch.so carries the RUNPATH of libtorch.

// #cgo CFLAGS: -I${SRCDIR}/../cgo
// #cgo LDFLAGS: -L${SRCDIR}/../build -lkvtorch -Wl,-rpath,${SRCDIR}/../build
// #include "kvtorch.h"
import "C"
