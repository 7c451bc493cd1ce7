package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"

	resiliencev1 "github.com/khive/grpc-resilience/proto/khive/resilience/v1"
	"github.com/khive/grpc-resilience/retry"
)

// Format is a document's syntax.
type Format uint8

const (
	// JSON is read with protojson after the checks of this package.
	JSON Format = iota + 1
	// YAML is read with go.yaml.in/yaml/v3, held to the YAML 1.2 core schema
	// (yaml.v3 alone reads some numbers as YAML 1.1 does), and then handled
	// as the equivalent JSON.
	YAML
)

// String returns "json" or "yaml".
func (f Format) String() string {
	switch f {
	case JSON:
		return "json"
	case YAML:
		return "yaml"
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
	switch m {
	case DefaultBudget:
		return "default"
	case RatioBudget:
		return "ratio"
	case TokenBucket:
		return "token-bucket"
	case NoBudget:
		return "none"
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

// decode reads data in format f into the schema message, reporting problems
// with their paths.
func decode(data []byte, f Format) (*resiliencev1.ServiceConfig, error) {
	var tree any
	var err error
	switch f {
	case JSON:
		tree, err = parseJSON(data)
	case YAML:
		tree, err = parseYAML(data)
	default:
		return nil, fmt.Errorf("config: unknown format %v", f)
	}
	if err != nil {
		var fe *FieldError
		if !errors.As(err, &fe) {
			fe = &FieldError{Msg: err.Error()}
		}
		return nil, &Error{Problems: []*FieldError{fe}}
	}
	var p problems
	checkShape(tree, (&resiliencev1.ServiceConfig{}).ProtoReflect().Descriptor(), "", &p)
	if err := p.err(); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	encodeJSON(&buf, tree)
	doc := &resiliencev1.ServiceConfig{}
	if err := protojson.Unmarshal(buf.Bytes(), doc); err != nil {
		// checkShape catches what protojson rejects; this is a second net.
		return nil, &Error{Problems: []*FieldError{{Msg: err.Error()}}}
	}
	return doc, nil
}

// sniff guesses a document's format: JSON if it starts with "{", else YAML.
func sniff(data []byte) Format {
	if t := bytes.TrimLeft(data, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		return JSON
	}
	return YAML
}

// formatOf picks the format from a file name's extension, or sniffs data.
func formatOf(name string, data []byte) Format {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".json":
		return JSON
	case ".yaml", ".yml":
		return YAML
	}
	return sniff(data)
}

// readFile reads a document file and its format.
func readFile(name string) ([]byte, Format, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, 0, fmt.Errorf("config: %w", err)
	}
	return data, formatOf(name, data), nil
}
