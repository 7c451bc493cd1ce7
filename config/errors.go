package config

import (
	"fmt"
	"strconv"
	"strings"
)

// maxProblems bounds how many problems one Error reports; the rest are
// counted in its message.
const maxProblems = 20

// FieldError is one problem in a document. Path names the field with the
// document's JSON names, as in "methodConfig[2].retryPolicy.maxAttempts"; it
// is empty for a problem with the document as a whole (such as a syntax
// error).
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
	p.add(path, fmt.Sprintf(format, args...))
}

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
