package config

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxProblems bounds how many problems an [Error] lists.
const maxProblems = 20

// FieldError is one problem in a document. Path names the field with the
// document's JSON names, as in "methodConfig[2].retryPolicy.maxAttempts";
// a key other than letters, digits, "_" and "-" is quoted. Path is empty
// for a problem with the document as a whole, such as a syntax error. Msg
// quotes pieces of the document as Go quotes strings, cut after 64 bytes.
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

// Error is what Load and its variants return for a document they reject:
// every problem found, at most one per path (compared ignoring case),
// sorted by path (list elements by index), the first 20 listed.
type Error struct {
	Problems []*FieldError
	// More counts the problems found beyond those listed.
	More int
}

// Error joins the problems:
//
//	config: methodConfig[2].retryPolicy.maxAttempts: must be at least 2, got 1; retryThrottling.maxTokens: required, in (0, 1000]
func (e *Error) Error() string {
	msgs := make([]string, len(e.Problems), len(e.Problems)+1)
	for i, p := range e.Problems {
		msgs[i] = p.Error()
	}
	if e.More > 0 {
		msgs = append(msgs, "and "+strconv.Itoa(e.More)+" more")
	}
	return "config: " + strings.Join(msgs, "; ")
}

// Unwrap returns the problems, so errors.As finds a *FieldError.
func (e *Error) Unwrap() []error {
	errs := make([]error, len(e.Problems))
	for i, p := range e.Problems {
		errs[i] = p
	}
	return errs
}

// problems collects the problems of a document as [Error] lists them: a
// later problem at a path already reported adds nothing.
type problems struct {
	list []*FieldError
	seen map[string]bool
	hint map[*FieldError]func() string // appended to Msg if listed
}

func (p *problems) add(path, msg string) *FieldError {
	k := strings.ToLower(path)
	if p.seen[k] {
		return nil
	}
	if p.seen == nil {
		p.seen, p.hint = map[string]bool{}, map[*FieldError]func() string{}
	}
	p.seen[k] = true
	fe := &FieldError{Path: path, Msg: msg}
	p.list = append(p.list, fe)
	return fe
}

func (p *problems) addf(path, format string, args ...any) { p.add(path, fmt.Sprintf(format, args...)) }

func (p *problems) at(l *loc, format string, args ...any) { p.addf(l.String(), format, args...) }

// addIf adds msg at the field of path if bad, building its path only then.
// A run of checks at one path thus reports the first that fails.
func (p *problems) addIf(bad bool, path, field, msg string) {
	if bad {
		p.add(join(path, field), msg)
	}
}

// check is addIf for a message formatted with v, which is boxed only if bad.
func check[T any](p *problems, bad bool, path, field, format string, v T) {
	if bad {
		p.addf(join(path, field), format, v)
	}
}

// oneOf returns names[s], adding a problem at the field of path if s is
// not one of them.
func oneOf[T any](p *problems, path, field, s string, names map[string]T, want string) T {
	v, ok := names[s]
	if !ok {
		p.addf(join(path, field), "must be %s, got %s", want, quote(s))
	}
	return v
}

// err returns the problems as an *Error, or nil.
func (p *problems) err() error {
	if len(p.list) == 0 {
		return nil
	}
	slices.SortStableFunc(p.list, func(a, b *FieldError) int { return comparePaths(a.Path, b.Path) })
	n := min(len(p.list), maxProblems)
	for _, fe := range p.list[:n] {
		if h := p.hint[fe]; h != nil {
			fe.Msg += h()
		}
	}
	return &Error{Problems: p.list[:n:n], More: len(p.list) - n}
}

// comparePaths orders paths by byte, except that runs of digits compare as
// numbers: methodConfig[2] before methodConfig[10].
func comparePaths(a, b string) int {
	digits := func(s string) int { return len(s) - len(strings.TrimLeft(s, "0123456789")) }
	for a != "" && b != "" {
		na, nb := digits(a), digits(b)
		if na == 0 || nb == 0 {
			na, nb = 1, 1 // compare one byte
		}
		if c := cmp.Or(cmp.Compare(na, nb), strings.Compare(a[:na], b[:nb])); c != 0 {
			return c
		}
		a, b = a[na:], b[nb:]
	}
	return cmp.Compare(len(a), len(b))
}

// join builds child paths: join("methodConfig[2]", "retryPolicy").
func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

// index builds element paths: index("methodConfig", 2) = "methodConfig[2]".
func index(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

// loc is where a value sits in the document, its path built only for a
// problem. The root is the nil *loc.
type loc struct {
	parent *loc
	key    string // a member's key
	idx    int    // an element's index, or -1 for a member
}

func (l *loc) field(key string) *loc { return &loc{parent: l, key: key, idx: -1} }
func (l *loc) index(i int) *loc      { return &loc{parent: l, idx: i} }

// String returns the path, each key that is not a plain name quoted.
func (l *loc) String() string {
	if l == nil {
		return ""
	}
	if l.idx >= 0 {
		return index(l.parent.String(), l.idx)
	}
	key := l.key
	if !bare(key, "_-") {
		key = quote(key)
	}
	return join(l.parent.String(), key)
}

// show returns a scalar or a tag of the document for a message: as it is if
// short and made of letters, digits and "._+-!:", else quoted.
func show(s string) string {
	if bare(s, "._+-!:") {
		return s
	}
	return quote(s)
}

// bare reports whether s is 1 to maxQuoted ASCII letters, digits and bytes
// of extra.
func bare(s, extra string) bool {
	const alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	return s != "" && len(s) <= maxQuoted && strings.Trim(s, alnum+extra) == ""
}

// maxQuoted is how many bytes of a piece of the document a message shows.
const maxQuoted = 64

// quote returns s for a message as [FieldError] says, with its length if
// cut: "abc"... (1048576 bytes).
func quote(s string) string {
	short, more := truncate(s, maxQuoted)
	return strconv.Quote(short) + more
}

// number returns a number or a duration of the document, whose syntax was
// checked, truncated as by quote.
func number(s string) string {
	short, more := truncate(s, maxQuoted)
	return short + more
}

// clean bounds a message of another package that may hold pieces of the
// document: control characters escaped, cut after 4*maxQuoted bytes.
func clean(msg string) string {
	short, more := truncate(msg, 4*maxQuoted)
	q := strconv.Quote(short)
	return q[1:len(q)-1] + more
}

// truncate cuts s to at most n bytes on a rune boundary; more is
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
