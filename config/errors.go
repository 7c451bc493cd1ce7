package config

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxProblems bounds how many problems one Error reports; the rest are
// counted in its message.
const maxProblems = 20

// FieldError is one problem in a document. Path names the field with the
// document's JSON names, as in "methodConfig[2].retryPolicy.maxAttempts"
// (a key other than letters, digits, "_" and "-" is quoted and truncated
// as in messages: loadBalancingConfig[0]."a b"); it is empty for a problem
// with the document as a whole (such as a syntax error).
type FieldError struct {
	Path string
	Msg  string
}

// Error returns "path: msg", or msg alone when Path is empty.
func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// Error is what Load and its variants return for a document they reject. It
// lists every problem found (up to 20), in document order.
type Error struct {
	Problems []*FieldError
	// More counts the problems found beyond those listed.
	More int
}

// Error joins the problems:
//
//	config: methodConfig[2].retryPolicy.maxAttempts: must be at least 2, got 1; retryThrottling.maxTokens: required, in (0, 1000]
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("config: ")
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(p.Error())
	}
	if e.More > 0 {
		b.WriteString("; and " + strconv.Itoa(e.More) + " more")
	}
	return b.String()
}

// Unwrap returns the problems, so errors.As finds a *FieldError.
func (e *Error) Unwrap() []error {
	errs := make([]error, len(e.Problems))
	for i, p := range e.Problems {
		errs[i] = p
	}
	return errs
}

// problems collects FieldErrors while a document is checked.
type problems struct {
	list []*FieldError
	more int
}

func (p *problems) add(path, msg string) {
	if len(p.list) >= maxProblems {
		p.more++
		return
	}
	p.list = append(p.list, &FieldError{Path: path, Msg: msg})
}

func (p *problems) addf(path, format string, args ...any) {
	if p.full() {
		p.more++
		return
	}
	p.add(path, fmt.Sprintf(format, args...))
}

// at adds a problem at l; its path is only built if the problem is listed.
func (p *problems) at(l *loc, format string, args ...any) {
	if p.full() {
		p.more++
		return
	}
	p.add(l.String(), fmt.Sprintf(format, args...))
}

// full reports whether further problems are only counted.
func (p *problems) full() bool { return len(p.list) >= maxProblems }

func (p *problems) empty() bool { return len(p.list) == 0 }

// count is the number of problems found so far, listed or not.
func (p *problems) count() int { return len(p.list) + p.more }

// err returns the collected problems as an *Error, or nil.
func (p *problems) err() error {
	if p.empty() {
		return nil
	}
	return &Error{Problems: p.list, More: p.more}
}

// join builds child paths: join("methodConfig[2]", "retryPolicy").
func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

// index builds element paths: index("methodConfig", 2) = "methodConfig[2]".
func index(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}

// loc is where a value sits in the generic tree: the parent's loc and a key
// or an index. Its path string is built only for a problem (building one
// per value would cost the depth times the key lengths for every value).
// The root is the nil *loc.
type loc struct {
	parent *loc
	key    string // a member's key, when !elem
	idx    int    // an element's index, when elem
	elem   bool
}

func (l *loc) field(key string) *loc { return &loc{parent: l, key: key} }
func (l *loc) index(i int) *loc      { return &loc{parent: l, idx: i, elem: true} }

// String returns the path, as join and index build it, with each key that
// is not a plain name (letters, digits, "_" and "-", at most maxQuoted
// bytes) quoted and truncated by quote: a."b c"[2].
func (l *loc) String() string {
	var chain []*loc
	for ; l != nil; l = l.parent {
		chain = append(chain, l)
	}
	var b strings.Builder
	for i := len(chain) - 1; i >= 0; i-- {
		switch e := chain[i]; {
		case e.elem:
			b.WriteString("[" + strconv.Itoa(e.idx) + "]")
		case i == len(chain)-1:
			b.WriteString(pathKey(e.key))
		default:
			b.WriteString("." + pathKey(e.key))
		}
	}
	return b.String()
}

// pathKey writes a document key as a path element.
func pathKey(key string) string {
	if bare(key, "_-") {
		return key
	}
	return quote(key)
}

// show returns a scalar or a tag of the document for an error message: as
// it is if short and made of letters, digits and "._+-!:", else quoted.
func show(s string) string {
	if bare(s, "._+-!:") {
		return s
	}
	return quote(s)
}

// bare reports whether s is 1 to maxQuoted ASCII letters, digits and bytes
// of extra.
func bare(s, extra string) bool {
	if s == "" || len(s) > maxQuoted {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte(extra, c) >= 0) {
			return false
		}
	}
	return true
}

// maxQuoted is how many bytes of a piece of the document an error message
// shows.
const maxQuoted = 64

// quote returns s for an error message: Go-quoted (so a newline or an
// escape sequence in the document cannot forge a log line) and, beyond
// maxQuoted bytes, truncated with its length: "abc"... (1048576 bytes).
func quote(s string) string {
	short, more := truncate(s, maxQuoted)
	return strconv.Quote(short) + more
}

// number returns a number or a duration of the document (whose syntax was
// checked: digits, signs, ".", "e", "s") for an error message, truncated
// as by quote but not quoted.
func number(s string) string {
	short, more := truncate(s, maxQuoted)
	return short + more
}

// clean bounds a message from another package that may hold pieces of the
// document (a YAML anchor name, a protojson error): control characters
// escaped as quote does, truncated beyond 4*maxQuoted bytes.
func clean(msg string) string {
	short, more := truncate(msg, 4*maxQuoted)
	q := strconv.Quote(short)
	return q[1:len(q)-1] + more
}

// truncate cuts s to at most n bytes, on a rune boundary; more is
// "... (len bytes)" if it did.
func truncate(s string, n int) (short, more string) {
	if len(s) <= n {
		return s, ""
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n], "... (" + strconv.Itoa(len(s)) + " bytes)"
}
