package kvtorch

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/kvtorch/kvtorch/calibration"
	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/internal/atomicfile"
	"github.com/kvtorch/kvtorch/internal/regfile"
	"github.com/kvtorch/kvtorch/kvfile"
	"github.com/kvtorch/kvtorch/torch"
)

// Model is a kvtorch model opened once: its metadata, the device it runs on,
// the sha256 of its file, and the TorchScript module checked against the
// model contract.
type Model struct {
	*calibration.Model
	SHA256 string
}

// OpenOptions say how to open a model.
type OpenOptions struct {
	// Device is cpu, cuda or cuda:N; empty means the device the model was
	// traced for. A traced file runs only on the device type it was traced
	// for, so another type is refused.
	Device string
	// HashCache is the file remembering sha256s by path, size and
	// modification time ("" = KVTORCH_HOME/sha256-cache.json, "-" = none).
	HashCache string
}

// File is a model file as read without loading it: its metadata and the
// sha256 of the file (what presets and calibrations are matched with).
type File struct {
	Path   string
	Meta   *kvfile.Metadata
	SHA256 string

	tokenizer []byte
}

// ReadFile reads a model's metadata and tokenizer and hashes its file (once;
// the hash is remembered by path, size and modification time: hashCache as
// in OpenOptions), running nothing of it.
func ReadFile(path, hashCache string) (*File, error) {
	if err := regfile.Check(path); err != nil {
		return nil, fmt.Errorf("kvtorch: model: %w", err)
	}
	md, tok, err := kvfile.ReadModel(path)
	if err != nil {
		return nil, fmt.Errorf("kvtorch: %w", err)
	}
	sha, err := HashFile(path, hashCache)
	if err != nil {
		return nil, fmt.Errorf("kvtorch: model: %w", err)
	}
	return &File{Path: path, Meta: md, SHA256: sha, tokenizer: tok}, nil
}

// Geometry is the shape of the model's KV cache.
func (f *File) Geometry() compress.Geometry { return f.Meta.Geometry() }

// Load loads the model on device ("" = the device it was traced for).
func (f *File) Load(device string) (*Model, error) {
	dev, err := ChooseDevice(device, f.Meta.Device)
	if err != nil {
		return nil, err
	}
	m, err := calibration.LoadModel(f.Path, f.Meta, f.tokenizer, dev)
	if err != nil {
		return nil, err
	}
	return &Model{Model: m, SHA256: f.SHA256}, nil
}

// Open reads a model's metadata, hashes its file and loads it on its device
// (ReadFile, then File.Load).
func Open(path string, o OpenOptions) (*Model, error) {
	f, err := ReadFile(path, o.HashCache)
	if err != nil {
		return nil, err
	}
	return f.Load(o.Device)
}

// File is the model's file as ReadFile reads it.
func (m *Model) File() *File {
	return &File{Path: m.Path, Meta: &m.Meta, SHA256: m.SHA256}
}

// ChooseDevice resolves a requested device against the one a model was
// traced for (a traced file runs only there): "" means the traced device;
// another device type is an error that says how to export for it.
func ChooseDevice(requested, traced string) (torch.Device, error) {
	if traced == "" {
		traced = "cpu"
	}
	tdev, err := torch.ParseDevice(traced)
	if err != nil {
		return torch.Device{}, fmt.Errorf("kvtorch: model metadata: %v", err)
	}
	dev := tdev
	if requested != "" {
		if dev, err = torch.ParseDevice(requested); err != nil {
			return torch.Device{}, fmt.Errorf("kvtorch: %w: %v", ErrOption, err)
		}
		if dev.Type != tdev.Type {
			return torch.Device{}, fmt.Errorf("kvtorch: the model was traced for %s and runs only there, not on %s (export it again with --device %s)", traced, dev, dev)
		}
	}
	if err := dev.Check(); err != nil {
		return torch.Device{}, fmt.Errorf("kvtorch: %w", err)
	}
	return dev, nil
}

// Home is kvtorch's folder for what it keeps between runs: KVTORCH_HOME, or
// ~/.cache/kvtorch.
func Home() string {
	if h := os.Getenv("KVTORCH_HOME"); h != "" {
		return h
	}
	if c, err := os.UserCacheDir(); err == nil {
		return filepath.Join(c, "kvtorch")
	}
	return filepath.Join(os.TempDir(), "kvtorch")
}

var hashMu sync.Mutex

type hashEntry struct {
	Size   int64  `json:"size"`
	MTime  int64  `json:"mtime_ns"`
	SHA256 string `json:"sha256"`
}

// HashFile returns the sha256 of a regular file, remembered in cache (a JSON
// file; "" = Home()/sha256-cache.json, "-" = no cache) by absolute path,
// size and modification time: a 15 GB model is hashed once, not by every
// command.
func HashFile(path, cache string) (string, error) {
	f, err := regfile.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	if cache == "" {
		cache = filepath.Join(Home(), "sha256-cache.json")
	}
	abs, _ := filepath.Abs(path)
	entry := hashEntry{Size: st.Size(), MTime: st.ModTime().UnixNano()}
	if cache != "-" {
		hashMu.Lock()
		known := readHashCache(cache)
		hashMu.Unlock()
		if e, ok := known[abs]; ok && e.Size == entry.Size && e.MTime == entry.MTime && len(e.SHA256) == 64 {
			return e.SHA256, nil
		}
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	entry.SHA256 = hex.EncodeToString(h.Sum(nil))
	if cache != "-" {
		hashMu.Lock()
		defer hashMu.Unlock()
		known := readHashCache(cache)
		known[abs] = entry
		if os.MkdirAll(filepath.Dir(cache), 0o755) == nil { // best effort: a cache that cannot be written only costs time
			atomicfile.Write(cache, func(w io.Writer) error { return json.NewEncoder(w).Encode(known) })
		}
	}
	return entry.SHA256, nil
}

func readHashCache(path string) map[string]hashEntry {
	known := map[string]hashEntry{}
	if f, err := regfile.Open(path); err == nil {
		json.NewDecoder(io.LimitReader(f, 64<<20)).Decode(&known)
		f.Close()
	}
	if len(known) > 10000 { // never grows without bound
		known = map[string]hashEntry{}
	}
	return known
}

// defaultBatch is the batch size on m's device: cuda on CUDA, 1 on the CPU,
// where batching gains nothing and multiplies the activations' memory
// (SmolLM2-135M, 2 cores, 8 calibration files: batch 1 took 60.8 s and
// 1.8 GB, batch 8 72.3 s and 4.0 GB).
func defaultBatch(m *Model, cuda int) int {
	if m.Device.IsCUDA() {
		return cuda
	}
	return 1
}
