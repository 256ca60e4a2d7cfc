// Package kvfile holds what kvtorch reads and writes, as pure Go data with
// no libtorch: a model's metadata (the model contract's kvtorch.json), the
// calibration and statistics files (docs/calibration-format.md, torch.save
// format through package pt) with their shared header, the statistics
// themselves and their exact merging, PCA bases and presets
// (docs/preset-format.md). Texts are package texts.
//
// Errors name the file and wrap sentinels callers can test with errors.Is:
// ErrFormat for a file that is not what it should be, ErrMismatch for files
// that do not belong together (a preset and another model, shards of two
// models).
package kvfile

import "errors"

var (
	// ErrFormat marks a file that is not a valid kvtorch file of its kind.
	ErrFormat = errors.New("not a valid kvtorch file")
	// ErrMismatch marks files that do not belong together: a calibration or
	// preset made for another model file, shards of different models.
	ErrMismatch = errors.New("files do not match")
)
