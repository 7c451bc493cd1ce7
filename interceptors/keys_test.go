package interceptors_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/retry"
)

// unregisteredKeys are well-formed keys the proto registry does not know
// (the echo service is registered by its generated code).
var unregisteredKeys = map[string]interceptors.Policy{
	"/no.such.Service/*":                  {},
	"/khive.echo.v1.EchoService/NoMethod": {},
	"/khive.echo.v1.EchoService/Unary":    {},
	echoService:                           {},
	"*":                                   {},
}

// TestUnregisteredKeysWarn: New warns once per key whose service or method
// the proto registry does not know, in key order, and accepts them.
func TestUnregisteredKeysWarn(t *testing.T) {
	var mu sync.Mutex
	var got []string
	l := logging.LoggerFunc(func(_ context.Context, lvl logging.Level, _ string, fields ...any) {
		mu.Lock()
		defer mu.Unlock()
		for i := 0; i+1 < len(fields); i += 2 {
			if fields[i] == "policy.key" && lvl == logging.LevelWarn {
				got = append(got, fields[i+1].(string))
			}
		}
	})
	_, err := interceptors.New(unregisteredKeys, interceptors.WithLogger(l))
	require.NoError(t, err)
	assert.Equal(t, []string{"/khive.echo.v1.EchoService/NoMethod", "/no.such.Service/*"}, got)
}

// TestStrictKeys: with WithStrictKeys the same keys are errors, reported
// with every other problem, sorted by key; Update is strict too.
func TestStrictKeys(t *testing.T) {
	policies := map[string]interceptors.Policy{
		"/a.Unknown/*": {Retry: retry.Policy{MaxAttempts: -1}},
		echoService:    {},
	}
	for k, p := range unregisteredKeys {
		policies[k] = p
	}
	_, err := interceptors.New(policies, interceptors.WithStrictKeys())
	require.Error(t, err)
	assert.Equal(t, strings.Join([]string{
		`interceptors: policy "/a.Unknown/*": service "a.Unknown" is not in the proto registry`,
		`interceptors: policy "/a.Unknown/*": Retry.MaxAttempts: must be at least 1, got -1`,
		`interceptors: policy "/khive.echo.v1.EchoService/NoMethod": method "NoMethod" is not in service "khive.echo.v1.EchoService" of the proto registry`,
		`interceptors: policy "/no.such.Service/*": service "no.such.Service" is not in the proto registry`,
	}, "\n"), err.Error())

	s, err := interceptors.New(map[string]interceptors.Policy{echoService: {}}, interceptors.WithStrictKeys())
	require.NoError(t, err)
	require.ErrorContains(t, s.Update(map[string]interceptors.Policy{"/no.such.Service/*": {}}), "not in the proto registry")
}

// TestKeysWithSpaces: a key with any space, ASCII or not, is an error.
func TestKeysWithSpaces(t *testing.T) {
	for _, key := range []string{" /khive.echo.v1.EchoService/*", "/khive.echo.v1.EchoService/Unary ", "/khive.echo.v1.EchoService/\u00a0Unary", "/khive.echo.v1.Echo\u2003Service/*"} {
		_, err := interceptors.New(map[string]interceptors.Policy{key: {}})
		require.ErrorContains(t, err, "key has a space", "%q", key)
	}
}
