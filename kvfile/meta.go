package kvfile

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/pt"
)

// ErrContract marks a model file that breaks the kvtorch model contract
// (docs/model-contract.md).
var ErrContract = errors.New("model breaks the kvtorch model contract")

// HookVersion is the newest compression hook the model contract defines
// (kvtorch.json's format_version): 3 gives every latent its own bits and
// quantization group (latents split by bit width); 2 joins the KV heads
// (one [H·D, H·D] basis), keeps sink tokens exact and scales latents before
// quantization, with one bits and groups per head or over all latents (2
// is still read); 1 had a [H, D, D] basis per head, no sinks and raw
// absmax quantization.
const HookVersion = 3

// Metadata is a model's kvtorch.json (docs/model-contract.md).
type Metadata struct {
	FormatVersion int `json:"format_version"`
	// Methods are the contract's methods besides forward that the file has:
	// "body" (the decoder without the LM head: hidden states, keys, values)
	// and "head" (the LM head on hidden states). Files exported before them
	// have none and run the full forward.
	Methods      []string `json:"methods"`
	Name         string   `json:"name"`
	Architecture string   `json:"architecture"`
	NLayers      int      `json:"n_layers"`
	NHeads       int      `json:"n_heads"`
	NKVHeads     int      `json:"n_kv_heads"`
	HeadDimK     int      `json:"head_dim_k"`
	HeadDimV     int      `json:"head_dim_v"`
	VocabSize    int      `json:"vocab_size"`
	MaxPositions int      `json:"max_positions"`
	DType        string   `json:"dtype"`
	Device       string   `json:"device"`
	KVSource     string   `json:"kv_source"`
	Hook         struct {
		K string `json:"k"`
		V string `json:"v"`
	} `json:"hook"`
	Tokenizer  string `json:"tokenizer"`
	AddBOS     bool   `json:"add_bos"`
	BOSTokenID *int   `json:"bos_token_id"`
	EOSTokenID *int   `json:"eos_token_id"`
}

func contractf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrContract, fmt.Sprintf(format, args...))
}

// ParseMetadata reads and checks a kvtorch.json.
func ParseMetadata(raw []byte) (*Metadata, error) {
	var md Metadata
	if err := json.Unmarshal(raw, &md); err != nil {
		return nil, contractf("kvtorch.json: %v", err)
	}
	if err := md.check(); err != nil {
		return nil, err
	}
	return &md, nil
}

func (md *Metadata) check() error {
	const most = 1 << 20 // far beyond any model, small enough that products cannot overflow
	switch {
	case md.FormatVersion == 1:
		return contractf("kvtorch.json format_version 1: the model was exported by an older kvtorch whose hook has no joint bases and no sinks; export it again with python -m kvtorch.export")
	case md.FormatVersion < 2 || md.FormatVersion > HookVersion:
		return contractf("kvtorch.json format_version %d (this kvtorch reads 2 to %d)", md.FormatVersion, HookVersion)
	case md.NLayers <= 0 || md.NKVHeads <= 0 || md.HeadDimK <= 0 || md.HeadDimV <= 0 || md.VocabSize <= 0:
		return contractf("kvtorch.json needs positive n_layers, n_kv_heads, head_dim_k, head_dim_v and vocab_size")
	case md.NLayers > most || md.NKVHeads > most || md.HeadDimK > most || md.HeadDimV > most || md.VocabSize > 1<<31:
		return contractf("kvtorch.json sizes out of range")
	case md.KVSource != "pre_rope" && md.KVSource != "post_rope" && md.KVSource != "mla_latent":
		return contractf("kvtorch.json kv_source %q (want pre_rope, post_rope or mla_latent)", md.KVSource)
	case !strings.Contains(md.Hook.K, "{layer}") || !strings.Contains(md.Hook.V, "{layer}"):
		return contractf("kvtorch.json hook prefixes must contain {layer}")
	case md.Tokenizer == "":
		return contractf("kvtorch.json names no tokenizer")
	}
	if md.MaxPositions <= 0 {
		md.MaxPositions = 1 << 30
	}
	return nil
}

// Geometry is the shape of the model's KV cache.
func (md *Metadata) Geometry() compress.Geometry {
	return compress.Geometry{Layers: md.NLayers, Heads: md.NKVHeads, Dims: [2]int{md.HeadDimK, md.HeadDimV}}
}

// HookPrefix is the buffer prefix of the hook of (layer, kind).
func (md *Metadata) HookPrefix(layer int, k compress.Kind) string {
	p := md.Hook.K
	if k == compress.V {
		p = md.Hook.V
	}
	return strings.ReplaceAll(p, "{layer}", fmt.Sprint(layer))
}

// ReadModel reads a kvtorch model file's kvtorch.json and the tokenizer it
// names, without loading (or running) the model: pure Go, bounded memory
// whatever else the file holds.
func ReadModel(path string) (*Metadata, []byte, error) {
	s, err := pt.ReadScript(path, "kvtorch.json")
	if err != nil {
		return nil, nil, fmt.Errorf("model %s: %w", path, err)
	}
	raw, ok := s.Data["kvtorch.json"]
	if !ok {
		return nil, nil, fmt.Errorf("model %s: %w: no kvtorch.json extra file (export it with python -m kvtorch.export)", path, ErrContract)
	}
	md, err := ParseMetadata(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("model %s: %w", path, err)
	}
	if s, err = pt.ReadScript(path, md.Tokenizer); err != nil {
		return nil, nil, fmt.Errorf("model %s: %w", path, err)
	}
	tok, ok := s.Data[md.Tokenizer]
	if !ok {
		return nil, nil, fmt.Errorf("model %s: %w: no %s extra file", path, ErrContract, md.Tokenizer)
	}
	return md, tok, nil
}
