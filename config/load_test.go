package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/retry"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// problemsOf returns "path: msg" of every problem of a Load error.
func problemsOf(t *testing.T, err error) []string {
	t.Helper()
	var e *Error
	require.ErrorAs(t, err, &e)
	out := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		out[i] = p.Error()
	}
	return out
}

// assertProblems checks that load rejects doc with the problems want, in
// order, each given as a part of its "path: message".
func assertProblems(t *testing.T, load func([]byte) (*Config, error), doc string, want []string) {
	t.Helper()
	c, err := load([]byte(doc))
	require.Error(t, err)
	assert.Nil(t, c)
	got := problemsOf(t, err)
	require.Len(t, got, len(want), "problems: %q", got)
	for i, w := range want {
		assert.Contains(t, got[i], w)
	}
	assert.True(t, strings.HasPrefix(err.Error(), "config: "), err.Error())
	var fe *FieldError
	assert.True(t, errors.As(err, &fe))
}

// retryDoc wraps a retryPolicy body in a document with one method.
func retryDoc(body string) string {
	return `{"methodConfig": [{"name": [{"service": "s.S"}], "retryPolicy": {` + body + `}}]}`
}

const validRetry = `"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]`

func breakerDoc(body string) string {
	return `{"methodConfig": [{"name": [{"service": "s.S"}], "circuitBreaker": {` + body + `}}]}`
}

