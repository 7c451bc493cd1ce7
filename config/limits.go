package config

import (
	"fmt"
	"strconv"
)

// Default limits; see the package documentation, "Limits".
const (
	// DefaultMaxBytes is the default of WithMaxBytes: 4 MiB.
	DefaultMaxBytes = 4 << 20
	// DefaultMaxValues is the default of WithMaxValues.
	DefaultMaxValues = 100_000
)

// maxDepth is how deeply values may nest (it cannot be changed).
const maxDepth = 64

// Option changes a limit of Load, LoadFile and WatchFile.
type Option interface{ apply(*limits) }

type optionFunc func(*limits)

func (f optionFunc) apply(l *limits) { f(l) }

// WithMaxBytes sets the most bytes a document may have (default
// DefaultMaxBytes): the bytes passed to Load, or read from a file by
// LoadFile and WatchFile, and also the bytes of its keys, strings and
// numbers once YAML aliases are expanded. n must be positive.
func WithMaxBytes(n int) Option {
	return optionFunc(func(l *limits) { l.maxBytes = n })
}

// WithMaxValues sets the most values (objects, lists, strings, numbers,
// booleans and nulls) a document may hold once YAML aliases are expanded
// (default DefaultMaxValues). n must be positive.
func WithMaxValues(n int) Option {
	return optionFunc(func(l *limits) { l.maxValues = n })
}

type limits struct {
	maxBytes, maxValues int
}

// newLimits applies opts to the defaults.
func newLimits(opts []Option) (limits, error) {
	l := limits{maxBytes: DefaultMaxBytes, maxValues: DefaultMaxValues}
	for _, o := range opts {
		o.apply(&l)
	}
	if l.maxBytes <= 0 {
		return l, fmt.Errorf("config: WithMaxBytes: must be positive, got %d", l.maxBytes)
	}
	if l.maxValues <= 0 {
		return l, fmt.Errorf("config: WithMaxValues: must be positive, got %d", l.maxValues)
	}
	return l, nil
}

// checkSize rejects a document longer than the limit.
func (l limits) checkSize(n int64) error {
	if n > int64(l.maxBytes) {
		return &FieldError{Msg: "the document is larger than " + strconv.Itoa(l.maxBytes) + " bytes (the limit; see WithMaxBytes)"}
	}
	return nil
}

// budget is what the limits leave while a document's tree is built: every
// value, and the bytes of every key and scalar, counted again for each
// YAML alias that repeats them. The tree is then walked (checkShape) and
// written as JSON once, so the budget bounds all the work after parsing.
type budget struct {
	lim           limits
	values, bytes int  // left
	aliases       bool // YAML: say that aliases are expanded
}

func newBudget(lim limits, f Format) *budget {
	return &budget{lim: lim, values: lim.maxValues, bytes: lim.maxBytes, aliases: f == YAML}
}

// take counts one value of n bytes at l.
func (b *budget) take(l *loc, n int) error {
	b.values--
	b.bytes -= n
	after := ""
	if b.aliases {
		after = " after expanding YAML aliases"
	}
	switch {
	case b.values < 0:
		return &FieldError{Path: l.String(), Msg: fmt.Sprintf("the document holds more than %d values%s (the limit; see WithMaxValues)", b.lim.maxValues, after)}
	case b.bytes < 0:
		return &FieldError{Path: l.String(), Msg: fmt.Sprintf("the document's keys and values hold more than %d bytes%s (the limit; see WithMaxBytes)", b.lim.maxBytes, after)}
	}
	return nil
}
