package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// normalizer transforms text before pre-tokenization.
type normalizer func(string) string

type component struct {
	Type string `json:"type"`
}

func parseNormalizer(raw json.RawMessage) (normalizer, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var c struct {
		Type        string            `json:"type"`
		Normalizers []json.RawMessage `json:"normalizers"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("normalizer: %w", err)
	}
	switch c.Type {
	case "NFC":
		return unicodeForm(norm.NFC), nil
	case "NFD":
		return unicodeForm(norm.NFD), nil
	case "NFKC":
		return unicodeForm(norm.NFKC), nil
	case "NFKD":
		return unicodeForm(norm.NFKD), nil
	case "Lowercase":
		return lowercase, nil
	case "Sequence":
		var seq []normalizer
		for _, r := range c.Normalizers {
			n, err := parseNormalizer(r)
			if err != nil {
				return nil, err
			}
			if n != nil {
				seq = append(seq, n)
			}
		}
		return func(s string) string {
			for _, n := range seq {
				s = n(s)
			}
			return s
		}, nil
	}
	return nil, fmt.Errorf("normalizer %q is not supported (supported: NFC, NFD, NFKC, NFKD, Lowercase, Sequence)", c.Type)
}

// unicodeForm normalizes as HF tokenizers does. Its Unicode tables are older
// than Go's: code points it does not know (hfGaps) it treats as starters that
// neither decompose, compose nor reorder. So the text is normalized in pieces
// between such code points, which are kept as they are.
func unicodeForm(f norm.Form) normalizer {
	return func(s string) string {
		start := -1 // index of the first gap rune, if any
		for i, r := range s {
			if hfGaps[r] {
				start = i
				break
			}
		}
		if start < 0 {
			return f.String(s)
		}
		var sb strings.Builder
		prev := 0
		for i, r := range s {
			if hfGaps[r] {
				sb.WriteString(f.String(s[prev:i]))
				sb.WriteRune(r)
				prev = i + len(string(r))
			}
		}
		sb.WriteString(f.String(s[prev:]))
		return sb.String()
	}
}

// lowercase is Rust's char::to_lowercase applied to each character, as HF's
// Lowercase normalizer does: Go's unicode.ToLower except where Rust's tables
// differ (hfLower: newer code points, and full mappings like U+0130 -> "i̇").
func lowercase(s string) string {
	var sb strings.Builder
	sb.Grow(len(s))
	for _, r := range s {
		if m, ok := hfLower[r]; ok {
			sb.WriteString(m)
		} else {
			sb.WriteRune(unicode.ToLower(r))
		}
	}
	return sb.String()
}