// TestLoadInvalid: every kind of invalid document, with the path of each
// problem (the message's start after the path, or a part of it).
func TestLoadInvalid(t *testing.T) {
	for _, tc := range []struct {
		name string
		doc  string
		want []string // each problem, "path: message prefix"
	}{
		// Syntax.
		{"empty", ``, []string{"the document is empty"}},
		{"spaces", "  \n ", []string{"the document is empty"}},
		{"truncated", `{"methodConfig": [`, []string{"invalid JSON: unexpected end"}},
		{"syntax", `{"methodConfig" [}`, []string{"invalid JSON at line 1, column 17"}},
		{"trailing value", `{} {}`, []string{"invalid JSON: more than one JSON value"}},
		{"not utf-8", "{\"a\xff\": 1}", []string{"the document is not valid UTF-8"}},
		{"duplicate field", `{"methodConfig": [], "methodConfig": []}`, []string{"methodConfig: duplicate field"}},
		{"duplicate field in a grpc object", `{"methodConfig": [{"hedgingPolicy": {"maxAttempts": 2, "maxAttempts": 3}}]}`, []string{"methodConfig[0].hedgingPolicy.maxAttempts: duplicate field"}},
		{"deep", strings.Repeat("[", 100) + strings.Repeat("]", 100), []string{"[0][0][0]"}},

		// Shape (unknown fields, wrong kinds).
		{"top is a list", `[]`, []string{"the document must be an object, got a list"}},
		{"top is a string", `"x"`, []string{"the document must be an object, got a string"}},
		{"unknown top field", `{"methodConfigs": []}`, []string{`methodConfigs: unknown field (did you mean "methodConfig"?)`}},
		{"unknown field far away", `{"oops": 1}`, []string{"oops: unknown field"}},
		{"snake_case proto name", `{"method_config": []}`, []string{`method_config: unknown field (did you mean "methodConfig"?)`}},
		{"snake_case in retryPolicy", retryDoc(strings.Replace(validRetry, `"maxAttempts"`, `"max_attempts"`, 1)), []string{
			"methodConfig[0].retryPolicy.maxAttempts: required", // as grpc-go reads it
			`methodConfig[0].retryPolicy.max_attempts: unknown field (did you mean "maxAttempts"?)`}},
		{"typo in retryPolicy", retryDoc(strings.Replace(validRetry, `"maxAttempts"`, `"maxAttemps"`, 1)), []string{
			`methodConfig[0].retryPolicy.maxAttemps: unknown field (did you mean "maxAttempts"?)`, "methodConfig[0].retryPolicy.maxAttempts: required"}},
		{"methodConfig not a list", `{"methodConfig": {}}`, []string{"methodConfig: must be a list, got an object"}},
		{"name not a list", `{"methodConfig": [{"name": {"service": "a"}}]}`, []string{"methodConfig[0].name: must be a list, got an object"}},
		{"null name entry", `{"methodConfig": [{"name": [null]}]}`, []string{"methodConfig[0].name[0]: must not be null"}},
		{"service not a string", `{"methodConfig": [{"name": [{"service": 5}]}]}`, []string{"methodConfig[0].name[0].service: must be a string, got a number"}},
		{"maxAttempts as string", retryDoc(strings.Replace(validRetry, `"maxAttempts": 3`, `"maxAttempts": "3"`, 1)), []string{"methodConfig[0].retryPolicy.maxAttempts: must be an integer, got a string"}},
		{"maxAttempts fraction", retryDoc(strings.Replace(validRetry, `"maxAttempts": 3`, `"maxAttempts": 2.5`, 1)), []string{"methodConfig[0].retryPolicy.maxAttempts: must be an integer, got 2.5"}},
		{"maxAttempts too big", retryDoc(strings.Replace(validRetry, `"maxAttempts": 3`, `"maxAttempts": 3000000000`, 1)), []string{"methodConfig[0].retryPolicy.maxAttempts: integer 3000000000 is out of range"}},
		{"multiplier as string", retryDoc(strings.Replace(validRetry, `"backoffMultiplier": 2`, `"backoffMultiplier": "2"`, 1)), []string{"methodConfig[0].retryPolicy.backoffMultiplier: must be a number, got a string"}},
		{"multiplier huge", retryDoc(strings.Replace(validRetry, `"backoffMultiplier": 2`, `"backoffMultiplier": 1e999`, 1)), []string{"methodConfig[0].retryPolicy.backoffMultiplier: number 1e999 is out of range"}},
		{"duration as number", retryDoc(strings.Replace(validRetry, `"initialBackoff": "0.1s"`, `"initialBackoff": 0.1`, 1)), []string{`methodConfig[0].retryPolicy.initialBackoff: must be a duration string such as "0.1s", got a number`}},
		{"duration without unit", retryDoc(strings.Replace(validRetry, `"initialBackoff": "0.1s"`, `"initialBackoff": "100ms"`, 1)), []string{`methodConfig[0].retryPolicy.initialBackoff: invalid duration "100ms"`}},
		{"duration exponent", retryDoc(strings.Replace(validRetry, `"maxBackoff": "1s"`, `"maxBackoff": "1e3s"`, 1)), []string{`methodConfig[0].retryPolicy.maxBackoff: invalid duration "1e3s"`}},
		{"duration plus dot", retryDoc(strings.Replace(validRetry, `"maxBackoff": "1s"`, `"maxBackoff": "+.5s"`, 1)), []string{`methodConfig[0].retryPolicy.maxBackoff: invalid duration "+.5s"`}},
		{"duration without digits", retryDoc(strings.Replace(validRetry, `"maxBackoff": "1s"`, `"maxBackoff": ".s"`, 1)), []string{`methodConfig[0].retryPolicy.maxBackoff: invalid duration ".s"`}},
		{"duration leading zero", retryDoc(strings.Replace(validRetry, `"maxBackoff": "1s"`, `"maxBackoff": "01s"`, 1)), []string{`methodConfig[0].retryPolicy.maxBackoff: invalid duration "01s"`}},
		{"duration ten decimals", retryDoc(strings.Replace(validRetry, `"maxBackoff": "1s"`, `"maxBackoff": "1.0000000001s"`, 1)), []string{`methodConfig[0].retryPolicy.maxBackoff: invalid duration "1.0000000001s"`}},
		{"duration beyond protobuf", retryDoc(strings.Replace(validRetry, `"maxBackoff": "1s"`, `"maxBackoff": "315576000001s"`, 1)), []string{`methodConfig[0].retryPolicy.maxBackoff: duration 315576000001s is out of range`}},
		{"codes not a list", retryDoc(strings.Replace(validRetry, `["UNAVAILABLE"]`, `"UNAVAILABLE"`, 1)), []string{"methodConfig[0].retryPolicy.retryableStatusCodes: must be a list, got a string"}},
		{"wait for ready not bool", `{"methodConfig": [{"name": [{}], "waitForReady": "yes"}]}`, []string{"methodConfig[0].waitForReady: must be true or false, got a string"}},
		{"lb config not a list", `{"loadBalancingConfig": {"round_robin": {}}}`, []string{"loadBalancingConfig: must be a list, got an object"}},
		{"health check not an object", `{"healthCheckConfig": "x"}`, []string{"healthCheckConfig: must be an object, got a string"}},
		{"health check service not a string", `{"healthCheckConfig": {"serviceName": 5}}`, []string{"healthCheckConfig.serviceName: must be a string, got a number"}},
		{"health check unknown field", `{"healthCheckConfig": {"serviceNme": "x"}}`, []string{`healthCheckConfig.serviceNme: unknown field (did you mean "serviceName"?)`}},
		{"number beyond a double in a grpc object", `{"connectionScaling": {"x": [1e400]}, "loadBalancingConfig": [{"y": -1e999}]}`,
			[]string{"connectionScaling.x[0]: number 1e400 is out of range", "loadBalancingConfig[0].y: number -1e999 is out of range"}},
		{"number beyond a double in a code", retryDoc(strings.Replace(validRetry, `["UNAVAILABLE"]`, `[{"code": 1e400}]`, 1)),
			[]string{"methodConfig[0].retryPolicy.retryableStatusCodes[0]: must be a status code name", "methodConfig[0].retryPolicy.retryableStatusCodes[0].code: number 1e400 is out of range"}},
		{"several shape problems", `{"a": 1, "methodConfig": [{"b": 2}]}`, []string{"a: unknown field", "methodConfig[0].b: unknown field"}},

		// Names.
		{"method without service", `{"methodConfig": [{"name": [{"method": "M"}]}]}`, []string{`methodConfig[0].name[0].method: "M" needs a service`}},
		{"slash in service", `{"methodConfig": [{"name": [{"service": "a/b"}]}]}`, []string{`methodConfig[0].name[0].service: invalid service name "a/b"`}},
		{"star method", `{"methodConfig": [{"name": [{"service": "a.B", "method": "*"}]}]}`, []string{`methodConfig[0].name[0].method: invalid method name "*"`}},
		{"duplicate name", `{"methodConfig": [{"name": [{"service": "a.B"}]}, {"name": [{"service": "c.D"}, {"service": "a.B", "method": ""}]}]}`,
			[]string{`methodConfig[1].name[1]: duplicate name {service: "a.B"} (also at methodConfig[0].name[0])`}},
		{"duplicate default", `{"methodConfig": [{"name": [{}]}, {"name": [{"service": ""}]}]}`,
			[]string{`methodConfig[1].name[0]: duplicate name {} (the default) (also at methodConfig[0].name[0])`}},
		{"duplicate method in one entry", `{"methodConfig": [{"name": [{"service": "a.B", "method": "M"}, {"service": "a.B", "method": "M"}]}]}`,
			[]string{`methodConfig[0].name[1]: duplicate name {service: "a.B", method: "M"}`}},

		// retryPolicy, as grpc-go checks it.
		{"empty retryPolicy", retryDoc(``), []string{
			"methodConfig[0].retryPolicy.backoffMultiplier: required",
			"methodConfig[0].retryPolicy.initialBackoff: required",
			"methodConfig[0].retryPolicy.maxAttempts: required",
			"methodConfig[0].retryPolicy.maxBackoff: required",
			"methodConfig[0].retryPolicy.retryableStatusCodes: required and must not be empty",
		}},
		{"maxAttempts 1", retryDoc(strings.Replace(validRetry, `"maxAttempts": 3`, `"maxAttempts": 1`, 1)), []string{"methodConfig[0].retryPolicy.maxAttempts: must be at least 2, got 1"}},
		{"maxAttempts 0", retryDoc(strings.Replace(validRetry, `"maxAttempts": 3`, `"maxAttempts": 0`, 1)), []string{"methodConfig[0].retryPolicy.maxAttempts: must be at least 2, got 0"}},
		{"maxAttempts negative", retryDoc(strings.Replace(validRetry, `"maxAttempts": 3`, `"maxAttempts": -1`, 1)), []string{"methodConfig[0].retryPolicy.maxAttempts: must be at least 2, got -1"}},
		{"zero initialBackoff", retryDoc(strings.Replace(validRetry, `"0.1s"`, `"0s"`, 1)), []string{"methodConfig[0].retryPolicy.initialBackoff: must be greater than zero, got 0s"}},
		{"negative maxBackoff", retryDoc(strings.Replace(validRetry, `"1s"`, `"-1s"`, 1)), []string{"methodConfig[0].retryPolicy.maxBackoff: must be greater than zero, got -1s"}},
		{"maxBackoff below initial", retryDoc(strings.Replace(validRetry, `"1s"`, `"0.05s"`, 1)), []string{"methodConfig[0].retryPolicy.maxBackoff: must be at least initialBackoff (100ms), got 50ms"}},
		{"huge duration", retryDoc(strings.Replace(validRetry, `"1s"`, `"315576000000s"`, 1)), []string{"methodConfig[0].retryPolicy.maxBackoff: duration 315576000000s is out of range"}},
		{"zero multiplier", retryDoc(strings.Replace(validRetry, `"backoffMultiplier": 2`, `"backoffMultiplier": 0`, 1)), []string{"methodConfig[0].retryPolicy.backoffMultiplier: must be greater than zero, got 0"}},
		{"shrinking multiplier", retryDoc(strings.Replace(validRetry, `"backoffMultiplier": 2`, `"backoffMultiplier": 0.5`, 1)), []string{"methodConfig[0].retryPolicy.backoffMultiplier: must be at least 1, got 0.5"}},
		{"empty codes", retryDoc(strings.Replace(validRetry, `["UNAVAILABLE"]`, `[]`, 1)), []string{"methodConfig[0].retryPolicy.retryableStatusCodes: required and must not be empty"}},
		{"unknown code name", retryDoc(strings.Replace(validRetry, `["UNAVAILABLE"]`, `["UNAVAILABLE", "BUSY"]`, 1)), []string{`methodConfig[0].retryPolicy.retryableStatusCodes[1]: unknown status code "BUSY"`}},
		{"lower-case code", retryDoc(strings.Replace(validRetry, `["UNAVAILABLE"]`, `["unavailable"]`, 1)), []string{`methodConfig[0].retryPolicy.retryableStatusCodes[0]: unknown status code "unavailable" (names are upper case, as grpc spells them: "UNAVAILABLE")`}},
		{"canceled spelling", retryDoc(strings.Replace(validRetry, `["UNAVAILABLE"]`, `["CANCELED"]`, 1)), []string{`methodConfig[0].retryPolicy.retryableStatusCodes[0]: unknown status code "CANCELED" (names are upper case, as grpc spells them: "CANCELLED")`}},
		{"code out of range", retryDoc(strings.Replace(validRetry, `["UNAVAILABLE"]`, `[17]`, 1)), []string{"methodConfig[0].retryPolicy.retryableStatusCodes[0]: unknown status code 17"}},
		{"code fraction", retryDoc(strings.Replace(validRetry, `["UNAVAILABLE"]`, `[14.5]`, 1)), []string{"methodConfig[0].retryPolicy.retryableStatusCodes[0]: status code numbers are integers from 1 to 16, got 14.5"}},
		{"code written as a float", retryDoc(strings.Replace(validRetry, `["UNAVAILABLE"]`, `[14.0, 1.4e1]`, 1)), []string{
			"methodConfig[0].retryPolicy.retryableStatusCodes[0]: status code numbers are integers from 1 to 16, got 14.0",
			"methodConfig[0].retryPolicy.retryableStatusCodes[1]: status code numbers are integers from 1 to 16, got 1.4e1",
		}},
		{"negative code", breakerDoc(`"failureStatusCodes": [-1]`), []string{"methodConfig[0].circuitBreaker.failureStatusCodes[0]: status code numbers are integers from 1 to 16, got -1"}},
		{"field in two cases", retryDoc(validRetry + `, "MaxAttempts": 4`), []string{`methodConfig[0].retryPolicy.MaxAttempts: duplicate field (also written as "maxAttempts")`}},
		{"code as numeric string", retryDoc(strings.Replace(validRetry, `["UNAVAILABLE"]`, `["14"]`, 1)), []string{`methodConfig[0].retryPolicy.retryableStatusCodes[0]: unknown status code "14"`}},
		{"code OK", retryDoc(strings.Replace(validRetry, `["UNAVAILABLE"]`, `["OK"]`, 1)), []string{"methodConfig[0].retryPolicy.retryableStatusCodes[0]: OK is not a failure"}},
		{"code null", retryDoc(strings.Replace(validRetry, `["UNAVAILABLE"]`, `[null]`, 1)), []string{"methodConfig[0].retryPolicy.retryableStatusCodes[0]: must be a status code name"}},
		{"code object", retryDoc(strings.Replace(validRetry, `["UNAVAILABLE"]`, `[{"code": 14}]`, 1)), []string{"methodConfig[0].retryPolicy.retryableStatusCodes[0]: must be a status code name such as \"UNAVAILABLE\" or a number such as 14, got an object"}},
		{"third entry", `{"methodConfig": [{"name": [{"service": "a.A"}]}, {"name": [{"service": "b.B"}]}, {"name": [{"service": "c.C"}], "retryPolicy": {` +
			strings.Replace(validRetry, `"maxAttempts": 3`, `"maxAttempts": 1`, 1) + `}}]}`, []string{"methodConfig[2].retryPolicy.maxAttempts: must be at least 2, got 1"}},
		{"nameless entry is still checked", `{"methodConfig": [{"retryPolicy": {` + strings.Replace(validRetry, `"maxAttempts": 3`, `"maxAttempts": 1`, 1) + `}}]}`, []string{"methodConfig[0].retryPolicy.maxAttempts: must be at least 2, got 1"}},

		// Our retry fields.
		{"unknown jitter", retryDoc(validRetry + `, "jitter": "equal"`), []string{`methodConfig[0].retryPolicy.jitter: must be "proportional", "full" or "none", got "equal"`}},
		{"jitter factor with full jitter", retryDoc(validRetry + `, "jitter": "full", "jitterFactor": 0.1`), []string{`methodConfig[0].retryPolicy.jitterFactor: applies to proportional jitter only, not "full"`}},
		{"jitter factor above one", retryDoc(validRetry + `, "jitterFactor": 1.5`), []string{"methodConfig[0].retryPolicy.jitterFactor: must be in [0, 1] (0 means the default 0.2; jitter: \"none\" for no jitter), got 1.5"}},
		{"negative min attempt time", retryDoc(validRetry + `, "minAttemptTime": "-0.001s"`), []string{"methodConfig[0].retryPolicy.minAttemptTime: must not be negative (0 means the default), got -1ms"}},

		// circuitBreaker.
		{"unknown mode", breakerDoc(`"mode": "open"`), []string{`methodConfig[0].circuitBreaker.mode: must be "closed", "disabled", "metrics-only" or "forced-open", got "open"`}},
		{"rate above one", breakerDoc(`"failureRate": 1.5`), []string{"methodConfig[0].circuitBreaker.failureRate: must be in [0, 1] (0 turns the rule off), got 1.5"}},
		{"negative minimum calls", breakerDoc(`"minimumCalls": -5`), []string{"methodConfig[0].circuitBreaker.minimumCalls: must not be negative (0 means the default 20), got -5"}},
		{"throttleK below 1", breakerDoc(`"throttleK": 0.5`), []string{"methodConfig[0].circuitBreaker.throttleK: must be at least 1 (0 means the default 2, a negative value turns the throttle off), got 0.5"}},
		{"tiny window", breakerDoc(`"window": "0.000000005s"`), []string{"methodConfig[0].circuitBreaker.window: must be at least 10ns, got 5ns"}},
		{"max recovery below recovery", breakerDoc(`"recoveryTime": "10s", "maxRecoveryTime": "5s"`), []string{"methodConfig[0].circuitBreaker.maxRecoveryTime: must be at least recoveryTime (10s), got 5s"}},
		{"max recovery below default recovery", breakerDoc(`"maxRecoveryTime": "0.5s"`), []string{"methodConfig[0].circuitBreaker.maxRecoveryTime: must be at least recoveryTime (1s), got 500ms"}},
		{"jitter one", breakerDoc(`"recoveryJitter": 1`), []string{"methodConfig[0].circuitBreaker.recoveryJitter: must be less than 1 (a negative value means no jitter), got 1"}},
		{"bad failure code", breakerDoc(`"failureStatusCodes": ["UNAVAILABLE", 99]`), []string{"methodConfig[0].circuitBreaker.failureStatusCodes[1]: unknown status code 99"}},
		{"failure codes not a list", breakerDoc(`"failureStatusCodes": "UNAVAILABLE"`), []string{"methodConfig[0].circuitBreaker.failureStatusCodes: must be a list, got a string"}},

		// retryThrottling, as grpc-go checks it, and retryBudget.
		{"throttling empty", `{"retryThrottling": {}}`, []string{"retryThrottling.maxTokens: required", "retryThrottling.tokenRatio: required"}},
		{"maxTokens zero", `{"retryThrottling": {"maxTokens": 0, "tokenRatio": 0.1}}`, []string{"retryThrottling.maxTokens: must be in (0, 1000], got 0"}},
		{"maxTokens too big", `{"retryThrottling": {"maxTokens": 1001, "tokenRatio": 0.1}}`, []string{"retryThrottling.maxTokens: must be in (0, 1000], got 1001"}},
		{"tokenRatio zero", `{"retryThrottling": {"maxTokens": 10, "tokenRatio": 0}}`, []string{"retryThrottling.tokenRatio: must be greater than zero, got 0"}},
		{"tokenRatio negative", `{"retryThrottling": {"maxTokens": 10, "tokenRatio": -1}}`, []string{"retryThrottling.tokenRatio: must be greater than zero, got -1"}},
		{"tokenRatio too fine", `{"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.0001}}`, []string{"retryThrottling.tokenRatio: must be at least 0.001"}},
		{"throttling and budget", `{"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}, "retryBudget": {}}`, []string{"retryBudget: cannot be combined with retryThrottling"}},
		{"budget disabled with ratio", `{"retryBudget": {"disabled": true, "ratio": 0.1}}`, []string{"retryBudget.disabled: no other retryBudget field may be set with it"}},
		{"budget window short", `{"retryBudget": {"window": "0.001s"}}`, []string{"retryBudget.window: must be at least 10ms, got 1ms"}},

		// Several problems at once, sorted by path.
		{"many", `{"methodConfig": [{"name": [{"service": "a.A"}], "retryPolicy": {` +
			strings.Replace(validRetry, `"maxAttempts": 3`, `"maxAttempts": 1`, 1) + `}, "circuitBreaker": {"failureRate": 2}}], "retryThrottling": {"maxTokens": 0, "tokenRatio": 1}}`,
			[]string{
				"methodConfig[0].circuitBreaker.failureRate: must be in [0, 1] (0 turns the rule off), got 2",
				"methodConfig[0].retryPolicy.maxAttempts: must be at least 2, got 1",
				"retryThrottling.maxTokens: must be in (0, 1000], got 0",
			}},
	} {
		t.Run(tc.name, func(t *testing.T) { assertProblems(t, LoadJSON, tc.doc, tc.want) })
	}
}

