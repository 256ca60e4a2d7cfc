package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
)

// gpt2Pattern is the regex of HF's ByteLevel pre-tokenizer (use_regex: true).
const gpt2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`

// piece is text on its way through the pre-tokenizers. first reports that it
// begins where the input text begins (HF: its original offset is 0), which
// Metaspace's prepend_scheme "first" asks.
type piece struct {
	text  string
	first bool
}

// preTokenizer splits (and for ByteLevel and Metaspace, maps) one piece of
// text into pieces, never empty ones.
type preTokenizer func(p piece, out []piece) []piece

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

// splitBy splits p at the matches, keeping them as the behavior says; empty
// pieces are dropped, as HF does. Only a piece that starts where p starts
// can be first.
func splitBy(p piece, matches [][2]int, b behavior, out []piece) []piece {
	s := p.text
	prev := 0
	pending := -1 // MergedWithNext: start of a match waiting for the next piece
	emit := func(start, end int) {
		if end > start {
			out = append(out, piece{s[start:end], p.first && start == 0})
		}
	}
	for _, m := range matches {
		switch b {
		case removed:
			emit(prev, m[0])
		case isolated:
			emit(prev, m[0])
			emit(m[0], m[1])
		case mergedWithPrevious:
			emit(prev, m[1])
		case mergedWithNext:
			if pending >= 0 {
				emit(pending, m[0])
			} else {
				emit(prev, m[0])
			}
			pending = m[0]
		}
		prev = m[1]
	}
	if pending >= 0 {
		emit(pending, len(s))
	} else {
		emit(prev, len(s))
	}
	return out
}

func parsePreTokenizer(raw json.RawMessage) ([]preTokenizer, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var c struct {
		Type             string            `json:"type"`
		PreTokenizers    []json.RawMessage `json:"pretokenizers"`
		AddPrefixSpace   *bool             `json:"add_prefix_space"`
		UseRegex         *bool             `json:"use_regex"`
		Pattern          pattern           `json:"pattern"`
		Behavior         string            `json:"behavior"`
		Invert           bool              `json:"invert"`
		IndividualDigits bool              `json:"individual_digits"`
		Replacement      string            `json:"replacement"`
		PrependScheme    *string           `json:"prepend_scheme"`
		Split            *bool             `json:"split"`
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
		prefix := c.AddPrefixSpace != nil && *c.AddPrefixSpace
		return []preTokenizer{func(p piece, out []piece) []piece {
			if prefix && !strings.HasPrefix(p.text, " ") {
				p.text = " " + p.text
			}
			start := len(out)
			if m != nil {
				out = splitBy(p, m(p.text), isolated, out)
			} else {
				out = append(out, p)
			}
			for i := start; i < len(out); i++ {
				out[i].text = byteLevel(out[i].text)
			}
			return out
		}}, nil
	case "Split":
		if c.Invert {
			return nil, fmt.Errorf("pre_tokenizer Split with invert: true is not supported")
		}
		m, err := c.Pattern.matcher()
		if err != nil {
			return nil, fmt.Errorf("pre_tokenizer Split: %w", err)
		}
		b, ok := map[string]behavior{"Removed": removed, "Isolated": isolated,
			"MergedWithPrevious": mergedWithPrevious, "MergedWithNext": mergedWithNext}[c.Behavior]
		if !ok {
			return nil, fmt.Errorf("pre_tokenizer Split behavior %q is not supported", c.Behavior)
		}
		return []preTokenizer{func(p piece, out []piece) []piece {
			return splitBy(p, m(p.text), b, out)
		}}, nil
	case "Digits":
		individual := c.IndividualDigits
		return []preTokenizer{func(p piece, out []piece) []piece {
			return splitBy(p, digitRuns(p.text, individual), isolated, out)
		}}, nil
	case "Metaspace":
		return metaspace(c.Replacement, c.PrependScheme, c.AddPrefixSpace, c.Split)
	}
	return nil, fmt.Errorf("pre_tokenizer %q is not supported (supported: ByteLevel, Split, Digits, Metaspace, Sequence)", c.Type)
}

// prependScheme is Metaspace's: add the replacement before every piece
// (always), before the piece that begins the text (first), or never.
type prependScheme int

const (
	prependAlways prependScheme = iota
	prependFirst
	prependNever
)

func parsePrependScheme(scheme *string, addPrefixSpace *bool) (prependScheme, error) {
	ps := prependAlways // HF's default
	if scheme != nil {
		var ok bool
		if ps, ok = map[string]prependScheme{"always": prependAlways, "first": prependFirst, "never": prependNever}[*scheme]; !ok {
			return 0, fmt.Errorf("Metaspace prepend_scheme %q (want always, first or never)", *scheme)
		}
	}
	if addPrefixSpace != nil && !*addPrefixSpace { // the older field, as HF reads it
		if ps != prependNever && scheme != nil {
			return 0, fmt.Errorf("Metaspace: add_prefix_space false does not match prepend_scheme %q", *scheme)
		}
		ps = prependNever
	}
	return ps, nil
}

// metaspace is SentencePiece's whitespace handling: spaces become the
// replacement character (▁), which is prepended as the scheme says, and with
// split the text is cut before each replacement character.
func metaspace(replacement string, scheme *string, addPrefixSpace, split *bool) ([]preTokenizer, error) {
	if utf8.RuneCountInString(replacement) != 1 {
		return nil, fmt.Errorf("pre_tokenizer Metaspace: replacement %q is not one character", replacement)
	}
	ps, err := parsePrependScheme(scheme, addPrefixSpace)
	if err != nil {
		return nil, fmt.Errorf("pre_tokenizer %w", err)
	}
	doSplit := split == nil || *split
	m := literalMatcher(replacement)
	return []preTokenizer{func(p piece, out []piece) []piece {
		if p.text == "" {
			return out
		}
		p.text = strings.ReplaceAll(p.text, " ", replacement)
		if (ps == prependAlways || (ps == prependFirst && p.first)) && !strings.HasPrefix(p.text, replacement) {
			p.text = replacement + p.text
		}
		if doSplit {
			return splitBy(p, m(p.text), mergedWithNext, out)
		}
		return append(out, p)
	}}, nil
}

// isNumeric is Rust's char::is_numeric (Nd, Nl, No in Rust's newer tables).
func isNumeric(r rune) bool {
	if v, ok := hfNumeric[r]; ok {
		return v
	}
	return unicode.IsNumber(r)
}

// digitRuns finds runs of numeric characters (Rust's char::is_numeric: Nd,
// Nl, No), or single ones when individual.
func digitRuns(s string, individual bool) [][2]int {
	var out [][2]int
	start := -1
	for i, r := range s {
		isDigit := isNumeric(r)
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
