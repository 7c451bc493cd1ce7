package config

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestYAMLMatchesJSON: the same document in YAML and in JSON loads the same.
func TestYAMLMatchesJSON(t *testing.T) {
	const yamlDoc = `
# A grpc service config, plus a breaker.
loadBalancingConfig:
  - round_robin: {}
methodConfig:
  - name:
      - service: khive.echo.v1.EchoService
        method: Unary
      - service: other.v1.Other
    waitForReady: true
    retryPolicy: &retry
      maxAttempts: 4
      initialBackoff: 0.1s
      maxBackoff: 1s
      backoffMultiplier: 2
      retryableStatusCodes: [UNAVAILABLE, 4]
    circuitBreaker:
      consecutiveFailures: 5
      recoveryTime: 2.5s
      failureStatusCodes:
        - UNAVAILABLE
        - 13
  - name: [{}]
    retryPolicy: *retry
retryThrottling:
  maxTokens: 10
  tokenRatio: 0.1
`
	const jsonDoc = `{
	  "loadBalancingConfig": [{"round_robin": {}}],
	  "methodConfig": [
	    {
	      "name": [{"service": "khive.echo.v1.EchoService", "method": "Unary"}, {"service": "other.v1.Other"}],
	      "waitForReady": true,
	      "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
	        "retryableStatusCodes": ["UNAVAILABLE", 4]},
	      "circuitBreaker": {"consecutiveFailures": 5, "recoveryTime": "2.5s", "failureStatusCodes": ["UNAVAILABLE", 13]}
	    },
	    {
	      "name": [{}],
	      "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
	        "retryableStatusCodes": ["UNAVAILABLE", 4]}
	    }
	  ],
	  "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}
	}`
	fromYAML, err := LoadYAML([]byte(yamlDoc))
	require.NoError(t, err)
	fromJSON, err := LoadJSON([]byte(jsonDoc))
	require.NoError(t, err)
	assert.Equal(t, fromJSON, fromYAML)
	assert.Len(t, fromYAML.Policies, 3)

	// JSON is YAML too.
	again, err := LoadYAML([]byte(jsonDoc))
	require.NoError(t, err)
	assert.Equal(t, fromJSON, again)
}

