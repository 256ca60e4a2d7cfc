package kvfile

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// presetSchema is the structure of a preset: the same file the Python
// package validates presets with (python/kvtorch/preset.schema.json links to
// it).
//
//go:embed preset.schema.json
var presetSchema []byte

// maxJSONDepth bounds the nesting of JSON kvtorch reads: a preset nests 4
// levels, and a deeper document is not one (and would cost stack).
const maxJSONDepth = 32

// decodeStrict reads exactly one JSON document: objects as map[string]any
// with every key once (a key given twice is refused, as is a key that only
// differs in case from a known one later, by the schema), numbers as
// json.Number, nesting at most maxJSONDepth, and nothing after it.
func decodeStrict(b []byte) (any, error) {
	if !utf8.Valid(b) {
		return nil, errors.New("not UTF-8 text")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	v, err := decodeValue(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("more data after the JSON document")
	}
	return v, nil
}

func decodeValue(dec *json.Decoder, depth int) (any, error) {
	if depth > maxJSONDepth {
		return nil, fmt.Errorf("nested more than %d levels deep", maxJSONDepth)
	}
	t, err := dec.Token()
	if err != nil {
		if err == io.EOF {
			return nil, errors.New("no JSON document")
		}
		return nil, err
	}
	switch t {
	case json.Delim('{'):
		m := map[string]any{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return nil, err
			}
			k := kt.(string)
			if _, dup := m[k]; dup {
				return nil, fmt.Errorf("key %q given twice", k)
			}
			if m[k], err = decodeValue(dec, depth+1); err != nil {
				return nil, err
			}
		}
		_, err := dec.Token() // '}'
		return m, err
	case json.Delim('['):
		l := []any{}
		for dec.More() {
			v, err := decodeValue(dec, depth+1)
			if err != nil {
				return nil, err
			}
			l = append(l, v)
		}
		_, err := dec.Token() // ']'
		return l, err
	}
	return t, nil
}

// schema is the subset of JSON Schema kvtorch's schemas use.
type schema struct {
	Ref                  string             `json:"$ref"`
	Type                 string             `json:"type"`
	Const                any                `json:"const"`
	Enum                 []any              `json:"enum"`
	Properties           map[string]*schema `json:"properties"`
	Required             []string           `json:"required"`
	AdditionalProperties *bool              `json:"additionalProperties"`
	Items                *schema            `json:"items"`
	Minimum              *json.Number       `json:"minimum"`
	Maximum              *json.Number       `json:"maximum"`
	ExclusiveMinimum     *json.Number       `json:"exclusiveMinimum"`
	MinLength            *int               `json:"minLength"`
	Defs                 map[string]*schema `json:"$defs"`
}

func parseSchema(raw []byte) *schema {
	var s schema
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&s); err != nil {
		panic("kvfile: schema: " + err.Error()) // embedded: a programmer error
	}
	return &s
}

var presetRules = parseSchema(presetSchema)

// validate checks v against s (root holds the $defs), naming the first
// field that breaks it.
func validate(root, s *schema, v any, at string) error {
	if s.Ref != "" {
		name, ok := strings.CutPrefix(s.Ref, "#/$defs/")
		if !ok || root.Defs[name] == nil {
			panic("kvfile: schema: bad $ref " + s.Ref)
		}
		s = root.Defs[name]
	}
	where := func() string {
		if at == "" {
			return "the document"
		}
		return at
	}
	if s.Const != nil && !sameJSON(v, s.Const) {
		return fmt.Errorf("%s is %s, want %s", where(), show(v), show(s.Const))
	}
	if s.Enum != nil && !slices.ContainsFunc(s.Enum, func(e any) bool { return sameJSON(v, e) }) {
		var want []string
		for _, e := range s.Enum {
			want = append(want, show(e))
		}
		return fmt.Errorf("%s is %s, want one of %s", where(), show(v), strings.Join(want, ", "))
	}
	switch s.Type {
	case "":
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s is %s, want an object", where(), kindOf(v))
		}
		for _, k := range s.Required {
			if _, ok := m[k]; !ok {
				return fmt.Errorf("%s has no %q", where(), k)
			}
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys) // the first unknown key by name, the same on every run
		for _, k := range keys {
			p, ok := s.Properties[k]
			if !ok {
				if s.AdditionalProperties != nil && !*s.AdditionalProperties {
					return fmt.Errorf("%s has an unknown key %q", where(), k)
				}
				continue
			}
			if err := validate(root, p, m[k], join(at, k)); err != nil {
				return err
			}
		}
	case "array":
		l, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%s is %s, want an array", where(), kindOf(v))
		}
		if s.Items != nil {
			for i, x := range l {
				if err := validate(root, s.Items, x, fmt.Sprintf("%s[%d]", at, i)); err != nil {
					return err
				}
			}
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			return fmt.Errorf("%s is %s, want a string", where(), kindOf(v))
		}
		if s.MinLength != nil && utf8.RuneCountInString(str) < *s.MinLength {
			return fmt.Errorf("%s is empty", where())
		}
	case "integer", "number":
		n, ok := v.(json.Number)
		if !ok || (s.Type == "integer" && !isInteger(n)) {
			return fmt.Errorf("%s is %s, want %s", where(), kindOf(v), map[string]string{"integer": "an integer", "number": "a number"}[s.Type])
		}
		x, err := n.Float64()
		if err != nil {
			return fmt.Errorf("%s is %s, out of range", where(), n)
		}
		if s.Minimum != nil && x < num(*s.Minimum) {
			return fmt.Errorf("%s is %s, want at least %s", where(), n, *s.Minimum)
		}
		if s.ExclusiveMinimum != nil && x <= num(*s.ExclusiveMinimum) {
			return fmt.Errorf("%s is %s, want more than %s", where(), n, *s.ExclusiveMinimum)
		}
		if s.Maximum != nil && x > num(*s.Maximum) {
			return fmt.Errorf("%s is %s, want at most %s", where(), n, *s.Maximum)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("%s is %s, want true or false", where(), kindOf(v))
		}
	default:
		panic("kvfile: schema: unknown type " + s.Type)
	}
	return nil
}

func join(at, k string) string {
	if at == "" {
		return k
	}
	return at + "." + k
}

// isInteger reports whether n is written as an integer (no fraction or
// exponent), as Python's json reads an int.
func isInteger(n json.Number) bool {
	_, err := strconv.ParseInt(string(n), 10, 64)
	return err == nil
}

func num(n json.Number) float64 {
	x, _ := n.Float64()
	return x
}

// sameJSON compares a value with a schema constant: the same JSON type
// (an integer is not a float, as in Python) and the same value.
func sameJSON(v, c any) bool {
	switch c := c.(type) {
	case json.Number:
		n, ok := v.(json.Number)
		if !ok || isInteger(n) != isInteger(c) {
			return false
		}
		return num(n) == num(c)
	case string:
		s, ok := v.(string)
		return ok && s == c
	case bool:
		b, ok := v.(bool)
		return ok && b == c
	}
	return false
}

func kindOf(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case string:
		return "a string"
	case json.Number:
		if isInteger(x) {
			return "an integer"
		}
		return "a number"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

func show(v any) string {
	switch x := v.(type) {
	case string:
		return strconv.Quote(x)
	case json.Number:
		return string(x)
	}
	return kindOf(v)
}
