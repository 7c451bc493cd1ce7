package config

import (
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
)

// checkShape walks the generic tree against the schema and reports, with
// paths, what protojson would reject with a line number only: unknown
// fields, values of the wrong kind, integers out of range, numbers beyond
// a double (also inside the free-form grpc objects), malformed durations. It reads names as grpc-go does (fieldByName) and rewrites each
// key to its JSON name for protojson. It is stricter than protojson where
// grpc-go is: numbers must be JSON numbers (not strings) and integers must
// be written as integers.
func checkShape(v any, md protoreflect.MessageDescriptor, l *loc, p *problems) {
	switch md.FullName() {
	case "google.protobuf.Value": // any JSON value; the validator checks what it must hold
		checkNumbers(v, l, p)
		return
	case "google.protobuf.Struct":
		if _, ok := v.(*object); !ok {
			p.at(l, "must be an object, got %s", kindOf(v))
		}
		checkNumbers(v, l, p)
		return
	case "google.protobuf.ListValue":
		if _, ok := v.([]any); !ok {
			p.at(l, "must be a list, got %s", kindOf(v))
		}
		checkNumbers(v, l, p)
		return
	case "google.protobuf.Duration":
		checkDuration(v, l, p)
		return
	}
	obj, ok := v.(*object)
	if !ok {
		if l == nil {
			p.at(l, "the document must be an object, got %s", kindOf(v))
		} else {
			p.at(l, "must be an object, got %s", kindOf(v))
		}
		return
	}
	fields := md.Fields()
	seen := map[protoreflect.FieldNumber]string{}
	for i, key := range obj.keys {
		child := l.field(key)
		fd := fieldByName(fields, key)
		if fd == nil {
			if !p.full() {
				p.at(child, "unknown field%s", suggest(key, fields))
			} else {
				p.more++
			}
			continue
		}
		if other, dup := seen[fd.Number()]; dup {
			p.at(child, "duplicate field (also written as %s)", quote(other))
			continue
		}
		seen[fd.Number()] = key
		obj.keys[i] = fd.JSONName() // the name protojson reads
		val := obj.vals[i]
		if list, ok := val.([]any); ok && statusCodeFields[fd.Name()] {
			checkCodes(list, child, p)
			continue
		}
		if val == nil && !isValue(fd) {
			continue // protojson: null is the same as absent
		}
		if fd.IsList() {
			list, ok := val.([]any)
			if !ok {
				p.at(child, "must be a list, got %s", kindOf(val))
				continue
			}
			for j, e := range list {
				if e == nil && !isValue(fd) {
					p.at(child.index(j), "must not be null")
					continue
				}
				checkField(e, fd, child.index(j), p)
			}
			continue
		}
		checkField(val, fd, child, p)
	}
}

// fieldByName finds the field a document's key names as grpc-go's
// encoding/json does: the lowerCamelCase JSON name, ignoring case
// ("MaxAttempts" is maxAttempts, as in grpc-go's own tests). The snake_case
// proto names, which protojson would also accept, are unknown: grpc-go
// would ignore such a field, so the document would mean something else to
// it.
func fieldByName(fields protoreflect.FieldDescriptors, key string) protoreflect.FieldDescriptor {
	if fd := fields.ByJSONName(key); fd != nil {
		return fd
	}
	for i := range fields.Len() {
		if fd := fields.Get(i); strings.EqualFold(fd.JSONName(), key) {
			return fd
		}
	}
	return nil
}

// statusCodeFields are the lists of status codes, names or numbers.
var statusCodeFields = map[protoreflect.Name]bool{
	"retryable_status_codes": true,
	"failure_status_codes":   true,
}

// checkCodes rejects status code numbers that grpc-go would not parse: a
// code number must be written as an unsigned integer ("14", not "14.0" or
// "1.4e1"). Names, and values that are neither, are checked by the
// validator.
func checkCodes(list []any, l *loc, p *problems) {
	for j, e := range list {
		n, ok := e.(json.Number)
		if !ok {
			checkNumbers(e, l.index(j), p)
			continue
		}
		if _, err := strconv.ParseUint(string(n), 10, 32); err != nil {
			p.at(l.index(j), "status code numbers are integers from 1 to 16, got %s", number(string(n)))
		}
	}
}