func TestYAMLInvalid(t *testing.T) {
	for _, tc := range []struct {
		name string
		doc  string
		want []string
	}{
		{"empty", ``, []string{"the document is empty"}},
		{"comment only", "# nothing\n", []string{"the document is empty"}},
		{"syntax", "methodConfig: [\n", []string{"invalid YAML: "}},
		{"tabs", "methodConfig:\n\t- name: []\n", []string{"invalid YAML: "}},
		{"two documents", "{}\n---\n{}\n", []string{"the YAML stream holds more than one document"}},
		{"second document broken", "{}\n---\n[\n", []string{"invalid YAML: "}},
		{"scalar", "hello\n", []string{"the document must be an object, got a string"}},
		{"null document", "null\n", []string{"the document must be an object, got null"}},
		{"duplicate key", "methodConfig: []\nmethodConfig: []\n", []string{"methodConfig: duplicate field"}},
		{"merge key", "base: &b {maxAttempts: 3}\nmethodConfig:\n  - retryPolicy:\n      <<: *b\n", []string{"methodConfig[0].retryPolicy: line 4: YAML merge keys (<<) are not supported"}},
		{"integer key", "methodConfig:\n  - 1: x\n", []string{"methodConfig[0]: line 2: mapping keys must be strings, got !!int \"1\""}},
		{"list key", "? [a]\n: 1\n", []string{"line 1: mapping keys must be strings, got a sequence"}},
		{"infinity", "methodConfig:\n  - retryPolicy:\n      backoffMultiplier: .inf\n", []string{"methodConfig[0].retryPolicy.backoffMultiplier: line 3: must be a finite decimal number such as 10 or 0.5, got .inf"}},
		{"nan", "retryBudget:\n  ratio: .nan\n", []string{"retryBudget.ratio: line 2: must be a finite decimal number such as 10 or 0.5, got .nan"}},
		{"custom tag", "retryBudget: !custom {}\n", []string{"retryBudget: line 1: unsupported YAML tag !custom"}},
		{"custom sequence tag", "loadBalancingConfig: !list []\n", []string{"loadBalancingConfig: line 1: unsupported YAML tag !list"}},
		{"binary", "loadBalancingPolicy: !!binary aGVsbG8=\n", []string{"loadBalancingPolicy: line 1: unsupported YAML tag !!binary"}},
		{"huge int", "methodConfig:\n  - name: [{service: a.B}]\n    retryPolicy: {maxAttempts: 99999999999999999999999, initialBackoff: 1s, maxBackoff: 1s, backoffMultiplier: 1, retryableStatusCodes: [14]}\n", []string{"methodConfig[0].retryPolicy.maxAttempts: integer 99999999999999999999999 is out of range"}},
		{"huge float", "retryThrottling: {maxTokens: 1e400, tokenRatio: 0.1}\n", []string{"retryThrottling.maxTokens: number 1e400 is out of range"}},
		{"leading zero", "retryThrottling: {maxTokens: 010, tokenRatio: 0.1}\n", []string{"retryThrottling.maxTokens: line 1: must be a finite decimal number such as 10 or 0.5, got 010"}},
		{"hexadecimal", "retryThrottling: {maxTokens: 0x10, tokenRatio: 0.1}\n", []string{"retryThrottling.maxTokens: line 1: must be a finite decimal number such as 10 or 0.5, got 0x10"}},
		{"binary", "retryThrottling: {maxTokens: 0b10, tokenRatio: 0.1}\n", []string{"retryThrottling.maxTokens: line 1: must be a finite decimal number such as 10 or 0.5, got 0b10"}},
		{"underscores", "retryThrottling: {maxTokens: 10, tokenRatio: 1_0.5}\n", []string{"retryThrottling.tokenRatio: line 1: must be a finite decimal number such as 10 or 0.5, got 1_0.5"}},
		{"code with a leading zero", "methodConfig:\n  - name: [{service: a.B}]\n    retryPolicy: {maxAttempts: 2, initialBackoff: 1s, maxBackoff: 1s, backoffMultiplier: 1, retryableStatusCodes: [014]}\n",
			[]string{"methodConfig[0].retryPolicy.retryableStatusCodes[0]: line 3: must be a finite decimal number such as 10 or 0.5, got 014"}},
		{"code written as a float", "methodConfig:\n  - name: [{service: a.B}]\n    retryPolicy: {maxAttempts: 2, initialBackoff: 1s, maxBackoff: 1s, backoffMultiplier: 1, retryableStatusCodes: [14.0]}\n",
			[]string{"methodConfig[0].retryPolicy.retryableStatusCodes[0]: status code numbers are integers from 1 to 16, got 14.0"}},
		{"integer written as a float", "methodConfig:\n  - name: [{service: a.B}]\n    retryPolicy: {maxAttempts: 3.0, initialBackoff: 1s, maxBackoff: 1s, backoffMultiplier: 1, retryableStatusCodes: [14]}\n", []string{"methodConfig[0].retryPolicy.maxAttempts: must be an integer, got 3.0"}},
		{"yes is a string", "methodConfig:\n  - waitForReady: yes\n", []string{"methodConfig[0].waitForReady: must be true or false, got a string"}},
		{"tagged string", "methodConfig:\n  - name: [{service: a.B}]\n    retryPolicy: {maxAttempts: !!str 3, initialBackoff: 1s, maxBackoff: 1s, backoffMultiplier: 1, retryableStatusCodes: [14]}\n", []string{"methodConfig[0].retryPolicy.maxAttempts: must be an integer, got a string"}},
		{"unquoted number code", "methodConfig:\n  - name: [{service: a.B}]\n    retryPolicy: {maxAttempts: 2, initialBackoff: 1s, maxBackoff: 1s, backoffMultiplier: 1, retryableStatusCodes: [unavailable]}\n",
			[]string{`methodConfig[0].retryPolicy.retryableStatusCodes[0]: unknown status code "unavailable" (names are upper case`}},
		{"duration as YAML number", "retryBudget:\n  window: 10\n", []string{`retryBudget.window: must be a duration string such as "0.1s", got a number`}},
		{"quoted number", "methodConfig:\n  - name: [{service: a.B}]\n    retryPolicy: {maxAttempts: \"3\", initialBackoff: 1s, maxBackoff: 1s, backoffMultiplier: 1, retryableStatusCodes: [14]}\n", []string{"methodConfig[0].retryPolicy.maxAttempts: must be an integer, got a string"}},
		{"timestamp as duration", "retryBudget:\n  window: 2001-12-14\n", []string{`retryBudget.window: invalid duration "2001-12-14"`}},
		{"not utf-8", "a: \xff\n", []string{"the document is not valid UTF-8"}},
	} {
		t.Run(tc.name, func(t *testing.T) { assertProblems(t, LoadYAML, tc.doc, tc.want) })
	}
}

// TestYAMLAliasBomb: aliases are expanded within a bound, never without one.
func TestYAMLAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i <= 9; i++ {
		prev := "*a" + string(rune('0'+i-1))
		b.WriteString("a" + string(rune('0'+i)) + ": &a" + string(rune('0'+i)) + " [" + strings.Repeat(prev+", ", 9) + prev + "]\n")
	}
	_, err := LoadYAML([]byte(b.String()))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "more than 100000 values")
}

func TestYAMLAliasKey(t *testing.T) {
	// An alias may name a key (the alias of a string scalar).
	c, err := LoadYAML([]byte("x: &k retryBudget\n"))
	require.Error(t, err) // x is unknown
	assert.Nil(t, c)
	c, err = LoadYAML([]byte("methodConfig:\n  - name: [{service: &s a.B}]\n  - name: [{service: *s, method: M}]\n"))
	require.NoError(t, err)
	assert.Contains(t, c.Policies, "/a.B/*")
	assert.Contains(t, c.Policies, "/a.B/M")
}

// TestYAMLNumbers: the decimal numbers of YAML 1.2 load as their JSON form.
func TestYAMLNumbers(t *testing.T) {
	c, err := LoadYAML([]byte("retryThrottling: {maxTokens: +1.e2, tokenRatio: .5}\n" +
		"methodConfig:\n  - name: [{service: a.B}]\n    circuitBreaker: {consecutiveFailures: +3, failureRate: 5E-1}\n"))
	require.NoError(t, err)
	assert.Equal(t, Budget{Mode: TokenBucket, MaxTokens: 100, TokenRatio: 0.5}, c.Budget)
	assert.Equal(t, 3, c.Policies["/a.B/*"].Breaker.ConsecutiveFailures)
	assert.Equal(t, 0.5, c.Policies["/a.B/*"].Breaker.FailureRate)
}
