package config_test

import (
	"errors"
	"fmt"

	"github.com/khive/grpc-resilience/config"
)

// A YAML policy: a grpc service config with a breaker setting of ours.
func Example() {
	cfg, err := config.LoadYAML([]byte(`
methodConfig:
  - name: [{service: khive.echo.v1.EchoService}]
    timeout: 2s            # applied by cfg.DialOptions
    retryPolicy:
      maxAttempts: 3
      initialBackoff: 0.1s
      maxBackoff: 1s
      backoffMultiplier: 2
      retryableStatusCodes: [UNAVAILABLE, 10]
    circuitBreaker: {consecutiveFailures: 5}
retryThrottling: {maxTokens: 10, tokenRatio: 0.1}
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	p := cfg.Policies["/khive.echo.v1.EchoService/*"]
	fmt.Println(p.Retry.MaxAttempts, p.Retry.InitialBackoff, p.Retry.Jitter, p.RetryableCodes)
	fmt.Println(p.Breaker.ConsecutiveFailures, cfg.Budget.Mode, cfg.Ignored)

	suite, err := cfg.NewSuite() // then: grpc.NewClient(target, append(cfg.DialOptions(), suite.DialOptions()...)...)
	fmt.Println(suite != nil, err)
	// Output:
	// 3 100ms proportional [Unavailable Aborted]
	// 5 token-bucket []
	// true <nil>
}

// Every problem of a document, each with its path.
func ExampleLoadJSON_errors() {
	_, err := config.LoadJSON([]byte(`{
	  "methodConfig": [{
	    "name": [{"service": "pkg.v1.Svc"}],
	    "retryPolicy": {"maxAttempts": 1, "initialBackoff": "100ms", "maxBackoff": "1s",
	      "backoffMultiplier": 2, "retryableStatusCodes": ["unavailable"]}
	  }],
	  "retryThrotling": {"maxTokens": 10, "tokenRatio": 0.1}
	}`))
	var e *config.Error
	if errors.As(err, &e) {
		for _, p := range e.Problems {
			fmt.Println(p.Path, "=>", p.Msg)
		}
	}
	// Output:
	// methodConfig[0].retryPolicy.initialBackoff => invalid duration "100ms": want seconds with an "s" suffix, such as "0.1s" or "2s"
	// methodConfig[0].retryPolicy.maxAttempts => must be at least 2, got 1
	// methodConfig[0].retryPolicy.retryableStatusCodes[0] => unknown status code "unavailable" (names are upper case, as grpc spells them: "UNAVAILABLE")
	// retryThrotling => unknown field (did you mean "retryThrottling"?)
}

// The same document, fixed, then its value checks.
func ExampleLoadJSON_values() {
	_, err := config.LoadJSON([]byte(`{
	  "methodConfig": [{
	    "name": [{"service": "pkg.v1.Svc"}],
	    "retryPolicy": {"maxAttempts": 1, "initialBackoff": "0.1s", "maxBackoff": "1s",
	      "backoffMultiplier": 2, "retryableStatusCodes": ["unavailable"]}
	  }],
	  "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}
	}`))
	fmt.Println(err)
	// Output:
	// config: methodConfig[0].retryPolicy.maxAttempts: must be at least 2, got 1; methodConfig[0].retryPolicy.retryableStatusCodes[0]: unknown status code "unavailable" (names are upper case, as grpc spells them: "UNAVAILABLE")
}

// Apply swaps the policies of a live suite; its breakers and budget stay.
func ExampleConfig_Apply() {
	v1, _ := config.LoadJSON([]byte(`{"methodConfig": [{"name": [{}],
	  "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
	    "retryableStatusCodes": ["UNAVAILABLE"]}}]}`))
	suite, err := v1.NewSuite()
	if err != nil {
		fmt.Println(err)
		return
	}

	v2, _ := config.LoadJSON([]byte(`{"methodConfig": [{"name": [{}],
	  "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
	    "retryableStatusCodes": ["UNAVAILABLE", "ABORTED"]}}]}`))
	if err := v2.Apply(suite); err != nil {
		fmt.Println(err)
		return
	}
	p := suite.Snapshot().Policies[0]
	fmt.Println(p.Key, p.Retry.MaxAttempts, p.Retry.RetryableCodes)

	// The budget is fixed when the suite is built.
	v3, _ := config.LoadJSON([]byte(`{"retryBudget": {"disabled": true}}`))
	fmt.Println(v3.Apply(suite))
	// Output:
	// * 5 [ABORTED UNAVAILABLE]
	// config: the document's retry budget (none) differs from the suite's (ratio 0.2, minRetriesPerSecond 1, window 10s); a suite keeps the budget it was built with, so build a new one to change it
}