// checkNumbers reports the numbers of a free-form value (Value, Struct,
// ListValue) that protojson cannot hold, being beyond a double's range.
func checkNumbers(v any, l *loc, p *problems) {
	switch v := v.(type) {
	case json.Number:
		if f, err := strconv.ParseFloat(string(v), 64); err != nil || math.IsInf(f, 0) {
			p.at(l, "number %s is out of range", number(string(v)))
		}
	case []any:
		for i, e := range v {
			checkNumbers(e, l.index(i), p)
		}
	case *object:
		for i, k := range v.keys {
			checkNumbers(v.vals[i], l.field(k), p)
		}
	}
}

func isValue(fd protoreflect.FieldDescriptor) bool {
	return fd.Kind() == protoreflect.MessageKind && fd.Message().FullName() == "google.protobuf.Value"
}

// checkField checks one (non-list) value of field fd.
func checkField(v any, fd protoreflect.FieldDescriptor, l *loc, p *problems) {
	switch fd.Kind() {
	case protoreflect.MessageKind:
		checkShape(v, fd.Message(), l, p)
	case protoreflect.StringKind:
		if _, ok := v.(string); !ok {
			p.at(l, "must be a string, got %s", kindOf(v))
		}
	case protoreflect.BoolKind:
		if _, ok := v.(bool); !ok {
			p.at(l, "must be true or false, got %s", kindOf(v))
		}
	case protoreflect.DoubleKind, protoreflect.FloatKind:
		if _, ok := v.(json.Number); !ok {
			p.at(l, "must be a number, got %s", kindOf(v))
			return
		}
		checkNumbers(v, l, p)
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		checkInt(v, l, math.MinInt32, math.MaxInt32, p)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		checkInt(v, l, math.MinInt64, math.MaxInt64, p)
	default:
		// The schema uses no other kinds; let protojson judge.
	}
}

func checkInt(v any, l *loc, lo, hi int64, p *problems) {
	n, ok := v.(json.Number)
	if !ok {
		p.at(l, "must be an integer, got %s", kindOf(v))
		return
	}
	i, err := strconv.ParseInt(string(n), 10, 64)
	if err != nil {
		if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
			p.at(l, "integer %s is out of range", number(string(n)))
			return
		}
		p.at(l, "must be an integer, got %s", number(string(n)))
		return
	}
	if i < lo || i > hi {
		p.at(l, "integer %s is out of range", number(string(n)))
	}
}

// durationSyntax is what both grpc-go and protojson read as a duration: a
// decimal number of seconds with an "s" suffix and at most nine fractional
// digits ("0.1s", "1.5s", "30s", ".5s", "1.s", "-1s"). protojson alone also
// takes "+.5s" and ".s", grpc-go alone "01s".
var durationSyntax = regexp.MustCompile(`^([-+]?(0|[1-9][0-9]*)(\.[0-9]{0,9})?|-?\.[0-9]{1,9})s$`)

// checkDuration accepts what both protojson and grpc-go accept.
func checkDuration(v any, l *loc, p *problems) {
	s, ok := v.(string)
	if !ok {
		p.at(l, `must be a duration string such as "0.1s", got %s`, kindOf(v))
		return
	}
	if !durationSyntax.MatchString(s) {
		p.at(l, `invalid duration %s: want seconds with an "s" suffix, such as "0.1s" or "2s"`, quote(s))
		return
	}
	b, _ := json.Marshal(s)
	if err := protojson.Unmarshal(b, &durationpb.Duration{}); err != nil {
		p.at(l, "duration %s is out of range", number(s))
	}
}

// suggest returns " (did you mean "x"?)" for a near miss of a field name:
// the same name in another case or with underscores, or one or two letters
// off.
func suggest(key string, fields protoreflect.FieldDescriptors) string {
	norm := func(s string) string { return strings.ToLower(strings.ReplaceAll(s, "_", "")) }
	best, bestDist := "", 3
	for i := range fields.Len() {
		name := fields.Get(i).JSONName()
		if norm(name) == norm(key) {
			return fmt.Sprintf(" (did you mean %q?)", name)
		}
		if d := editDistance(strings.ToLower(key), strings.ToLower(name), bestDist); d < bestDist {
			best, bestDist = name, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance of a and b, or limit when it is
// at least limit (long keys are not compared).
func editDistance(a, b string, limit int) int {
	if len(a) > 64 || len(b) > 64 {
		return limit
	}
	if d := len(a) - len(b); d >= limit || -d >= limit {
		return limit
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return min(prev[len(b)], limit)
}
