package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// decoder is HF's Decoder::decode_chain: token strings in, strings out; the
// decoded text is their concatenation.
type decoder func(tokens []string) []string

func parseDecoder(raw json.RawMessage) (decoder, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var c struct {
		Type           string            `json:"type"`
		Decoders       []json.RawMessage `json:"decoders"`
		Pattern        pattern           `json:"pattern"`
		Content        string            `json:"content"`
		Start          int               `json:"start"`
		Stop           int               `json:"stop"`
		Replacement    string            `json:"replacement"`
		PrependScheme  *string           `json:"prepend_scheme"`
		AddPrefixSpace *bool             `json:"add_prefix_space"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("decoder: %w", err)
	}
	switch c.Type {
	case "ByteLevel":
		return decodeByteLevel, nil
	case "ByteFallback":
		return decodeByteFallback, nil
	case "Fuse":
		return func(tokens []string) []string { return []string{strings.Join(tokens, "")} }, nil
	case "Strip":
		content, ok := singleRune(c.Content)
		if !ok {
			return nil, fmt.Errorf("decoder Strip: content %q is not one character", c.Content)
		}
		return func(tokens []string) []string { return stripTokens(tokens, content, c.Start, c.Stop) }, nil
	case "Replace":
		m, err := c.Pattern.matcher()
		if err != nil {
			return nil, fmt.Errorf("decoder Replace: %w", err)
		}
		return func(tokens []string) []string {
			out := make([]string, len(tokens))
			for i, t := range tokens {
				out[i], _ = replaceMatches(t, m(t), c.Content)
			}
			return out
		}, nil
	case "Metaspace":
		rep, ok := singleRune(c.Replacement)
		if !ok {
			return nil, fmt.Errorf("decoder Metaspace: replacement %q is not one character", c.Replacement)
		}
		ps, err := parsePrependScheme(c.PrependScheme, c.AddPrefixSpace)
		if err != nil {
			return nil, fmt.Errorf("decoder %w", err)
		}
		return func(tokens []string) []string {
			out := make([]string, len(tokens))
			for i, t := range tokens {
				var sb strings.Builder
				for _, r := range t {
					switch {
					case r != rep:
						sb.WriteRune(r)
					case i == 0 && ps != prependNever:
					default:
						sb.WriteByte(' ')
					}
				}
				out[i] = sb.String()
			}
			return out
		}, nil
	case "Sequence":
		var seq []decoder
		for _, r := range c.Decoders {
			d, err := parseDecoder(r)
			if err != nil {
				return nil, err
			}
			if d != nil {
				seq = append(seq, d)
			}
		}
		return func(tokens []string) []string {
			for _, d := range seq {
				tokens = d(tokens)
			}
			return tokens
		}, nil
	}
	return nil, fmt.Errorf("decoder %q is not supported (supported: ByteLevel, ByteFallback, Fuse, Strip, Replace, Metaspace, Sequence)", c.Type)
}

func singleRune(s string) (rune, bool) {
	r, n := utf8.DecodeRuneInString(s)
	return r, n > 0 && n == len(s) && r != utf8.RuneError
}

// decodeByteLevel maps every token's byte-level characters back to bytes (a
// token with other characters is kept as its UTF-8) and decodes the bytes of
// all tokens as one string, invalid UTF-8 replaced as Rust's from_utf8_lossy
// does.
func decodeByteLevel(tokens []string) []string {
	var all []byte
	for _, t := range tokens {
		start := len(all)
		whole := true
		for _, r := range t {
			b, ok := runeToByte[r]
			if !ok {
				whole = false
				break
			}
			all = append(all, b)
		}
		if !whole {
			all = append(all[:start], t...)
		}
	}
	return []string{lossyUTF8(all)}
}

// decodeByteFallback turns runs of <0xNN> tokens into the text they spell,
// or one U+FFFD per byte when it is not valid UTF-8.
func decodeByteFallback(tokens []string) []string {
	var out []string
	var pending []byte
	flush := func() {
		if len(pending) == 0 {
			return
		}
		if utf8.Valid(pending) {
			out = append(out, string(pending))
		} else {
			for range pending {
				out = append(out, "\uFFFD")
			}
		}
		pending = pending[:0]
	}
	for _, t := range tokens {
		if b, ok := byteToken(t); ok {
			pending = append(pending, b)
			continue
		}
		flush()
		out = append(out, t)
	}
	flush()
	return out
}

// byteToken parses a <0xNN> token.
func byteToken(t string) (byte, bool) {
	if len(t) != 6 || !strings.HasPrefix(t, "<0x") || t[5] != '>' {
		return 0, false
	}
	var b byte
	for _, c := range []byte(t[3:5]) {
		var v byte
		switch {
		case c >= '0' && c <= '9':
			v = c - '0'
		case c >= 'a' && c <= 'f':
			v = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			v = c - 'A' + 10
		default:
			return 0, false
		}
		b = b<<4 | v
	}
	return b, true
}

// stripTokens removes up to start leading and stop trailing content
// characters from each token.
func stripTokens(tokens []string, content rune, start, stop int) []string {
	out := make([]string, len(tokens))
	for i, t := range tokens {
		rs := []rune(t)
		lo, hi := 0, len(rs)
		for lo < start && lo < len(rs) && rs[lo] == content {
			lo++
		}
		for n := 0; n < stop && hi > lo && rs[hi-1] == content; n++ {
			hi--
		}
		out[i] = string(rs[lo:hi])
	}
	return out
}

// lossyUTF8 is Rust's String::from_utf8_lossy: each maximal invalid
// subsequence (a truncated sequence counts once) becomes one U+FFFD.
func lossyUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var sb strings.Builder
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r != utf8.RuneError || n > 1 {
			sb.Write(b[i : i+n])
			i += n
			continue
		}
		sb.WriteString("\uFFFD")
		i += invalidPrefixLen(b[i:])
	}
	return sb.String()
}

// invalidPrefixLen is the length of the maximal prefix of b that could
// begin a valid UTF-8 sequence (at least 1): Unicode's "maximal subpart".
func invalidPrefixLen(b []byte) int {
	c := b[0]
	var need int
	lo, hi := byte(0x80), byte(0xBF) // range of the second byte
	switch {
	case c >= 0xC2 && c <= 0xDF:
		need = 1
	case c == 0xE0:
		need, lo = 2, 0xA0
	case c >= 0xE1 && c <= 0xEC, c == 0xEE, c == 0xEF:
		need = 2
	case c == 0xED:
		need, hi = 2, 0x9F
	case c == 0xF0:
		need, lo = 3, 0x90
	case c >= 0xF1 && c <= 0xF3:
		need = 3
	case c == 0xF4:
		need, hi = 3, 0x8F
	default:
		return 1
	}
	n := 1
	for k := 0; k < need && n < len(b); k++ {
		x := b[n]
		if k == 0 && (x < lo || x > hi) || k > 0 && (x < 0x80 || x > 0xBF) {
			break
		}
		n++
	}
	return n
}