func TestErrorLimit(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"methodConfig": [`)
	for i := range 30 {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`{"name": [], "retryPolicy": {"maxAttempts": 1, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14]}}`)
	}
	b.WriteString(`]}`)
	_, err := LoadJSON([]byte(b.String()))
	var e *Error
	require.ErrorAs(t, err, &e)
	assert.Len(t, e.Problems, maxProblems)
	assert.Equal(t, 10, e.More)
	assert.True(t, strings.HasSuffix(err.Error(), "; and 10 more"), err.Error())
}

// TestLoadServiceConfig: a grpc-go service config as grpc's documentation
// writes it, with every field grpc-go reads, loads as it is.
func TestLoadServiceConfig(t *testing.T) {
	const doc = `{
	  "loadBalancingPolicy": "round_robin",
	  "loadBalancingConfig": [{"round_robin": {}}],
	  "healthCheckConfig": {"serviceName": "echo"},
	  "methodConfig": [
	    {
	      "name": [{"service": "khive.echo.v1.EchoService", "method": "Unary"}],
	      "waitForReady": true,
	      "timeout": "2.5s",
	      "maxRequestMessageBytes": 1024,
	      "maxResponseMessageBytes": 2048,
	      "retryPolicy": {
	        "maxAttempts": 4,
	        "initialBackoff": "0.1s",
	        "maxBackoff": "1s",
	        "backoffMultiplier": 2,
	        "retryableStatusCodes": ["UNAVAILABLE", 4, "CANCELLED", "UNAVAILABLE"]
	      }
	    },
	    {
	      "name": [{"service": "khive.echo.v1.EchoService"}, {"service": "other.v1.Other", "method": null}],
	      "retryPolicy": {
	        "maxAttempts": 7, "initialBackoff": ".5s", "maxBackoff": "10.s", "backoffMultiplier": 1.5,
	        "retryableStatusCodes": [14]
	      }
	    },
	    {"name": [{}], "timeout": "1s"},
	    {"name": [], "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.1s"}}
	  ],
	  "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}
	}`
	c, err := LoadJSON([]byte(doc))
	require.NoError(t, err)

	a6 := func(attempts int, initial, maxB time.Duration, mult float64) retry.Policy {
		return retry.Policy{MaxAttempts: attempts, InitialBackoff: initial, MaxBackoff: maxB, Multiplier: mult, Jitter: retry.ProportionalJitter}
	}
	assert.Equal(t, map[string]interceptors.Policy{
		"/khive.echo.v1.EchoService/Unary": {
			Retry:          a6(4, 100*time.Millisecond, time.Second, 2),
			RetryableCodes: []codes.Code{codes.Unavailable, codes.DeadlineExceeded, codes.Canceled},
		},
		"/khive.echo.v1.EchoService/*": {
			Retry:          a6(5, 500*time.Millisecond, 10*time.Second, 1.5), // 7 capped at 5, as in grpc-go
			RetryableCodes: []codes.Code{codes.Unavailable},
		},
		"/other.v1.Other/*": {
			Retry:          a6(5, 500*time.Millisecond, 10*time.Second, 1.5),
			RetryableCodes: []codes.Code{codes.Unavailable},
		},
		"*": {Retry: retry.Policy{MaxAttempts: 1}}, // no retryPolicy: one attempt, default breaker
	}, c.Policies)
	assert.Equal(t, Budget{Mode: TokenBucket, MaxTokens: 10, TokenRatio: 0.1}, c.Budget)
	assert.Empty(t, c.Ignored, "hedgingPolicy is applied")
	assert.JSONEq(t, `{"loadBalancingPolicy": "round_robin", "loadBalancingConfig": [{"round_robin": {}}],
	  "healthCheckConfig": {"serviceName": "echo"},
	  "methodConfig": [{"name": [{"service": "khive.echo.v1.EchoService", "method": "Unary"}], "waitForReady": true,
	    "maxRequestMessageBytes": 1024, "maxResponseMessageBytes": 2048}]}`, c.grpcConfig)
	assert.Equal(t, map[string]time.Duration{"/khive.echo.v1.EchoService/Unary": 2500 * time.Millisecond, "*": time.Second}, c.timeouts)
	require.NoError(t, grpcParse(c.grpcConfig))

	s, err := c.NewSuite()
	require.NoError(t, err)
	require.NotNil(t, s)
}

// TestLoadOurFields: every field of ours maps to the library's settings.
func TestLoadOurFields(t *testing.T) {
	const doc = `{
	  "methodConfig": [{
	    "name": [{"service": "a.v1.A", "method": "Get"}],
	    "retryPolicy": {
	      "maxAttempts": 3, "initialBackoff": "0.02s", "maxBackoff": "0.5s", "backoffMultiplier": 3,
	      "retryableStatusCodes": ["UNAVAILABLE", "DEADLINE_EXCEEDED"],
	      "jitterFactor": 0.5, "perAttemptTimeout": "0.25s", "minAttemptTime": "0.01s", "maxPushback": "2s"
	    },
	    "circuitBreaker": {
	      "consecutiveFailures": -1, "failureRate": 0.25, "minimumCalls": 50, "window": "30s",
	      "recoveryTime": "90s", "recoveryJitter": -1, "halfOpenMaxCalls": 3, "throttleK": 1.5, "halfOpenMaxWait": "0.2s",
	      "failureStatusCodes": ["UNAVAILABLE", 13]
	    }
	  }, {
	    "name": [{"service": "a.v1.A"}],
	    "retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1,
	      "retryableStatusCodes": ["UNAVAILABLE"], "jitter": "none"},
	    "circuitBreaker": {"mode": "metrics-only", "throttleK": -1, "halfOpenMaxWait": "-1s", "maxRecoveryTime": "120s"}
	  }, {
	    "name": [{}],
	    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "5s", "backoffMultiplier": 2,
	      "retryableStatusCodes": ["UNAVAILABLE"], "jitter": "full"},
	    "circuitBreaker": {"mode": "disabled"}
	  }],
	  "retryBudget": {"ratio": 0.1, "minRetriesPerSecond": 2, "window": "5s"}
	}`
	c, err := LoadJSON([]byte(doc))
	require.NoError(t, err)
	assert.Equal(t, interceptors.Policy{
		Retry: retry.Policy{
			MaxAttempts: 3, InitialBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond, Multiplier: 3,
			Jitter: retry.ProportionalJitter, JitterFactor: 0.5,
			AttemptTimeout: 250 * time.Millisecond, MinAttemptTime: 10 * time.Millisecond, MaxPushback: 2 * time.Second,
		},
		Breaker: breaker.Config{
			ConsecutiveFailures: -1, FailureRate: 0.25, MinimumCalls: 50, Window: 30 * time.Second,
			RecoveryTime: 90 * time.Second, MaxRecoveryTime: 90 * time.Second, // default cap raised to recoveryTime
			RecoveryJitter: -1, HalfOpenMaxCalls: 3, ThrottleK: 1.5, HalfOpenMaxWait: 200 * time.Millisecond,
		},
		RetryableCodes: []codes.Code{codes.Unavailable, codes.DeadlineExceeded},
		FailureCodes:   []codes.Code{codes.Unavailable, codes.Internal},
	}, c.Policies["/a.v1.A/Get"])
	assert.Equal(t, interceptors.Policy{
		Retry: retry.Policy{MaxAttempts: 2, InitialBackoff: time.Second, MaxBackoff: time.Second, Multiplier: 1,
			Jitter: retry.NoJitter},
		Breaker:        breaker.Config{Mode: breaker.MetricsOnly, ThrottleK: -1, HalfOpenMaxWait: -1, MaxRecoveryTime: 120 * time.Second},
		RetryableCodes: []codes.Code{codes.Unavailable},
	}, c.Policies["/a.v1.A/*"])
	assert.Equal(t, interceptors.Policy{
		Retry: retry.Policy{MaxAttempts: 5, InitialBackoff: 50 * time.Millisecond, MaxBackoff: 5 * time.Second, Multiplier: 2,
			Jitter: retry.FullJitter},
		Breaker:        breaker.Config{Mode: breaker.Disabled},
		RetryableCodes: []codes.Code{codes.Unavailable},
	}, c.Policies["*"])
	assert.Equal(t, Budget{Mode: RatioBudget, Ratio: retry.BudgetConfig{Ratio: 0.1, MinRetriesPerSecond: 2, Window: 5 * time.Second}}, c.Budget)
	assert.Empty(t, c.Ignored)

	_, err = c.NewSuite()
	require.NoError(t, err)
}

func TestLoadBudgets(t *testing.T) {
	for _, tc := range []struct {
		doc  string
		want Budget
	}{
		{`{}`, Budget{Mode: DefaultBudget}},
		{`{"retryBudget": {}}`, Budget{Mode: RatioBudget}},
		{`{"retryBudget": {"disabled": true}}`, Budget{Mode: NoBudget}},
		{`{"retryBudget": {"disabled": false, "ratio": 0.5}}`, Budget{Mode: RatioBudget, Ratio: retry.BudgetConfig{Ratio: 0.5}}},
		{`{"retryThrottling": {"maxTokens": 1000, "tokenRatio": 0.001}}`, Budget{Mode: TokenBucket, MaxTokens: 1000, TokenRatio: 0.001}},
		{`{"retryThrottling": null}`, Budget{Mode: DefaultBudget}},
	} {
		c, err := LoadJSON([]byte(tc.doc))
		require.NoError(t, err, tc.doc)
		assert.Equal(t, tc.want, c.Budget, tc.doc)
		assert.Empty(t, c.Policies)
		_, err = c.NewSuite()
		require.NoError(t, err, tc.doc)
	}
}

// TestLoadNames: how grpc names become policy keys; field names in any
// case and null are accepted as grpc-go accepts them.
func TestLoadNames(t *testing.T) {
	c, err := LoadJSON([]byte(`{"MethodConfig": [
	  {"NAME": [{"service": "p.S", "Method": "M"}, {"Service": "p.S", "method": ""}, {"service": "q.T", "method": null}, {"service": null}]},
	  {"name": []}
	]}`))
	require.NoError(t, err)
	keys := make([]string, 0, len(c.Policies))
	for k := range c.Policies {
		keys = append(keys, k)
	}
	assert.ElementsMatch(t, []string{"/p.S/M", "/p.S/*", "/q.T/*", "*"}, keys)
}

// TestLoadCodeSlicesPerKey: the names of one entry get equal policies, but
// not shared code slices.
func TestLoadCodeSlicesPerKey(t *testing.T) {
	c, err := LoadJSON([]byte(`{"methodConfig": [{"name": [{"service": "a.A"}, {"service": "b.B"}],
	  "retryPolicy": {` + validRetry + `}, "circuitBreaker": {"failureStatusCodes": ["INTERNAL"]}}]}`))
	require.NoError(t, err)
	a, b := c.Policies["/a.A/*"], c.Policies["/b.B/*"]
	require.Equal(t, a, b)
	a.RetryableCodes[0], a.FailureCodes[0] = codes.Aborted, codes.Aborted
	assert.Equal(t, []codes.Code{codes.Unavailable}, b.RetryableCodes)
	assert.Equal(t, []codes.Code{codes.Internal}, b.FailureCodes)
}

func TestFormatStrings(t *testing.T) {
	assert.Equal(t, "json", JSON.String())
	assert.Equal(t, "yaml", YAML.String())
	assert.Equal(t, "Format(9)", Format(9).String())
	assert.Equal(t, "default", DefaultBudget.String())
	assert.Equal(t, "ratio", RatioBudget.String())
	assert.Equal(t, "token-bucket", TokenBucket.String())
	assert.Equal(t, "none", NoBudget.String())
	assert.Equal(t, "BudgetMode(9)", BudgetMode(9).String())
	_, err := Load([]byte(`{}`), Format(9))
	require.Error(t, err)
}

func TestFromProtoNil(t *testing.T) {
	_, err := FromProto(nil)
	require.Error(t, err)
}

// TestLoadFile: the format comes from the extension, else from the content.
func TestLoadFile(t *testing.T) {
	const (
		jsonDoc = ` {"retryBudget": {"disabled": true}}`
		yamlDoc = "retryBudget: {disabled: true}\n"
	)
	dir := t.TempDir()
	for _, tc := range []struct{ name, content, wantErr string }{
		{"p.json", jsonDoc, ""},
		{"p.JSON", jsonDoc, ""},
		{"p.yaml", yamlDoc, ""},
		{"p.yml", yamlDoc, ""},
		{"flow.yml", "{retryBudget: {disabled: true}}", ""}, // YAML, though it starts with "{"
		{"policy", jsonDoc, ""},
		{"policy.conf", yamlDoc, ""},
		{"yaml.json", yamlDoc, "invalid JSON"},
		{"broken", "\n {\"retryBudget\": ", "invalid JSON"}, // read as JSON, not YAML
	} {
		name := filepath.Join(dir, tc.name)
		require.NoError(t, os.WriteFile(name, []byte(tc.content), 0o600))
		c, err := LoadFile(name)
		if tc.wantErr != "" {
			assert.ErrorContains(t, err, tc.wantErr, tc.name)
			continue
		}
		require.NoError(t, err, tc.name)
		assert.Equal(t, NoBudget, c.Budget.Mode, tc.name)
	}
	_, err := LoadFile(filepath.Join(dir, "missing.yaml"))
	assert.ErrorIs(t, err, os.ErrNotExist)
}

// BenchmarkLoad: a typical policy document (the config example's), JSON
// and YAML.
func BenchmarkLoad(b *testing.B) {
	yamlDoc, err := os.ReadFile(filepath.Join("..", "examples", "config", "policy.yaml"))
	require.NoError(b, err)
	jsonDoc := []byte(`{"methodConfig": [{"name": [{"service": "khive.echo.v1.EchoService"}], "timeout": "2s",
	  "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
	  "circuitBreaker": {"consecutiveFailures": 5, "recoveryTime": "1s"}}],
	  "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}`)
	for _, tc := range []struct {
		f   Format
		doc []byte
	}{{JSON, jsonDoc}, {YAML, yamlDoc}} {
		b.Run(tc.f.String(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Load(tc.doc, tc.f); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestLoadReportsEverything: a malformed value (a duration written "100ms",
// a bad code name, a string for a number) hides none of the document's other
// problems; all come at once, sorted by path with indexes in numeric order,
// at most one per path; white space in a name stays an error.
func TestLoadReportsEverything(t *testing.T) {
	var entries []string
	for i := range 11 {
		entries = append(entries, fmt.Sprintf(`{"name": [{"service": "s%d.S"}]}`, i))
	}
	entries[2] = `{"name": [{"service": "a B"}], "retryPolicy": {"maxAttempts": 1, "initialBackoff": "100ms", "maxBackoff": "1s", "backoffMultiplier": "2", "retryableStatusCodes": ["BUSY", 14.0]}}`
	entries[10] = `{"name": [{"service": "x.X"}], "circuitBreaker": {"recoveryTime": "1m", "halfOpenMaxCalls": -1}}`
	assertProblems(t, LoadJSON, `{"retryThrottling": {"maxTokens": 0}, "methodConfig": [`+strings.Join(entries, ",")+`], "oops": 1}`, []string{
		`methodConfig[2].name[0].service: invalid service name "a B"`,
		"methodConfig[2].retryPolicy.backoffMultiplier: must be a number, got a string",
		`methodConfig[2].retryPolicy.initialBackoff: invalid duration "100ms"`,
		"methodConfig[2].retryPolicy.maxAttempts: must be at least 2, got 1",
		`methodConfig[2].retryPolicy.retryableStatusCodes[0]: unknown status code "BUSY"`,
		"methodConfig[2].retryPolicy.retryableStatusCodes[1]: status code numbers are integers from 1 to 16, got 14.0",
		"methodConfig[10].circuitBreaker.halfOpenMaxCalls: must not be negative (0 means the default 1), got -1",
		`methodConfig[10].circuitBreaker.recoveryTime: invalid duration "1m"`,
		"oops: unknown field",
		"retryThrottling.maxTokens: must be in (0, 1000], got 0",
		"retryThrottling.tokenRatio: required",
	})
}

// TestLoadZeroAndNegative: the file format reads zero and negative values
// as breaker.Config, retry.Policy and retry.BudgetConfig do: zero or absent
// means the default, a negative value turns off what can be off and is an
// error elsewhere; an absent list means the default, an empty one none.
func TestLoadZeroAndNegative(t *testing.T) {
	for _, tc := range []struct {
		body string
		want breaker.Config
	}{
		{`"consecutiveFailures": 0`, breaker.Config{}},
		{`"consecutiveFailures": -1`, breaker.Config{ConsecutiveFailures: -1}},
		{`"throttleK": 0`, breaker.Config{}},
		{`"throttleK": -1`, breaker.Config{ThrottleK: -1}},
		{`"recoveryJitter": 0`, breaker.Config{}},
		{`"recoveryJitter": -1`, breaker.Config{RecoveryJitter: -1}},
		{`"halfOpenMaxWait": "0s"`, breaker.Config{}},
		{`"halfOpenMaxWait": "-1s"`, breaker.Config{HalfOpenMaxWait: -1}},
		{`"minimumCalls": 0`, breaker.Config{}},
		{`"halfOpenMaxCalls": 0`, breaker.Config{}},
		{`"failureRate": 0`, breaker.Config{}},
		{`"window": "0s", "recoveryTime": "0s", "maxRecoveryTime": "0s"`, breaker.Config{}},
	} {
		c, err := LoadJSON([]byte(breakerDoc(tc.body)))
		require.NoError(t, err, tc.body)
		assert.Equal(t, tc.want, c.Policies["/s.S/*"].Breaker, tc.body)
	}
	for _, body := range []string{`"minimumCalls": -1`, `"halfOpenMaxCalls": -1`, `"window": "-1s"`, `"recoveryTime": "-1s"`, `"maxRecoveryTime": "-1s"`} {
		_, err := LoadJSON([]byte(breakerDoc(body)))
		assert.ErrorContains(t, err, "must not be negative (0 means the default", body)
	}

	c, err := LoadJSON([]byte(breakerDoc(`"failureStatusCodes": []`)))
	require.NoError(t, err)
	assert.Equal(t, []codes.Code{}, c.Policies["/s.S/*"].FailureCodes, "an empty list: no code is a failure")
	c, err = LoadJSON([]byte(breakerDoc(`"mode": "closed"`)))
	require.NoError(t, err)
	assert.Nil(t, c.Policies["/s.S/*"].FailureCodes, "absent: the default codes")

	c, err = LoadJSON([]byte(retryDoc(validRetry + `, "jitterFactor": 0, "perAttemptTimeout": "0s", "minAttemptTime": "0s", "maxPushback": "0s"`)))
	require.NoError(t, err)
	assert.Equal(t, retry.Policy{MaxAttempts: 3, InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second, Multiplier: 2,
		Jitter: retry.ProportionalJitter}, c.Policies["/s.S/*"].Retry)
	_, err = LoadJSON([]byte(retryDoc(validRetry + `, "jitterFactor": -0.1`)))
	assert.ErrorContains(t, err, "jitterFactor: must be in [0, 1]")

	c, err = LoadJSON([]byte(`{"retryBudget": {"ratio": 0, "minRetriesPerSecond": 0, "window": "0s"}}`))
	require.NoError(t, err)
	assert.Equal(t, Budget{Mode: RatioBudget}, c.Budget)
	_, err = LoadJSON([]byte(`{"retryBudget": {"ratio": -1, "minRetriesPerSecond": -1}}`))
	assert.ErrorContains(t, err, "retryBudget.minRetriesPerSecond: must not be negative")
	assert.ErrorContains(t, err, "retryBudget.ratio: must be in [0, 1000]")

	// The suite takes each of them.
	c, err = LoadJSON([]byte(breakerDoc(`"consecutiveFailures": -1, "throttleK": -1, "recoveryJitter": -1, "halfOpenMaxWait": "-1s", "failureStatusCodes": []`)))
	require.NoError(t, err)
	_, err = c.NewSuite()
	require.NoError(t, err)
}
