package config

import (
	"context"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"

	"github.com/khive/grpc-resilience/interceptors"
	resiliencev1 "github.com/khive/grpc-resilience/proto/khive/resilience/v1"
)

// Config is a loaded and validated policy document.
type Config struct {
	// Policies maps policy keys ("/pkg.Svc/Method", "/pkg.Svc/*", "*") to
	// the policies of [interceptors.New].
	Policies map[string]interceptors.Policy
	// Budget is the retry budget of the document.
	Budget Budget
	// Ignored lists the paths of the grpc fields of the document that
	// neither the interceptors nor DialOptions apply: connectionScaling.
	Ignored []string

	timeouts   map[string]time.Duration // by policy key
	grpcConfig string                   // the JSON DialOptions hands grpc
}

// LoadJSON is Load(data, JSON).
func LoadJSON(data []byte) (*Config, error) { return Load(data, JSON) }

// LoadYAML is Load(data, YAML).
func LoadYAML(data []byte) (*Config, error) { return Load(data, YAML) }

// Load reads a document in format f. A rejected document returns an
// [*Error].
func Load(data []byte, f Format, opts ...Option) (*Config, error) {
	o, err := newOptions(opts)
	if err != nil {
		return nil, err
	}
	return load(data, f, o)
}

// LoadFile reads a document from a file: JSON for a ".json" name, YAML for
// ".yaml" or ".yml", otherwise JSON if the content starts with "{" and YAML
// if not. The file must be a regular file (or a link to one) of at most
// the WithMaxBytes limit; opts set the limits as for Load.
func LoadFile(name string, opts ...Option) (*Config, error) {
	o, err := newOptions(opts)
	if err != nil {
		return nil, err
	}
	data, f, err := readFile(name, o)
	if err != nil {
		return nil, err
	}
	return load(data, f, o)
}

// FromProto validates and converts a document already in its schema form
// (built in Go, or decoded by the caller); the size limits do not apply.
func FromProto(doc *resiliencev1.ServiceConfig, opts ...Option) (*Config, error) {
	o, err := newOptions(opts)
	if err != nil {
		return nil, err
	}
	return build(doc, o, &problems{})
}

// build validates doc, adding to the problems p holds, and converts it.
func build(doc *resiliencev1.ServiceConfig, o options, p *problems) (*Config, error) {
	c := &Config{Policies: map[string]interceptors.Policy{}, timeouts: map[string]time.Duration{}}
	validate(doc, o.maxAttempts, c, p)
	for _, path := range c.Ignored {
		if o.strict {
			p.add(path, "not supported by this library (strict loading)")
		} else if o.logger != nil && len(p.list) == 0 {
			o.logger.Log(context.Background(), logging.LevelWarn, "config: a field of the document has no effect", "config.field", path)
		}
	}
	if err := p.err(); err != nil {
		return nil, err
	}
	c.grpcConfig = grpcConfig(doc)
	return c, nil
}

// Option returns the interceptors option that installs the budget: WithBudget
// (the zero BudgetConfig for DefaultBudget), WithTokenBucket or
// WithoutBudget.
func (b Budget) Option() interceptors.Option {
	switch b.Mode {
	case TokenBucket:
		return interceptors.WithTokenBucket(b.MaxTokens, b.TokenRatio)
	case NoBudget:
		return interceptors.WithoutBudget()
	default:
		return interceptors.WithBudget(b.Ratio)
	}
}

// NewSuite builds an interceptors.Suite from the document: its policies and
// its budget, then opts. An option may override the budget, but Apply
// refuses any document whose budget differs from the suite's, this one
// included.
func (c *Config) NewSuite(opts ...interceptors.Option) (*interceptors.Suite, error) {
	return interceptors.New(c.Policies, append([]interceptors.Option{c.Budget.Option()}, opts...)...)
}
