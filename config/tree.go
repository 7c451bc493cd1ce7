package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// A document is read into a tree of nil, bool, string, json.Number, []any
// and *object values, from JSON or from YAML, so that both get the same
// checks with paths; fill then sets the schema message from the tree.

// object is a JSON object whose members keep their document order.
type object struct {
	keys []string
	vals []any
	set  map[string]bool // the keys, once there are 16
}

// has reports whether key is a member, in constant time for a large object.
func (o *object) has(key string) bool {
	if o.set != nil {
		return o.set[key]
	}
	return slices.Contains(o.keys, key)
}

func (o *object) add(key string, v any) {
	o.keys, o.vals = append(o.keys, key), append(o.vals, v)
	if o.set == nil && len(o.keys) == 16 {
		o.set = make(map[string]bool, 32)
		for _, k := range o.keys {
			o.set[k] = true
		}
	} else if o.set != nil {
		o.set[key] = true
	}
}

// parseJSON reads a JSON document within b. Duplicate keys are errors
// (protojson also rejects them; encoding/json would keep the last one).
func parseJSON(data []byte, b *budget) (any, error) {
	if !utf8.Valid(data) {
		return nil, &FieldError{Msg: "the document is not valid UTF-8"}
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, &FieldError{Msg: "the document is empty"}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := readJSON(dec, nil, 0, b)
	if err != nil {
		return nil, jsonError(data, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		if err == nil {
			err = errors.New("more than one JSON value")
		}
		return nil, jsonError(data, err)
	}
	return v, nil
}

func readJSON(dec *json.Decoder, l *loc, depth int, b *budget) (any, error) {
	if depth > maxDepth {
		return nil, &FieldError{Path: l.String(), Msg: fmt.Sprintf("nested more than %d levels deep", maxDepth)}
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	n := 0
	switch tok := tok.(type) {
	case string:
		n = len(tok)
	case json.Number:
		n = len(tok)
	}
	if err := b.take(l, n); err != nil {
		return nil, err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return tok, nil // nil, bool, string or json.Number
	}
	switch d {
	case '{':
		obj := &object{}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return nil, err
			}
			key, _ := tok.(string) // the decoder only returns string keys
			child := l.field(key)
			if obj.has(key) {
				return nil, &FieldError{Path: child.String(), Msg: "duplicate field"}
			}
			b.bytes -= len(key)
			v, err := readJSON(dec, child, depth+1, b)
			if err != nil {
				return nil, err
			}
			obj.add(key, v)
		}
		_, err := dec.Token() // '}'
		return obj, err
	case '[':
		list := []any{}
		for dec.More() {
			v, err := readJSON(dec, l.index(len(list)), depth+1, b)
			if err != nil {
				return nil, err
			}
			list = append(list, v)
		}
		_, err := dec.Token() // ']'
		return list, err
	}
	return nil, fmt.Errorf("unexpected %q", rune(d))
}

// jsonError turns a decoding error into a *FieldError, with the line and
// column of a syntax error.
func jsonError(data []byte, err error) *FieldError {
	var fe *FieldError
	if errors.As(err, &fe) {
		return fe
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		line, col := position(data, se.Offset)
		return &FieldError{Msg: fmt.Sprintf("invalid JSON at line %d, column %d: %s", line, col, clean(se.Error()))}
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return &FieldError{Msg: "invalid JSON: unexpected end of the document"}
	}
	return &FieldError{Msg: "invalid JSON: " + clean(err.Error())}
}

// position converts a byte offset into a 1-based line and column.
func position(data []byte, off int64) (line, col int) {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	line, col = 1, 1
	for _, c := range data[:off] {
		if c == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
	}
	return line, col
}

// parseYAML reads a YAML document (one only) into the generic tree, within
// b. Mapping keys must be strings; duplicate keys, merge keys (<<),
// non-finite numbers and custom tags are errors; aliases are expanded, each
// expansion counted in b.
func parseYAML(data []byte, b *budget) (v any, err error) {
	if !utf8.Valid(data) {
		return nil, &FieldError{Msg: "the document is not valid UTF-8"}
	}
	defer func() {
		// The YAML parser reports errors by panicking internally and recovering;
		// this is a second net so that no input can panic Load.
		if r := recover(); r != nil {
			v, err = nil, &FieldError{Msg: "invalid YAML: " + clean(fmt.Sprint(r))}
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF {
			return nil, &FieldError{Msg: "the document is empty"}
		}
		return nil, &FieldError{Msg: "invalid YAML: " + clean(err.Error())}
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		return nil, &FieldError{Msg: "the YAML stream holds more than one document"}
	case err != io.EOF:
		return nil, &FieldError{Msg: "invalid YAML: " + clean(err.Error())}
	}
	return convertYAML(&doc, nil, 0, b)
}

func convertYAML(n *yaml.Node, l *loc, depth int, b *budget) (any, error) {
	if depth > maxDepth {
		return nil, &FieldError{Path: l.String(), Msg: fmt.Sprintf("nested more than %d levels deep", maxDepth)}
	}
	if n.Kind == yaml.MappingNode && n.ShortTag() != "!!map" || n.Kind == yaml.SequenceNode && n.ShortTag() != "!!seq" {
		return nil, &FieldError{Path: l.String(), Msg: fmt.Sprintf("line %d: unsupported YAML tag %s", n.Line, show(n.Tag))}
	}
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			return nil, &FieldError{Msg: "the document is empty"}
		}
		return convertYAML(n.Content[0], l, depth, b)
	case yaml.AliasNode:
		if n.Alias == nil {
			return nil, &FieldError{Path: l.String(), Msg: "unresolved YAML alias"}
		}
		return convertYAML(n.Alias, l, depth+1, b)
	}
	if err := b.take(l, len(n.Value)); err != nil {
		return nil, err
	}
	switch n.Kind {
	case yaml.SequenceNode:
		list := make([]any, 0, len(n.Content))
		for _, e := range n.Content {
			v, err := convertYAML(e, l.index(len(list)), depth+1, b)
			if err != nil {
				return nil, err
			}
			list = append(list, v)
		}
		return list, nil
	case yaml.MappingNode:
		obj := &object{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if k.Kind == yaml.AliasNode && k.Alias != nil {
				k = k.Alias
			}
			if k.Kind != yaml.ScalarNode || k.ShortTag() != "!!str" {
				if k.ShortTag() == "!!merge" {
					return nil, &FieldError{Path: l.String(), Msg: fmt.Sprintf("line %d: YAML merge keys (<<) are not supported", k.Line)}
				}
				return nil, &FieldError{Path: l.String(), Msg: fmt.Sprintf("line %d: mapping keys must be strings, got %s", k.Line, describeYAML(k))}
			}
			child := l.field(k.Value)
			if obj.has(k.Value) {
				return nil, &FieldError{Path: child.String(), Msg: fmt.Sprintf("line %d: duplicate field", k.Line)}
			}
			b.bytes -= len(k.Value)
			v, err := convertYAML(n.Content[i+1], child, depth+1, b)
			if err != nil {
				return nil, err
			}
			obj.add(k.Value, v)
		}
		return obj, nil
	case yaml.ScalarNode:
		return scalarYAML(n, l)
	}
	return nil, &FieldError{Path: l.String(), Msg: fmt.Sprintf("line %d: unsupported YAML node", n.Line)}
}

