// Package pt reads and writes the file format of PyTorch's torch.save, in pure
// Go (no cgo, no libtorch), so that kvtorch's calibration files open in Python
// with a bare torch.load(path) — including the default weights_only=True and
// mmap=True — and so that tools that never load libtorch can read them.
//
// The format (torch 1.6 and later): a zip archive, entries stored
// uncompressed under one folder, holding data.pkl (a protocol-2 pickle of the
// value tree, in which each tensor refers to a storage by key) and one entry
// data/<key> per storage with its raw little-endian bytes, 64-byte aligned.
// Save writes exactly what torch.save 2.x writes and uses only the globals
// that torch's weights-only unpickler allows: torch._utils._rebuild_tensor_v2,
// torch.<T>Storage and collections.OrderedDict.
//
// Values map to Go as follows, for both Save and Load:
//
//	Python               Go
//	dict, OrderedDict    *Dict (insertion order kept; keys string or int64)
//	list                 []any
//	tuple                Tuple
//	int                  int64 (Save also takes int and int32)
//	float                float64 (Save also takes float32)
//	bool, str, None      bool, string, nil
//	torch.Tensor         *Tensor
//
// Save also takes []string, []int, []int64 and []float64 as lists, and
// map[string]any as a dict with sorted keys.
//
// Load refuses, with an error naming what it found, anything outside this
// format: other globals, unknown opcodes, missing or mis-sized storages,
// truncated or non-zip files, and the legacy (pre-1.6) format. Sizes declared
// in the file are checked against the archive before memory is allocated.
package pt
