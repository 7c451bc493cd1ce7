package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// fill sets the fields of m from the tree value v, reporting with its path
// each value that does not fit the schema; the snake_case proto names are
// unknown, since grpc-go would ignore them. A list element that does not
// fit is kept as an empty value, so that the validator's paths stay right.
func fill(m protoreflect.Message, v any, l *loc, p *problems) {
	obj, ok := v.(*object)
	if !ok {
		p.at(l, "%smust be an object, got %s", map[bool]string{true: "the document "}[l == nil], kindOf(v))
		return
	}
	fields := m.Descriptor().Fields()
	seen := map[protoreflect.FieldNumber]string{}
	for i, key := range obj.keys {
		at, val := l.field(key), obj.vals[i]
		fd := fieldByName(fields, key)
		if fd == nil {
			if fe := p.add(at.String(), "unknown field"); fe != nil {
				p.hint[fe] = func() string { return suggest(key, fields) }
			}
			continue
		}
		if other, dup := seen[fd.Number()]; dup && other == key {
			p.at(at, "duplicate field")
			continue
		} else if dup {
			p.at(at, "duplicate field (also written as %s)", quote(other))
			continue
		}
		seen[fd.Number()] = key
		if codeLists[fd.Name()] {
			checkCodes(val, at, p)
		}
		list, isList := val.([]any)
		switch {
		case val == nil && !isValue(fd):
			// null is absent, as in protojson
		case !fd.IsList():
			if x, ok := convert(val, fd, at, m.NewField(fd), p); ok {
				m.Set(fd, x)
			}
		case !isList:
			p.at(at, "must be a list, got %s", kindOf(val))
		default:
			dst := m.Mutable(fd).List()
			for j, e := range list {
				x := dst.NewElement()
				if e == nil && !isValue(fd) {
					p.at(at.index(j), "must not be null")
				} else if y, ok := convert(e, fd, at.index(j), x, p); ok {
					x = y
				}
				dst.Append(x)
			}
		}
	}
}

// convert returns the value of field fd (or of one element) held by v; zero
// is a new value of the field's type.
func convert(v any, fd protoreflect.FieldDescriptor, l *loc, zero protoreflect.Value, p *problems) (protoreflect.Value, bool) {
	bad := func(format string, args ...any) (protoreflect.Value, bool) {
		p.at(l, format, args...)
		return zero, false
	}
	num, isNum := v.(json.Number)
	switch fd.Kind() {
	case protoreflect.MessageKind:
		switch fd.Message().FullName() {
		case "google.protobuf.Duration":
			s, ok := v.(string)
			if !ok {
				return bad(`must be a duration string such as "0.1s", got %s`, kindOf(v))
			} else if !durationSyntax.MatchString(s) {
				return bad(`invalid duration %s: want seconds with an "s" suffix, such as "0.1s" or "2s"`, quote(s))
			}
			d, err := time.ParseDuration(s) // exact for durationSyntax
			if err != nil {
				return bad("duration %s is out of range (at most about 292 years)", number(s))
			}
			return protoreflect.ValueOfMessage(durationpb.New(d).ProtoReflect()), true
		case "google.protobuf.Value":
			return protoreflect.ValueOfMessage(structValue(v, l, p).ProtoReflect()), true
		case "google.protobuf.Struct":
			if s := structValue(v, l, p).GetStructValue(); s != nil {
				return protoreflect.ValueOfMessage(s.ProtoReflect()), true
			}
			return bad("must be an object, got %s", kindOf(v))
		case "google.protobuf.ListValue":
			if s := structValue(v, l, p).GetListValue(); s != nil {
				return protoreflect.ValueOfMessage(s.ProtoReflect()), true
			}
			return bad("must be a list, got %s", kindOf(v))
		}
		fill(zero.Message(), v, l, p)
		return zero, true
	case protoreflect.StringKind:
		if s, ok := v.(string); ok {
			return protoreflect.ValueOfString(s), true
		}
		return bad("must be a string, got %s", kindOf(v))
	case protoreflect.BoolKind:
		if b, ok := v.(bool); ok {
			return protoreflect.ValueOfBool(b), true
		}
		return bad("must be true or false, got %s", kindOf(v))
	case protoreflect.DoubleKind:
		if !isNum {
			return bad("must be a number, got %s", kindOf(v))
		}
		f, err := strconv.ParseFloat(string(num), 64)
		if err != nil || math.IsInf(f, 0) {
			return bad("number %s is out of range", number(string(num)))
		}
		return protoreflect.ValueOfFloat64(f), true
	case protoreflect.Int32Kind, protoreflect.Int64Kind:
		i, err := strconv.ParseInt(string(num), 10, 64)
		is32 := fd.Kind() == protoreflect.Int32Kind
		switch {
		case !isNum:
			return bad("must be an integer, got %s", kindOf(v))
		case errors.Is(err, strconv.ErrRange) || is32 && int64(int32(i)) != i:
			return bad("integer %s is out of range", number(string(num)))
		case err != nil:
			return bad("must be an integer, got %s", number(string(num)))
		case is32:
			return protoreflect.ValueOfInt32(int32(i)), true
		}
		return protoreflect.ValueOfInt64(i), true
	}
	return bad("unsupported field kind %v", fd.Kind()) // the schema has no other kind
}

