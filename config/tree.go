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

func problem(l *loc, format string, args ...any) *FieldError {
	return &FieldError{Path: l.String(), Msg: fmt.Sprintf(format, args...)}
}

// parseJSON reads a JSON document within b.
func parseJSON(data []byte, b *budget) (any, *FieldError) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, &FieldError{Msg: "the document is empty"}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := readJSON(dec, nil, 0, b)
	if err == nil {
		if _, err = dec.Token(); err == nil {
			err = errors.New("more than one JSON value")
		} else if err == io.EOF {
			return v, nil
		}
	}
	var fe *FieldError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &fe):
		return nil, fe
	case errors.As(err, &se):
		before := data[:min(se.Offset, int64(len(data)))]
		line, col := bytes.Count(before, []byte("\n"))+1, len(before)-bytes.LastIndexByte(before, '\n')
		return nil, &FieldError{Msg: fmt.Sprintf("invalid JSON at line %d, column %d: %s", line, col, clean(se.Error()))}
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return nil, &FieldError{Msg: "invalid JSON: unexpected end of the document"}
	}
	return nil, &FieldError{Msg: "invalid JSON: " + clean(err.Error())}
}

func readJSON(dec *json.Decoder, l *loc, depth int, b *budget) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	s, _ := tok.(string)
	num, _ := tok.(json.Number) // one of s and num is empty
	if fe := b.take(l, len(s)+len(num), depth); fe != nil {
		return nil, fe
	}
	switch tok {
	case json.Delim('{'):
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
	case json.Delim('['):
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
	return tok, nil // nil, bool, string or json.Number
}

// parseYAML reads a YAML document (one only) within b, by the YAML rules of
// docs/config.md; each expansion of an alias counts in b.
func parseYAML(data []byte, b *budget) (v any, fe *FieldError) {
	defer func() {
		// yaml.v3 panics and recovers internally; a second net, so that no
		// input can panic Load.
		if r := recover(); r != nil {
			v, fe = nil, &FieldError{Msg: "invalid YAML: " + clean(fmt.Sprint(r))}
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc, next yaml.Node
	err := dec.Decode(&doc)
	if err == nil {
		if err = dec.Decode(&next); err == nil {
			return nil, &FieldError{Msg: "the YAML stream holds more than one document"}
		}
	}
	switch {
	case err == io.EOF && len(doc.Content) == 0:
		return nil, &FieldError{Msg: "the document is empty"}
	case err != io.EOF:
		return nil, &FieldError{Msg: "invalid YAML: " + clean(err.Error())}
	}
	return convertYAML(doc.Content[0], nil, 0, b)
}

func convertYAML(n *yaml.Node, l *loc, depth int, b *budget) (any, *FieldError) {
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			return nil, problem(l, "unresolved YAML alias")
		}
		return convertYAML(n.Alias, l, depth+1, b)
	}
	if n.Kind == yaml.MappingNode && n.ShortTag() != "!!map" || n.Kind == yaml.SequenceNode && n.ShortTag() != "!!seq" {
		return nil, problem(l, "line %d: unsupported YAML tag %s", n.Line, show(n.Tag))
	}
	if fe := b.take(l, len(n.Value), depth); fe != nil {
		return nil, fe
	}
	switch n.Kind {
	case yaml.SequenceNode:
		list := make([]any, 0, len(n.Content))
		for _, e := range n.Content {
			v, fe := convertYAML(e, l.index(len(list)), depth+1, b)
			if fe != nil {
				return nil, fe
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
			if k.ShortTag() == "!!merge" {
				return nil, problem(l, "line %d: YAML merge keys (<<) are not supported", k.Line)
			} else if k.Kind != yaml.ScalarNode || k.ShortTag() != "!!str" {
				what := map[yaml.Kind]string{yaml.MappingNode: "a mapping", yaml.SequenceNode: "a sequence"}[k.Kind]
				return nil, problem(l, "line %d: mapping keys must be strings, got %s", k.Line, cmp.Or(what, k.ShortTag()+" "+quote(k.Value)))
			}
			b.bytes -= len(k.Value)
			v, fe := convertYAML(n.Content[i+1], l.field(k.Value), depth+1, b)
			if fe != nil {
				return nil, fe
			}
			obj.keys, obj.vals = append(obj.keys, k.Value), append(obj.vals, v)
		}
		return obj, nil
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
		var v bool
		if n.Decode(&v) != nil {
			return nil, problem(l, "line %d: invalid boolean %s", n.Line, quote(n.Value))
		}
		return v, nil
	case "!!int", "!!float":
		if num, ok := yamlNumber(n.Value); ok {
			return num, nil
		}
		return nil, problem(l, "line %d: must be a finite decimal number such as 10 or 0.5, got %s", n.Line, show(n.Value))
	default:
		return nil, problem(l, "line %d: unsupported YAML tag %s", n.Line, show(tag))
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
