package config

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"

	resiliencev1 "github.com/khive/grpc-resilience/proto/khive/resilience/v1"
	"github.com/khive/grpc-resilience/retry"
)

// Format is a document's syntax.
type Format uint8

// The formats.
const (
	JSON Format = iota + 1
	YAML
)

// String returns "json" or "yaml".
func (f Format) String() string {
	if f == JSON || f == YAML {
		return [...]string{"", "json", "yaml"}[f]
	}
	return "Format(" + strconv.Itoa(int(f)) + ")"
}

// BudgetMode is the kind of retry budget a document asks for.
type BudgetMode uint8

const (
	// DefaultBudget: the document has neither retryThrottling nor retryBudget;
	// the interceptors' default ratio budget applies.
	DefaultBudget BudgetMode = iota
	// RatioBudget: retryBudget, a ratio budget with Budget.Ratio.
	RatioBudget
	// TokenBucket: retryThrottling, the gRFC A6 token bucket with
	// Budget.MaxTokens and Budget.TokenRatio.
	TokenBucket
	// NoBudget: retryBudget.disabled; retries are bounded by maxAttempts only.
	NoBudget
)

// String returns "default", "ratio", "token-bucket" or "none".
func (m BudgetMode) String() string {
	if m <= NoBudget {
		return [...]string{"default", "ratio", "token-bucket", "none"}[m]
	}
	return "BudgetMode(" + strconv.Itoa(int(m)) + ")"
}

// Budget is the retry budget a document asks for (one per client target).
type Budget struct {
	Mode BudgetMode
	// Ratio is the RatioBudget configuration (zero fields mean the defaults).
	Ratio retry.BudgetConfig
	// MaxTokens and TokenRatio are the TokenBucket parameters.
	MaxTokens, TokenRatio float64
}

// load reads data in format f within o.
func load(data []byte, f Format, o options) (*Config, error) {
	if f != JSON && f != YAML {
		return nil, fmt.Errorf("config: unknown format %v", f)
	}
	b := &budget{lim: o, values: o.maxValues, bytes: o.maxBytes}
	if f == YAML {
		b.after = " after expanding YAML aliases"
	}
	var tree any
	var fe *FieldError
	switch err := o.checkSize(int64(len(data))); {
	case err != nil:
		fe = err.(*FieldError)
	case !utf8.Valid(data):
		fe = &FieldError{Msg: "the document is not valid UTF-8"}
	case f == JSON:
		tree, fe = parseJSON(data, b)
	default:
		tree, fe = parseYAML(data, b)
	}
	if fe != nil {
		return nil, &Error{Problems: []*FieldError{fe}}
	}
	doc, p := &resiliencev1.ServiceConfig{}, &problems{}
	fill(doc.ProtoReflect(), tree, nil, p)
	return build(doc, o, p)
}

// formatOf picks the format of a file as [LoadFile] says.
func formatOf(name string, data []byte) Format {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".json":
		return JSON
	case ".yaml", ".yml":
		return YAML
	}
	if t := bytes.TrimLeft(data, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		return JSON
	}
	return YAML
}

// readFile reads a document file and its format as [LoadFile] says,
// checking the file's type before the open (see openFlags) and after.
func readFile(name string, o options) ([]byte, Format, error) {
	fail := func(err error) ([]byte, Format, error) { return nil, 0, fmt.Errorf("config: %w", err) }
	// regular rejects what is not a regular file within the size limit.
	regular := func(fi fs.FileInfo, err error) error {
		switch {
		case err != nil:
			return err
		case !fi.Mode().IsRegular():
			err = fmt.Errorf("not a regular file (%v)", fi.Mode().Type())
		default:
			err = o.checkSize(fi.Size())
		}
		if err != nil {
			return &fs.PathError{Op: "open", Path: name, Err: err}
		}
		return nil
	}
	if err := regular(os.Stat(name)); err != nil {
		return fail(err)
	}
	file, err := os.OpenFile(name, os.O_RDONLY|openFlags, 0)
	if err != nil {
		return fail(err)
	}
	defer file.Close()
	if err := regular(file.Stat()); err != nil {
		return fail(err)
	}
	// The file may grow after Stat: read one byte past the limit to know.
	data, err := io.ReadAll(io.LimitReader(file, int64(o.maxBytes)+1))
	if err == nil {
		err = o.checkSize(int64(len(data)))
	}
	if err != nil {
		return fail(&fs.PathError{Op: "read", Path: name, Err: err})
	}
	return data, formatOf(name, data), nil
}
