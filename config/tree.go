package config

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// A document is read into a tree of nil, bool, string, json.Number, []any
// and *object values, from JSON or from YAML, so that both get the same
// checks with paths; fill then sets the schema message from the tree.

// object is a JSON object whose members keep their document order; fill
// and structValue report duplicate keys.
type object struct {
	keys []string
	vals []any
}

// parseJSON reads a JSON document within b.
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
			b.bytes -= len(key)
			v, err := readJSON(dec, l.field(key), depth+1, b)
			if err != nil {
				return nil, err
			}
			obj.keys, obj.vals = append(obj.keys, key), append(obj.vals, v)
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

// parseYAML reads a YAML document (one only) within b. Mapping keys must be
// strings; merge keys (<<), non-finite numbers and custom tags are errors;
// aliases are expanded, each expansion counted in b.
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
			b.bytes -= len(k.Value)
			v, err := convertYAML(n.Content[i+1], l.field(k.Value), depth+1, b)
			if err != nil {
				return nil, err
			}
			obj.keys, obj.vals = append(obj.keys, k.Value), append(obj.vals, v)
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

// yamlDecimal is a decimal number of the YAML 1.2 core schema, without the
// leading zero that YAML 1.1 reads as octal (010).
var yamlDecimal = regexp.MustCompile(`^([-+]?)(0|[1-9][0-9]*)?(\.[0-9]*)?([eE][-+]?[0-9]+)?$`)

// yamlNumber rewrites a decimal YAML number in JSON syntax, keeping its form
// ("3.0" stays a fraction; "+1" is "1", ".5" is "0.5"), so that YAML and JSON
// get the same checks. It refuses what yaml.v3 reads as a number outside
// the YAML 1.2 core schema, or differently: 010, 0b10, 1_000, 0x10, 0o10.
func yamlNumber(s string) (json.Number, bool) {
	m := yamlDecimal.FindStringSubmatch(s)
	if m == nil || m[2] == "" && len(m[3]) < 2 {
		return "", false
	}
	whole, frac := cmp.Or(m[2], "0"), m[3]
	if frac == "." {
		frac = ".0"
	}
	return json.Number(strings.TrimPrefix(m[1], "+") + whole + frac + m[4]), true
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
