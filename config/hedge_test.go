package config_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/khive/grpc-resilience/config"
	"github.com/khive/grpc-resilience/interceptors"
)

// TestHedgingPolicy: a hedgingPolicy (gRFC A6) becomes the policy's Hedge,
// maxAttempts capped at 5 as a retryPolicy's (WithMaxAttempts raises it).
func TestHedgingPolicy(t *testing.T) {
	const doc = `{"methodConfig": [{"name": [{"service": "khive.echo.v1.EchoService"}],
	  "hedgingPolicy": {"maxAttempts": 7, "hedgingDelay": "0.015s", "nonFatalStatusCodes": ["UNAVAILABLE", 10]}}]}`
	c, err := config.LoadJSON([]byte(doc))
	require.NoError(t, err)
	p := c.Policies["/khive.echo.v1.EchoService/*"]
	assert.Equal(t, interceptors.HedgePolicy{MaxAttempts: 5, Delay: 15 * time.Millisecond,
		NonFatalCodes: []codes.Code{codes.Unavailable, codes.Aborted}}, p.Hedge)
	assert.Equal(t, 1, p.Retry.MaxAttempts)
	assert.Empty(t, c.Ignored)
	_, err = c.NewSuite()
	require.NoError(t, err)

	c, err = config.Load([]byte(doc), config.JSON, config.WithMaxAttempts(6))
	require.NoError(t, err)
	assert.Equal(t, 6, c.Policies["/khive.echo.v1.EchoService/*"].Hedge.MaxAttempts)
}

func TestHedgingPolicyErrors(t *testing.T) {
	for name, tc := range map[string]struct{ policy, want string }{
		"both":     {`"retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14]}, "hedgingPolicy": {"maxAttempts": 2}`, "methodConfig[0].hedgingPolicy: a methodConfig has a retryPolicy or a hedgingPolicy, not both (gRFC A6)"},
		"one":      {`"hedgingPolicy": {"maxAttempts": 1}`, "methodConfig[0].hedgingPolicy.maxAttempts: must be at least 2, got 1"},
		"missing":  {`"hedgingPolicy": {"hedgingDelay": "1s"}`, "methodConfig[0].hedgingPolicy.maxAttempts: required (at least 2)"},
		"delay":    {`"hedgingDelay": 1, "maxAttempts": 2`, `methodConfig[0].hedgingPolicy.hedgingDelay: must be a duration such as "0.1s", got 1`},
		"negative": {`"hedgingDelay": "-1s", "maxAttempts": 2`, "methodConfig[0].hedgingPolicy.hedgingDelay: must not be negative, got -1s"},
		"code":     {`"nonFatalStatusCodes": ["unavailable"], "maxAttempts": 2`, `methodConfig[0].hedgingPolicy.nonFatalStatusCodes[0]: unknown status code "unavailable"`},
		"unknown":  {`"hedgingDelays": "1s", "maxAttempts": 2`, "methodConfig[0].hedgingPolicy.hedgingDelays: unknown field"},
	} {
		t.Run(name, func(t *testing.T) {
			policy := tc.policy
			if name != "both" && name != "one" && name != "missing" {
				policy = `"hedgingPolicy": {` + policy + `}`
			}
			_, err := config.LoadJSON([]byte(`{"methodConfig": [{"name": [{}], ` + policy + `}]}`))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}