func scalarYAML(n *yaml.Node, l *loc) (any, error) {
	bad := func(format string, args ...any) error {
		return &FieldError{Path: l.String(), Msg: fmt.Sprintf("line %d: ", n.Line) + fmt.Sprintf(format, args...)}
	}
	switch tag := n.ShortTag(); tag {
	case "!!null":
		return nil, nil
	case "!!str", "!!timestamp":
		if num, ok := yamlNumber(n.Value); ok && n.Style == 0 {
			return num, nil // a plain number too large for yaml.v3, such as 1e400
		}
		return n.Value, nil
	case "!!bool":
		var b bool
		if err := n.Decode(&b); err != nil {
			return nil, bad("invalid boolean %s", quote(n.Value))
		}
		return b, nil
	case "!!int", "!!float":
		if num, ok := yamlNumber(n.Value); ok {
			return num, nil
		}
		return nil, bad("must be a finite decimal number such as 10 or 0.5, got %s", show(n.Value))
	default:
		return nil, bad("unsupported YAML tag %s", show(tag))
	}
}

// yamlDecimal is a decimal number of the YAML 1.2 core schema.
var yamlDecimal = regexp.MustCompile(`^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`)

// yamlNumber rewrites a decimal YAML number in JSON syntax, keeping its form
// ("3.0" stays a fraction, as in JSON; "+1" is "1", ".5" is "0.5"), so that
// YAML and JSON documents get the same checks. It refuses what yaml.v3 reads
// as a number outside the YAML 1.2 core schema, or differently from it: a
// leading zero ("010", octal in YAML 1.1), 0b10, 1_000, and also 0x10 and
// 0o10.
func yamlNumber(s string) (json.Number, bool) {
	if !yamlDecimal.MatchString(s) {
		return "", false
	}
	sign := ""
	switch s[0] {
	case '-':
		sign, s = "-", s[1:]
	case '+':
		s = s[1:]
	}
	mant, exp := s, ""
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		mant, exp = s[:i], s[i:]
	}
	if len(mant) > 1 && mant[0] == '0' && mant[1] != '.' {
		return "", false // 010
	}
	if mant[0] == '.' {
		mant = "0" + mant
	}
	if mant[len(mant)-1] == '.' {
		mant += "0"
	}
	return json.Number(sign + mant + exp), true
}

func describeYAML(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a sequence"
	case yaml.ScalarNode:
		return n.ShortTag() + " " + quote(n.Value)
	}
	return "a complex key"
}

// kindOf names a tree value's JSON kind for messages.
func kindOf(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "a list"
	case *object, map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}