// structValue converts a free-form value. A number beyond a double is
// reported and becomes null.
func structValue(v any, l *loc, p *problems) *structpb.Value {
	switch v := v.(type) {
	case bool:
		return structpb.NewBoolValue(v)
	case string:
		return structpb.NewStringValue(v)
	case json.Number:
		f, err := strconv.ParseFloat(string(v), 64)
		if err != nil || math.IsInf(f, 0) {
			p.at(l, "number %s is out of range", number(string(v)))
			return structpb.NewNullValue()
		}
		return structpb.NewNumberValue(f)
	case []any:
		list := &structpb.ListValue{Values: make([]*structpb.Value, len(v))}
		for i, e := range v {
			list.Values[i] = structValue(e, l.index(i), p)
		}
		return structpb.NewListValue(list)
	case *object:
		s := &structpb.Struct{Fields: make(map[string]*structpb.Value, len(v.keys))}
		for i, k := range v.keys {
			if _, dup := s.Fields[k]; dup {
				p.at(l.field(k), "duplicate field")
			}
			s.Fields[k] = structValue(v.vals[i], l.field(k), p)
		}
		return structpb.NewStructValue(s)
	}
	return structpb.NewNullValue()
}

// fieldByName finds the field key names: its JSON name or an alias, in any
// case.
func fieldByName(fields protoreflect.FieldDescriptors, key string) protoreflect.FieldDescriptor {
	if fd := fields.ByJSONName(key); fd != nil {
		return fd
	}
	if strings.EqualFold(key, "perAttemptRecvTimeout") { // grpc's service_config.proto name
		return fields.ByJSONName("perAttemptTimeout")
	}
	for i := range fields.Len() {
		if fd := fields.Get(i); strings.EqualFold(fd.JSONName(), key) {
			return fd
		}
	}
	return nil
}

// codeLists are the fields holding status codes, names or numbers.
var codeLists = map[protoreflect.Name]bool{"retryable_status_codes": true, "failure_status_codes": true}

// checkCodes rejects, as grpc-go does, a code number not written as an
// unsigned integer ("14", not "14.0"), and makes it null; the validator
// checks the rest.
func checkCodes(v any, l *loc, p *problems) {
	list, _ := v.([]any)
	for j, e := range list {
		if n, ok := e.(json.Number); ok {
			if _, err := strconv.ParseUint(string(n), 10, 32); err != nil {
				p.at(l.index(j), "status code numbers are integers from 1 to 16, got %s", number(string(n)))
				list[j] = nil
			}
		}
	}
}

func isValue(fd protoreflect.FieldDescriptor) bool {
	return fd.Kind() == protoreflect.MessageKind && fd.Message().FullName() == "google.protobuf.Value"
}

// durationSyntax is what both grpc-go and protojson read as a duration: a
// decimal number of seconds with an "s" suffix and at most nine fractional
// digits ("0.1s", "30s", ".5s", "1.s", "-1s").
var durationSyntax = regexp.MustCompile(`^([-+]?(0|[1-9][0-9]*)(\.[0-9]{0,9})?|-?\.[0-9]{1,9})s$`)

// suggest returns ` (did you mean "x"?)` for a near miss of a field name:
// the same name in another case or with underscores, or up to two letters
// off (a Levenshtein distance, for keys of at most 64 bytes).
func suggest(key string, fields protoreflect.FieldDescriptors) string {
	best, bestDist, a := "", 3, strings.ToLower(key)
	if fd := fieldByName(fields, strings.ReplaceAll(key, "_", "")); fd != nil {
		best, bestDist = fd.JSONName(), 0 // skips the loop
	}
	for i := range fields.Len() {
		name := fields.Get(i).JSONName()
		b := strings.ToLower(name)
		if len(a) > 64 || len(a)-len(b) >= bestDist || len(b)-len(a) >= bestDist {
			continue
		}
		prev, cur := make([]int, len(b)+1), make([]int, len(b)+1)
		for j := range prev {
			prev[j] = j
		}
		for i := 1; i <= len(a); i++ {
			cur[0] = i
			for j := 1; j <= len(b); j++ {
				cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+min(1, int(a[i-1]^b[j-1]))) // +1 unless equal
			}
			prev, cur = cur, prev
		}
		if d := prev[len(b)]; d < bestDist {
			best, bestDist = name, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}
