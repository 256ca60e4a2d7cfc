package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode"

	"github.com/dlclark/regexp2"
)

// gpt2Pattern is the regex of HF's ByteLevel pre-tokenizer (use_regex: true).
const gpt2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`

// preTokenizer splits (and for ByteLevel, maps) one piece of text into pieces.
type preTokenizer func(piece string, out []string) []string

type behavior int

const (
	removed behavior = iota
	isolated
	mergedWithPrevious
	mergedWithNext
)

// matcher finds the non-overlapping matches of a pattern, as byte ranges.
type matcher func(s string) [][2]int

// regexMatcher matches pattern with a hand-written matcher when there is one
// (scan.go), else with regexp2.
func regexMatcher(pattern string) (matcher, error) {
	if m := fastMatcher(pattern); m != nil {
		return m, nil
	}
	return regexp2Matcher(pattern)
}

// regexp2Matcher matches pattern with the regexp2 engine.
func regexp2Matcher(pattern string) (matcher, error) {
	re, err := regexp2.Compile(pattern, regexp2.None)
	if err != nil {
		return nil, err
	}
	return func(s string) [][2]int {
		runes := []rune(s)
		// regexp2 reports rune offsets; convert to byte offsets.
		offs := make([]int, len(runes)+1)
		b := 0
		for i, r := range runes {
			offs[i] = b
			b += runeLen(r)
		}
		offs[len(runes)] = b
		var out [][2]int
		m, _ := re.FindRunesMatch(runes)
		for m != nil {
			if m.Length > 0 {
				out = append(out, [2]int{offs[m.Index], offs[m.Index+m.Length]})
			}
			m, _ = re.FindNextMatch(m)
		}
		return out
	}, nil
}

func runeLen(r rune) int {
	switch {
	case r < 0x80:
		return 1
	case r < 0x800:
		return 2
	case r < 0x10000:
		return 3
	}
	return 4
}

func literalMatcher(lit string) matcher {
	return func(s string) [][2]int {
		var out [][2]int
		if lit == "" {
			return nil
		}
		for i := 0; ; {
			j := strings.Index(s[i:], lit)
			if j < 0 {
				return out
			}
			out = append(out, [2]int{i + j, i + j + len(lit)})
			i += j + len(lit)
		}
	}
}

// splitBy splits s at the matches, keeping them as the behavior says; empty
// pieces are dropped, as HF does.
func splitBy(s string, matches [][2]int, b behavior, out []string) []string {
	prev := 0
	pending := "" // MergedWithNext: a match waiting for the next piece
	emit := func(p string) {
		if p != "" {
			out = append(out, p)
		}
	}
	for _, m := range matches {
		gap, match := s[prev:m[0]], s[m[0]:m[1]]
		switch b {
		case removed:
			emit(gap)
		case isolated:
			emit(gap)
			emit(match)
		case mergedWithPrevious:
			emit(gap + match)
		case mergedWithNext:
			emit(pending + gap)
			pending = match
		}
		prev = m[1]
	}
	emit(pending + s[prev:])
	return out
}

func parsePreTokenizer(raw json.RawMessage) ([]preTokenizer, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var c struct {
		Type           string            `json:"type"`
		PreTokenizers  []json.RawMessage `json:"pretokenizers"`
		AddPrefixSpace bool              `json:"add_prefix_space"`
		UseRegex       *bool             `json:"use_regex"`
		Pattern        struct {
			Regex  *string `json:"Regex"`
			String *string `json:"String"`
		} `json:"pattern"`
		Behavior         string `json:"behavior"`
		Invert           bool   `json:"invert"`
		IndividualDigits bool   `json:"individual_digits"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("pre_tokenizer: %w", err)
	}
	switch c.Type {
	case "Sequence":
		var seq []preTokenizer
		for _, r := range c.PreTokenizers {
			p, err := parsePreTokenizer(r)
			if err != nil {
				return nil, err
			}
			seq = append(seq, p...)
		}
		return seq, nil
	case "ByteLevel":
		useRegex := c.UseRegex == nil || *c.UseRegex
		var m matcher
		if useRegex {
			var err error
			if m, err = regexMatcher(gpt2Pattern); err != nil {
				return nil, err
			}
		}
		prefix := c.AddPrefixSpace
		return []preTokenizer{func(piece string, out []string) []string {
			if prefix && !strings.HasPrefix(piece, " ") {
				piece = " " + piece
			}
			start := len(out)
			if m != nil {
				out = splitBy(piece, m(piece), isolated, out)
			} else if piece != "" {
				out = append(out, piece)
			}
			for i := start; i < len(out); i++ {
				out[i] = byteLevel(out[i])
			}
			return out
		}}, nil
	case "Split":
		if c.Invert {
			return nil, fmt.Errorf("pre_tokenizer Split with invert: true is not supported")
		}
		var m matcher
		switch {
		case c.Pattern.Regex != nil:
			var err error
			if m, err = regexMatcher(*c.Pattern.Regex); err != nil {
				return nil, fmt.Errorf("pre_tokenizer Split: regex %q: %w", *c.Pattern.Regex, err)
			}
		case c.Pattern.String != nil:
			m = literalMatcher(*c.Pattern.String)
		default:
			return nil, fmt.Errorf("pre_tokenizer Split without a pattern")
		}
		b, ok := map[string]behavior{"Removed": removed, "Isolated": isolated,
			"MergedWithPrevious": mergedWithPrevious, "MergedWithNext": mergedWithNext}[c.Behavior]
		if !ok {
			return nil, fmt.Errorf("pre_tokenizer Split behavior %q is not supported", c.Behavior)
		}
		return []preTokenizer{func(piece string, out []string) []string {
			return splitBy(piece, m(piece), b, out)
		}}, nil
	case "Digits":
		individual := c.IndividualDigits
		return []preTokenizer{func(piece string, out []string) []string {
			return splitBy(piece, digitRuns(piece, individual), isolated, out)
		}}, nil
	}
	return nil, fmt.Errorf("pre_tokenizer %q is not supported (supported: ByteLevel, Split, Digits, Sequence)", c.Type)
}

// digitRuns finds runs of numeric characters (Rust's char::is_numeric: Nd,
// Nl, No), or single ones when individual.
func digitRuns(s string, individual bool) [][2]int {
	var out [][2]int
	start := -1
	for i, r := range s {
		isDigit := unicode.IsNumber(r)
		switch {
		case isDigit && individual:
			out = append(out, [2]int{i, i + runeLen(r)})
		case isDigit && start < 0:
			start = i
		case !isDigit && start >= 0:
			out = append(out, [2]int{start, i})
			start = -1
		}
	}
	if start >= 0 {
		out = append(out, [2]int{start, len(s)})
	}
	return out
}
