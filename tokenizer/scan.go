package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// Hand-written matchers for the pre-tokenizer regexes that nearly every
// byte-level tokenizer uses. They find exactly the matches the regexes find
// (the test vectors check it against HF) without a backtracking engine,
// several times faster. Other patterns run on regexp2.

// The Split patterns of Llama-3 and Qwen2 tokenizer.json files (Qwen2 takes
// single digits, Llama-3 up to three).
const (
	llama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	qwen2Pattern  = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

// fastMatcher returns a hand-written matcher for pattern, or nil.
func fastMatcher(pattern string) matcher {
	switch pattern {
	case gpt2Pattern:
		return scanner(gpt2Token)
	case llama3Pattern:
		return scanner(func(s string, i int) int { return llamaToken(s, i, 3) })
	case qwen2Pattern:
		return scanner(func(s string, i int) int { return llamaToken(s, i, 1) })
	}
	return nil
}

// scanner turns "the end of the match starting at i" into a matcher. Every
// position starts a match with these patterns (their last alternatives take
// any single character class), so the matches tile the string.
func scanner(next func(s string, i int) int) matcher {
	return func(s string) [][2]int {
		var out [][2]int
		for i := 0; i < len(s); {
			j := next(s, i)
			if j <= i { // cannot happen for these patterns; never loop forever
				_, n := utf8.DecodeRuneInString(s[i:])
				j = i + n
			}
			out = append(out, [2]int{i, j})
			i = j
		}
		return out
	}
}

func isL(r rune) bool     { return unicode.IsLetter(r) }
func isN(r rune) bool     { return unicode.IsNumber(r) }
func isS(r rune) bool     { return unicode.IsSpace(r) }
func isOther(r rune) bool { return !isS(r) && !isL(r) && !isN(r) }

func at(s string, i int) (rune, int) {
	if i >= len(s) {
		return -1, 0
	}
	return utf8.DecodeRuneInString(s[i:])
}

// run returns the end of the run of runes from i that satisfy f.
func run(s string, i int, f func(rune) bool) int {
	for i < len(s) {
		r, n := at(s, i)
		if !f(r) {
			break
		}
		i += n
	}
	return i
}

// contraction returns the end of 's 't 're 've 'm 'll 'd at i (fold: any
// case), or i.
func contraction(s string, i int, fold bool) int {
	if i >= len(s) || s[i] != '\'' {
		return i
	}
	lower := func(b byte) byte {
		if fold && b >= 'A' && b <= 'Z' {
			return b + 'a' - 'A'
		}
		return b
	}
	if i+1 < len(s) {
		switch lower(s[i+1]) {
		case 's', 't', 'm', 'd':
			return i + 2
		}
	}
	if i+2 < len(s) {
		two := string([]byte{lower(s[i+1]), lower(s[i+2])})
		if two == "re" || two == "ve" || two == "ll" {
			return i + 3
		}
	}
	return i
}

// spaceRun matches \s+(?!\S)|\s+ at i (s[i] is whitespace).
func spaceRun(s string, i int) int {
	j := run(s, i, isS)
	if j == len(s) {
		return j
	}
	// Followed by a non-space: give back the last whitespace character,
	// unless it is the only one.
	_, last := utf8.DecodeLastRuneInString(s[i:j])
	if j-last > i {
		return j - last
	}
	return j
}

// gpt2Token: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
func gpt2Token(s string, i int) int {
	if j := contraction(s, i, false); j > i {
		return j
	}
	r, n := at(s, i)
	k := i // after the optional space
	if r == ' ' {
		k = i + n
	}
	if r2, _ := at(s, k); r2 >= 0 {
		switch {
		case isL(r2):
			return run(s, k, isL)
		case isN(r2):
			return run(s, k, isN)
		case isOther(r2):
			return run(s, k, isOther)
		}
	}
	// r is whitespace (a space followed by whitespace or the end, or other whitespace).
	return spaceRun(s, i)
}

// llamaToken: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,digits}|
// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
func llamaToken(s string, i int, digits int) int {
	if j := contraction(s, i, true); j > i {
		return j
	}
	r, n := at(s, i)
	// [^\r\n\p{L}\p{N}]?\p{L}+
	if r != '\r' && r != '\n' && !isL(r) && !isN(r) {
		if r2, _ := at(s, i+n); r2 >= 0 && isL(r2) {
			return run(s, i+n, isL)
		}
	}
	if isL(r) {
		return run(s, i, isL)
	}
	// \p{N}{1,digits}
	if isN(r) {
		j := i
		for c := 0; c < digits; c++ {
			rr, nn := at(s, j)
			if rr < 0 || !isN(rr) {
				break
			}
			j += nn
		}
		return j
	}
	//  ?[^\s\p{L}\p{N}]+[\r\n]*
	k := i
	if r == ' ' {
		k = i + n
	}
	if r2, _ := at(s, k); r2 >= 0 && isOther(r2) {
		j := run(s, k, isOther)
		return run(s, j, func(c rune) bool { return c == '\r' || c == '\n' })
	}
	// \s*[\r\n]+: up to the last \r or \n of the whitespace run, if any.
	j := run(s, i, isS)
	end := -1
	for p := i; p < j; {
		c, cn := at(s, p)
		p += cn
		if c == '\r' || c == '\n' {
			end = p
		}
	}
	if end > 0 {
		return end
	}
	return spaceRun(s, i)
}
