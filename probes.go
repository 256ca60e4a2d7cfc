package kvtorch

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"

	"github.com/kvtorch/kvtorch/internal/atomicfile"
)

// A probe file keeps tune's probes (the KL divergence of each setting
// probed, on the probe windows) so that another tune of the same model,
// calibration and held-out text — another budget, other bits, other check
// texts, or the same command after an interruption — reads them instead of
// measuring them again. It is JSON:
//
//	{"format": "kvtorch-probes", "version": 1, "model_sha256": …,
//	 "calibration_sha256": …, "windows_sha256": …, "probes": {setting key: KL}}
//
// windows_sha256 is over the probe windows' token ids; a file whose model,
// calibration or windows differ is refused, never mixed in.
type probeFile struct {
	Format            string             `json:"format"`
	Version           int                `json:"version"`
	ModelSHA256       string             `json:"model_sha256"`
	CalibrationSHA256 string             `json:"calibration_sha256"`
	WindowsSHA256     string             `json:"windows_sha256"`
	Probes            map[string]float64 `json:"probes"`
}

const probeFormat = "kvtorch-probes"

// UseProbeFile reads the probes kept in path (none when it does not exist
// yet) and keeps every new probe there; it returns how many it read. It
// fails when path is not a probe file, or holds probes of another model,
// calibration or text.
func (s *Session) UseProbeFile(path string) (int, error) {
	s.chooseProbeWindows()
	if s.probeRead == nil {
		s.probeRead = map[string]bool{}
	}
	want := probeFile{Format: probeFormat, Version: 1, ModelSHA256: s.Model.SHA256,
		CalibrationSHA256: s.Source.SHA256, WindowsSHA256: windowsSHA256(s.probeWindows)}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		b = nil
	case err != nil:
		return 0, fmt.Errorf("kvtorch: probes %s: %w", path, err)
	}
	var got probeFile
	if b != nil {
		var head struct { // format and version first: a later version may have other fields
			Format  string `json:"format"`
			Version int    `json:"version"`
		}
		if err := json.Unmarshal(b, &head); err != nil || head.Format != probeFormat {
			return 0, fmt.Errorf("kvtorch: probes %s: not a kvtorch probe file (%s)", path, describeJSONError(err, head.Format))
		}
		if head.Version != 1 {
			return 0, fmt.Errorf("kvtorch: probes %s: version %d; this kvtorch reads version 1", path, head.Version)
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&got); err != nil {
			return 0, fmt.Errorf("kvtorch: probes %s: %v", path, err)
		}
		what := ""
		switch {
		case got.ModelSHA256 != want.ModelSHA256:
			what = fmt.Sprintf("another model (sha256 %.12s…, this one %.12s…)", got.ModelSHA256, want.ModelSHA256)
		case got.CalibrationSHA256 != want.CalibrationSHA256:
			what = fmt.Sprintf("another calibration (sha256 %.12s…, this one %.12s…)", got.CalibrationSHA256, want.CalibrationSHA256)
		case got.WindowsSHA256 != want.WindowsSHA256:
			what = "other text (the probe windows differ: other --texts, --seq-len, --max-tokens or seed)"
		}
		if what != "" {
			return 0, fmt.Errorf("kvtorch: %w: probes %s were measured on %s: remove the file or name another", ErrMismatch, path, what)
		}
		for k, kl := range got.Probes {
			if math.IsNaN(kl) || math.IsInf(kl, 0) || kl < 0 {
				return 0, fmt.Errorf("kvtorch: probes %s: KL %v of a setting is not a divergence", path, kl)
			}
			if _, ok := s.probeSeen[k]; !ok {
				s.probeSeen[k] = kl
				s.probeRead[k] = true
			}
		}
	}
	s.probeFile = path
	s.probeHeader = want
	return len(got.Probes), nil
}

func describeJSONError(err error, format string) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("format %q", format)
}

// saveProbes writes every probe the session knows to its probe file.
func (s *Session) saveProbes() error {
	if s.probeFile == "" {
		return nil
	}
	f := s.probeHeader
	f.Probes = s.probeSeen
	return atomicfile.Write(s.probeFile, func(w io.Writer) error {
		enc := json.NewEncoder(w)
		enc.SetIndent("", " ")
		return enc.Encode(f)
	})
}

// windowsSHA256 is the sha256 of windows' token ids (each window's length,
// then its ids, as little-endian int64).
func windowsSHA256(windows [][]int) string {
	h := sha256.New()
	var b [8]byte
	put := func(x int) {
		binary.LittleEndian.PutUint64(b[:], uint64(int64(x)))
		h.Write(b[:])
	}
	for _, w := range windows {
		put(len(w))
		for _, id := range w {
			put(id)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}
