package config

import (
	"errors"
	"strings"
	"testing"
	"unicode"
)

// fuzzSeeds are valid and invalid documents, JSON and YAML.
var fuzzSeeds = []string{
	`{}`,
	`{"methodConfig": [{"name": [{"service": "a.B", "method": "M"}, {"service": "a.B"}, {}], "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", 14]}}], "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}`,
	`{"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "5s", "backoffMultiplier": 1.5, "retryableStatusCodes": [14, 4], "jitter": "full", "perAttemptTimeout": "1s", "minAttemptTime": "0.01s", "maxPushback": "3s"}, "circuitBreaker": {"mode": "metrics-only", "consecutiveFailures": 0, "failureRate": 0.3, "minimumCalls": 1, "throttleK": 3, "halfOpenMaxWait": "0.1s", "window": "20s", "recoveryTime": "1s", "maxRecoveryTime": "8s", "recoveryJitter": 0.1, "halfOpenMaxCalls": 2, "failureStatusCodes": ["INTERNAL"]}}], "retryBudget": {"ratio": 0.3, "minRetriesPerSecond": 2, "window": "1s"}}`,
	`{"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}, "methodConfig": [{"name": [{"service": "x.Y"}], "timeout": "1.5s", "waitForReady": true, "hedgingPolicy": {}}]}`,
	`{"retryBudget": {"disabled": true}}`,
	`{"methodConfig": [{"name": [{"service": "a.B"}], "retryPolicy": {"maxAttempts": 1}}]}`,
	`{"methodConfig": [{"name": [{"method": "M"}]}]}`,
	`{"methodConfig": [{"name": [{"service": "a.B"}]}, {"name": [{"service": "a.B"}]}]}`,
	`{"retryThrottling": {"maxTokens": 0, "tokenRatio": -1}}`,
	`{"methodConfig": [{"name": [{"service": "a.B"}], "circuitBreaker": {"recoveryTime": "100s", "maxRecoveryTime": "1s"}}]}`,
	`{"methodConfig": [{"name": [{"service": "a.B"}], "retryPolicy": {"maxAttempts": 2, "initialBackoff": "315576000000s", "maxBackoff": "-315576000000.999999999s", "backoffMultiplier": 1e308, "retryableStatusCodes": [16, "DATA_LOSS"]}}]}`,
	`{"a": [1, 2, {"b": null}], "methodConfig": "x"}`,
	`{"connectionScaling": {"x": [1e400]}, "methodConfig": [{"hedgingPolicy": {"MaxAttempts": 2}}]}`,
	`{"methodConfig" [}`,
	`[]`,
	"methodConfig:\n  - name: [{service: a.B}]\n    retryPolicy: {maxAttempts: 3, initialBackoff: 0.1s, maxBackoff: 1s, backoffMultiplier: 2, retryableStatusCodes: [UNAVAILABLE]}\nretryThrottling: {maxTokens: 10, tokenRatio: 0.1}\n",
	"a: &a [1, 2]\nb: *a\n",
	"methodConfig:\n  - name: [{}]\n    circuitBreaker: {mode: disabled}\n---\n{}\n",
	"? [x]\n: y\n",
}

// FuzzLoad: any input, read as JSON and as YAML, gives either an *Error with
// at least one problem, each with a path or a document-level message, or a
// Config that interceptors.New accepts and, for JSON, that grpc-go accepts
// as a service config (unless it holds loadBalancingConfig, which Load
// ignores without checking). Never a panic.
func FuzzLoad(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, format := range []Format{JSON, YAML} {
			c, err := Load(data, format)
			if err != nil {
				var e *Error
				if !errors.As(err, &e) || len(e.Problems) == 0 {
					t.Fatalf("%v: error is not a config.Error with problems: %v", format, err)
				}
				if c != nil {
					t.Fatalf("%v: both a Config and an error", format)
				}
				continue
			}
			if c == nil {
				t.Fatalf("%v: neither a Config nor an error", format)
			}
			if _, err := c.NewSuite(); err != nil {
				t.Fatalf("%v: loaded, but interceptors.New rejects it: %v", format, err)
			}
			if grpcChecked(c) {
				if err := grpcParse(c.grpcConfig); err != nil {
					t.Fatalf("%v: loaded, but grpc-go rejects what DialOptions hands it: %v: %s", format, err, c.grpcConfig)
				}
				if format == JSON {
					if err := grpcParse(string(data)); err != nil {
						t.Fatalf("loaded, but grpc-go rejects it as a service config: %v", err)
					}
				}
			}
		}
	})
}

// Fuzzing limits of FuzzLoadBounded: small, so that its allocation bound is
// tight.
const (
	fuzzMaxValues = 1000
	fuzzMaxBytes  = 64 << 10
)

// loadBound is the most bytes Load may allocate for n input bytes within
// limits of maxValues values and maxBytes bytes: up to 512 per input byte
// (the YAML parser holds about 130 at worst, the JSON decoder less; the
// rest is the tree and the schema message), 1 KiB per value and 32 per byte
// of keys and values counted after YAML aliases are expanded, and 1 MiB.
func loadBound(n, maxValues, maxBytes int) uint64 {
	return 512*uint64(n) + 1024*uint64(maxValues) + 32*uint64(maxBytes) + 1<<20
}

// FuzzLoadBounded: Load, as JSON and as YAML, allocates within loadBound
// (measured with runtime.MemStats.TotalAlloc, with small limits), and its
// error messages hold no control character and stay short, whatever the
// input (aliases included).
func FuzzLoadBounded(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Add([]byte("loadBalancingConfig: [&a [1, 2, {x: y}], *a, *a, *a, [*a, *a]]\n"))
	f.Add([]byte("a: &a " + strings.Repeat("x", 1000) + "\nb: [*a, *a, *a, *a, *a, *a, *a, *a]\n"))
	f.Add([]byte("a0: &a [x, x, x, x]\na1: &b [*a, *a, *a, *a]\na2: &c [*b, *b, *b, *b]\na3: [*c, *c, *c, *c]\n"))
	f.Add([]byte(`{"loadBalancingConfig": [{"` + strings.Repeat("k", 200) + `": {"` + strings.Repeat("k", 200) + `": [1, 2, 3]}}]}`))
	f.Add([]byte("{\"a\\nb\": 1, \"\\u001b[31m\": 2}"))
	bound := func(n int) uint64 { return loadBound(n, fuzzMaxValues, fuzzMaxBytes) }
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, format := range []Format{JSON, YAML} {
			var err error
			alloc := allocated(func() { _, err = Load(data, format, WithMaxValues(fuzzMaxValues), WithMaxBytes(fuzzMaxBytes)) })
			if alloc > bound(len(data)) {
				t.Fatalf("%v: %d input bytes allocated %d bytes, more than %d", format, len(data), alloc, bound(len(data)))
			}
			if err == nil {
				continue
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("%v: error is not a config.Error: %v", format, err)
			}
			for _, p := range e.Problems {
				msg := p.Error()
				if len(msg) > 8<<10 {
					t.Fatalf("%v: a problem of %d bytes: %.200q", format, len(msg), msg)
				}
				if strings.IndexFunc(msg, unicode.IsControl) >= 0 {
					t.Fatalf("%v: a control character in %q", format, msg)
				}
			}
		}
	})
}
