package config

import (
	"fmt"
	"strconv"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
)

// Default limits.
const (
	// DefaultMaxBytes is the default of WithMaxBytes: 4 MiB.
	DefaultMaxBytes = 4 << 20
	// DefaultMaxValues is the default of WithMaxValues.
	DefaultMaxValues = 100_000
	// DefaultMaxAttempts is the default of WithMaxAttempts, gRFC A6's cap.
	DefaultMaxAttempts = 5
)

// maxDepth is how deeply values may nest.
const maxDepth = 64

// Option changes how Load, LoadFile, WatchFile and FromProto read a
// document.
type Option interface{ apply(*options) }

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// WithMaxBytes sets the most bytes a document may hold, read or counted
// after YAML aliases are expanded (default DefaultMaxBytes). n must be
// positive.
func WithMaxBytes(n int) Option { return optionFunc(func(o *options) { o.maxBytes = n }) }

// WithMaxValues sets the most values (objects, lists, strings, numbers,
// booleans and nulls) a document may hold after YAML aliases are expanded
// (default DefaultMaxValues). n must be positive.
func WithMaxValues(n int) Option { return optionFunc(func(o *options) { o.maxValues = n }) }

// WithMaxAttempts sets the cap on retryPolicy.maxAttempts and
// hedgingPolicy.maxAttempts (default DefaultMaxAttempts), as
// grpc.WithMaxCallAttempts does for grpc-go: a larger maxAttempts is read as
// n. n must be at least 2.
func WithMaxAttempts(n int) Option { return optionFunc(func(o *options) { o.maxAttempts = n }) }

// WithLogger logs a warning to l for each field of [Config.Ignored] when a
// document loads.
func WithLogger(l logging.Logger) Option { return optionFunc(func(o *options) { o.logger = l }) }

// WithStrict makes each field of [Config.Ignored] an error.
func WithStrict() Option { return optionFunc(func(o *options) { o.strict = true }) }

type options struct {
	maxBytes, maxValues, maxAttempts int
	logger                           logging.Logger
	strict                           bool
}

func newOptions(opts []Option) (options, error) {
	o := options{maxBytes: DefaultMaxBytes, maxValues: DefaultMaxValues, maxAttempts: DefaultMaxAttempts}
	for _, opt := range opts {
		opt.apply(&o)
	}
	switch {
	case o.maxBytes <= 0:
		return o, fmt.Errorf("config: WithMaxBytes: must be positive, got %d", o.maxBytes)
	case o.maxValues <= 0:
		return o, fmt.Errorf("config: WithMaxValues: must be positive, got %d", o.maxValues)
	case o.maxAttempts < 2:
		return o, fmt.Errorf("config: WithMaxAttempts: must be at least 2, got %d", o.maxAttempts)
	}
	return o, nil
}

// checkSize rejects a document longer than the limit.
func (o options) checkSize(n int64) error {
	if n > int64(o.maxBytes) {
		return &FieldError{Msg: "the document is larger than " + strconv.Itoa(o.maxBytes) + " bytes (the limit; see WithMaxBytes)"}
	}
	return nil
}

// budget is what the limits leave while a document's tree is built: every
// value, and the bytes of every key and scalar, counted again for each YAML
// alias that repeats them. It bounds the work after parsing too, which
// walks the tree once.
type budget struct {
	lim           options
	values, bytes int    // left
	after         string // for YAML: " after expanding YAML aliases"
}

// take counts one value of n bytes at l, depth levels deep.
func (b *budget) take(l *loc, n, depth int) *FieldError {
	b.values--
	b.bytes -= n
	switch {
	case depth > maxDepth:
		return problem(l, "nested more than %d levels deep", maxDepth)
	case b.values < 0:
		return problem(l, "the document holds more than %d values%s (the limit; see WithMaxValues)", b.lim.maxValues, b.after)
	case b.bytes < 0:
		return problem(l, "the document's keys and values hold more than %d bytes%s (the limit; see WithMaxBytes)", b.lim.maxBytes, b.after)
	}
	return nil
}
