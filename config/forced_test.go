package config

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
)

// TestForcedOpenMode: circuitBreaker mode "forced-open" (JSON and YAML)
// becomes Breaker.Mode breaker.ForcedOpen, with the other fields validated
// as usual; over real grpc, the suite the document builds rejects every
// call of the covered methods locally, Ready says so, and a reload to
// "closed" lets calls through again.
func TestForcedOpenMode(t *testing.T) {
	const doc = `{"methodConfig": [{"name": [{"service": "khive.echo.v1.EchoService"}],
	  "circuitBreaker": {"mode": "forced-open", "recoveryTime": "2s"}}]}`
	c, err := LoadJSON([]byte(doc))
	require.NoError(t, err)
	require.NoError(t, grpcParse(doc))
	p := c.Policies["/khive.echo.v1.EchoService/*"]
	assert.Equal(t, breaker.ForcedOpen, p.Breaker.Mode)
	assert.Equal(t, breaker.DefaultRecoveryTime*2, p.Breaker.RecoveryTime)

	y, err := LoadYAML([]byte("methodConfig:\n- name: [{service: khive.echo.v1.EchoService}]\n  circuitBreaker: {mode: forced-open, recoveryTime: 2s}\n"))
	require.NoError(t, err)
	assert.Equal(t, c.Policies, y.Policies)

	assertProblems(t, LoadJSON, breakerDoc(`"mode": "forced-open", "recoveryTime": "-1s"`),
		[]string{"methodConfig[0].circuitBreaker.recoveryTime: "})

	suite, err := c.NewSuite()
	require.NoError(t, err)
	srv := echoserver.New(1)
	cc, closeAll, err := echoserver.Bufconn(srv, suite.DialOptions()...)
	require.NoError(t, err)
	defer closeAll()
	client := echov1.NewEchoServiceClient(cc)
	ctx := context.Background()

	_, err = client.Unary(ctx, &echov1.UnaryRequest{Message: "m"})
	require.ErrorIs(t, err, breaker.ErrOpen)
	assert.Equal(t, codes.Unavailable, status.Code(err))
	assert.Zero(t, srv.Calls("Unary"))
	assert.True(t, errors.Is(suite.Ready(), interceptors.ErrNotReady))
	assert.Equal(t, "forced-open", suite.Snapshot().Policies[0].Breaker.Mode)

	closed, err := LoadJSON([]byte(`{"methodConfig": [{"name": [{"service": "khive.echo.v1.EchoService"}], "circuitBreaker": {"mode": "closed"}}]}`))
	require.NoError(t, err)
	require.NoError(t, closed.Apply(suite))
	_, err = client.Unary(ctx, &echov1.UnaryRequest{Message: "m"})
	require.NoError(t, err)
	require.NoError(t, suite.Ready())
}
