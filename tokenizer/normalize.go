package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// normalizer transforms text before pre-tokenization. keep reports whether
// the first character of the result still stands where the input began (HF
// tracks this as the alignment of the normalized string; Metaspace's
// prepend_scheme "first" depends on it): false when a leading character was
// removed, true when it was kept, replaced or had something prepended.
type normalizer func(s string) (out string, keep bool)

type component struct {
	Type string `json:"type"`
}

// pattern is the pattern of a Replace normalizer or decoder, and of Split.
type pattern struct {
	Regex  *string `json:"Regex"`
	String *string `json:"String"`
}

func (p pattern) matcher() (matcher, error) {
	switch {
	case p.Regex != nil:
		m, err := regexMatcher(*p.Regex)
		if err != nil {
			return nil, fmt.Errorf("regex %q: %w", *p.Regex, err)
		}
		return m, nil
	case p.String != nil:
		return literalMatcher(*p.String), nil
	}
	return nil, fmt.Errorf("no pattern")
}

func parseNormalizer(raw json.RawMessage) (normalizer, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var c struct {
		Type        string            `json:"type"`
		Normalizers []json.RawMessage `json:"normalizers"`
		Prepend     string            `json:"prepend"`
		Pattern     pattern           `json:"pattern"`
		Content     string            `json:"content"`
		StripLeft   bool              `json:"strip_left"`
		StripRight  bool              `json:"strip_right"`
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
		return func(s string) (string, bool) { return lowercase(s), true }, nil
	case "Nmt":
		return nmt, nil
	case "Prepend":
		p := c.Prepend
		return func(s string) (string, bool) {
			if s == "" {
				return s, true
			}
			return p + s, true
		}, nil
	case "Replace":
		m, err := c.Pattern.matcher()
		if err != nil {
			return nil, fmt.Errorf("normalizer Replace: %w", err)
		}
		content := c.Content
		return func(s string) (string, bool) {
			out, first := replaceMatches(s, m(s), content)
			return out, !(first && content == "")
		}, nil
	case "Strip":
		left, right := c.StripLeft, c.StripRight
		return func(s string) (string, bool) {
			out := s
			if left {
				out = strings.TrimLeftFunc(out, unicode.IsSpace)
			}
			if right {
				out = strings.TrimRightFunc(out, unicode.IsSpace)
			}
			return out, len(out) == 0 || !left || len(strings.TrimLeftFunc(s, unicode.IsSpace)) == len(s)
		}, nil
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
		return func(s string) (string, bool) {
			keep := true
			for _, n := range seq {
				var k bool
				s, k = n(s)
				keep = keep && k
			}
			return s, keep
		}, nil
	case "Precompiled":
		return nil, fmt.Errorf("normalizer Precompiled (a SentencePiece character map) is not supported")
	}
	return nil, fmt.Errorf("normalizer %q is not supported (supported: NFC, NFD, NFKC, NFKD, Lowercase, Nmt, Prepend, Replace, Strip, Sequence)", c.Type)
}

// replaceMatches replaces each match of s with content; first reports a
// match at the start.
func replaceMatches(s string, matches [][2]int, content string) (out string, first bool) {
	if len(matches) == 0 {
		return s, false
	}
	var sb strings.Builder
	sb.Grow(len(s))
	prev := 0
	for _, m := range matches {
		sb.WriteString(s[prev:m[0]])
		sb.WriteString(content)
		prev = m[1]
	}
	sb.WriteString(s[prev:])
	return sb.String(), matches[0][0] == 0
}

// nmt is HF's Nmt normalizer (SentencePiece's nmt_nfkc without the NFKC):
// ASCII control characters removed, other spaces mapped to ' '.
func nmt(s string) (string, bool) {
	var sb strings.Builder
	sb.Grow(len(s))
	keep := true
	for i, r := range s {
		switch {
		case r >= 0x1 && r <= 0x8, r == 0xB, r >= 0xE && r <= 0x1F, r == 0x7F, r == 0x8F, r == 0x9F:
			if i == 0 {
				keep = false
			}
			continue
		case r == 0x9, r == 0xA, r == 0xC, r == 0xD, r == 0x1680, r >= 0x200B && r <= 0x200F,
			r == 0x2028, r == 0x2029, r == 0x2581, r == 0xFEFF, r == 0xFFFD:
			sb.WriteByte(' ')
		default:
			sb.WriteRune(r)
		}
	}
	out := sb.String()
	return out, keep || out == ""
}

// unicodeForm normalizes as HF tokenizers does. Its Unicode tables are older
// than Go's: code points it does not know (hfGaps) it treats as starters that
// neither decompose, compose nor reorder. So the text is normalized in pieces
// between such code points, which are kept as they are.
func unicodeForm(f norm.Form) normalizer {
	return func(s string) (string, bool) {
		start := -1 // index of the first gap rune, if any
		for i, r := range s {
			if hfGaps[r] {
				start = i
				break
			}
		}
		if start < 0 {
			return f.String(s), true
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
		return sb.String(), true
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
