//go:build !cgo

package torch

import (
	"errors"
	"testing"
)

func TestWithoutCgoEveryOperationSaysSo(t *testing.T) {
	if _, err := Load("model.pt", CPU); !errors.Is(err, ErrNoLibtorch) {
		t.Fatalf("Load: got %v, want ErrNoLibtorch", err)
	}
	if _, err := FromSlice([]float32{1}, 1); !errors.Is(err, ErrNoLibtorch) {
		t.Fatalf("FromSlice: got %v, want ErrNoLibtorch", err)
	}
	if d, err := ParseDevice("cuda:1"); err != nil || d != CUDA(1) {
		t.Fatalf("ParseDevice works without libtorch: got %v, %v", d, err)
	}
}
