package pt

import (
	"io"
	"testing"
)

func BenchmarkWrite256MiB(b *testing.B) {
	value := NewDict()
	for i := 0; i < 16; i++ {
		value.Set(string(rune('a'+i)), mustT(FromSlice(make([]float32, 4<<20), 4<<20)))
	}
	b.SetBytes(256 << 20)
	for i := 0; i < b.N; i++ {
		if err := Write(io.Discard, value, "x"); err != nil {
			b.Fatal(err)
		}
	}
}
