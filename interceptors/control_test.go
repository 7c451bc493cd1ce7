package interceptors_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/retry"
)

// tripPolicy opens after 3 failed attempts, for 10s, without retries.
func tripPolicy() interceptors.Policy {
	return interceptors.Policy{
		Retry:   retry.Policy{MaxAttempts: 1},
		Breaker: breaker.Config{ConsecutiveFailures: 3, RecoveryTime: 10 * time.Second, RecoveryJitter: -1, ThrottleK: -1},
	}
}

// TestSetModeControlsTheBreaker: SetMode isolates, resets, disables and
// switches to metrics-only the breaker of a method over real grpc; each
// change is seen by calls at once, reported to the hooks and kept by
// StateChanges; an unknown breaker or mode is an error.
func TestSetModeControlsTheBreaker(t *testing.T) {
	e := newEnv(t, map[string]interceptors.Policy{echoService: tripPolicy()})
	ctx := context.Background()
	_, err := e.unary(ctx, nil)
	require.NoError(t, err)

	require.NoError(t, e.suite.SetMode(unaryMethod, "", breaker.ForcedOpen))
	_, err = e.unary(ctx, nil)
	require.ErrorIs(t, err, breaker.ErrOpen)
	assert.Equal(t, codes.Unavailable, status.Code(err))
	calls := e.srv.Calls("Unary")

	require.NoError(t, e.suite.SetMode(unaryMethod, "passthrough:///bufnet", breaker.Closed))
	_, err = e.unary(ctx, nil)
	require.NoError(t, err)
	assert.Equal(t, calls+1, e.srv.Calls("Unary"))

	require.NoError(t, e.suite.SetMode(unaryMethod, "", breaker.Disabled))
	for range 5 {
		_, err = e.unary(ctx, fault(codes.Unavailable))
		require.Equal(t, codes.Unavailable, status.Code(err))
		require.NotErrorIs(t, err, breaker.ErrOpen) // disabled: never opens
	}
	require.NoError(t, e.suite.SetMode(unaryMethod, "", breaker.MetricsOnly))
	for range 5 {
		_, err = e.unary(ctx, fault(codes.Unavailable))
		require.NotErrorIs(t, err, breaker.ErrOpen)
	}
	m, ok := rlMethod(e.suite.Snapshot(), unaryMethod)
	require.True(t, ok)
	assert.Equal(t, "metrics-only", m.State)
	assert.NotZero(t, m.ShadowTrips)
	require.NotNil(t, m.Since)

	want := []string{
		unaryMethod + ": closed -> forced-open",
		unaryMethod + ": forced-open -> closed",
		unaryMethod + ": closed -> disabled",
		unaryMethod + ": disabled -> metrics-only",
	}
	assert.Equal(t, want, e.transitionLog())
	var got []string
	for _, c := range e.suite.StateChanges() {
		assert.Equal(t, "passthrough:///bufnet", c.Target)
		assert.False(t, c.Time.IsZero())
		got = append(got, c.Method+": "+c.From+" -> "+c.To)
	}
	assert.Equal(t, want, got)

	err = e.suite.SetMode("/khive.echo.v1.EchoService/Nope", "", breaker.ForcedOpen)
	require.ErrorIs(t, err, interceptors.ErrUnknownBreaker)
	assert.Contains(t, err.Error(), `"/khive.echo.v1.EchoService/Nope"`)
	err = e.suite.SetMode(unaryMethod, "dns:///elsewhere", breaker.ForcedOpen)
	require.ErrorIs(t, err, interceptors.ErrUnknownBreaker)
	assert.Contains(t, err.Error(), `on target "dns:///elsewhere"`)
	err = e.suite.SetMode(unaryMethod, "", breaker.Open)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `got "open"`)
}

// TestReady: nil while the breakers are closed (or half-open), an error
// naming each open or forced-open breaker otherwise; methods restrict the
// check, and a method never called is ready.
func TestReady(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, map[string]interceptors.Policy{echoService: tripPolicy()})
		ctx := context.Background()
		require.NoError(t, e.suite.Ready())
		require.NoError(t, e.suite.Ready(unaryMethod))

		for range 3 {
			_, _ = e.unary(ctx, fault(codes.Unavailable))
		}
		err := e.suite.Ready()
		require.ErrorIs(t, err, interceptors.ErrNotReady)
		assert.Equal(t, `interceptors: not ready: "`+unaryMethod+`" on "passthrough:///bufnet" is open`, err.Error())
		require.ErrorIs(t, e.suite.Ready(unaryMethod, "/khive.echo.v1.EchoService/ServerStream"), interceptors.ErrNotReady)
		require.NoError(t, e.suite.Ready("/khive.echo.v1.EchoService/ServerStream"))

		time.Sleep(10 * time.Second) // the open period ends: half-open admits a probe
		synctest.Wait()
		m, _ := rlMethod(e.suite.Snapshot(), unaryMethod)
		require.Equal(t, "half-open", m.State)
		require.NoError(t, e.suite.Ready())

		require.NoError(t, e.suite.SetMode(unaryMethod, "", breaker.ForcedOpen))
		err = e.suite.Ready(unaryMethod)
		require.ErrorIs(t, err, interceptors.ErrNotReady)
		assert.Contains(t, err.Error(), "is forced-open")
	})
}

// TestForcedOpenPolicy: a policy with Breaker.Mode ForcedOpen starts each of
// its breakers forced open, without a state change, and Snapshot shows the
// mode "forced-open"; an Update that drops the forced mode closes them, and
// one that brings it back isolates them again.
func TestForcedOpenPolicy(t *testing.T) {
	forced := tripPolicy()
	forced.Breaker.Mode = breaker.ForcedOpen
	e := newEnv(t, map[string]interceptors.Policy{echoService: forced})
	ctx := context.Background()

	_, err := e.unary(ctx, nil)
	require.ErrorIs(t, err, breaker.ErrOpen)
	assert.Zero(t, e.srv.Calls("Unary"))
	snap := e.suite.Snapshot()
	require.Len(t, snap.Policies, 1)
	assert.Equal(t, "forced-open", snap.Policies[0].Breaker.Mode)
	m, _ := rlMethod(snap, unaryMethod)
	assert.Equal(t, "forced-open", m.State)
	assert.Empty(t, e.transitionLog())
	require.ErrorIs(t, e.suite.Ready(), interceptors.ErrNotReady)

	require.NoError(t, e.suite.Update(map[string]interceptors.Policy{echoService: tripPolicy()}))
	_, err = e.unary(ctx, nil)
	require.NoError(t, err)
	require.NoError(t, e.suite.Update(map[string]interceptors.Policy{echoService: forced}))
	_, err = e.unary(ctx, nil)
	require.ErrorIs(t, err, breaker.ErrOpen)
	// Still forced: an Update that keeps the mode keeps a manual reset.
	require.NoError(t, e.suite.SetMode(unaryMethod, "", breaker.Closed))
	require.NoError(t, e.suite.Update(map[string]interceptors.Policy{echoService: forced}))
	_, err = e.unary(ctx, nil)
	require.NoError(t, err)
	assert.Equal(t, []string{
		unaryMethod + ": forced-open -> closed",
		unaryMethod + ": closed -> forced-open",
		unaryMethod + ": forced-open -> closed",
	}, e.transitionLog())

	// A disabled policy that was forced open: its breakers become disabled.
	disabled := tripPolicy()
	disabled.Breaker.Mode = breaker.Disabled
	require.NoError(t, e.suite.SetMode(unaryMethod, "", breaker.ForcedOpen))
	require.NoError(t, e.suite.Update(map[string]interceptors.Policy{echoService: forced}))
	require.NoError(t, e.suite.Update(map[string]interceptors.Policy{echoService: disabled}))
	m, _ = rlMethod(e.suite.Snapshot(), unaryMethod)
	assert.Equal(t, "disabled", m.State)
}

// TestSnapshotPassThroughAndRetryAfter: Snapshot lists the methods called
// without a policy (the health check, which "*" never covers) and the time
// left of an open breaker.
func TestSnapshotPassThroughAndRetryAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, map[string]interceptors.Policy{"*": tripPolicy()})
		ctx := context.Background()
		_, err := e.health.Check(ctx, &healthpb.HealthCheckRequest{})
		require.NoError(t, err)
		for range 3 {
			_, _ = e.unary(ctx, fault(codes.Unavailable))
		}
		m, _ := rlMethod(e.suite.Snapshot(), unaryMethod)
		require.Equal(t, "open", m.State)
		assert.Equal(t, "10s", m.RetryAfter)

		time.Sleep(4 * time.Second)
		_, err = e.unary(ctx, nil)
		require.ErrorIs(t, err, breaker.ErrOpen)
		time.Sleep(time.Second)
		snap := e.suite.Snapshot()
		m, _ = rlMethod(snap, unaryMethod)
		assert.Equal(t, "5s", m.RetryAfter)
		require.NotNil(t, m.Since)
		assert.Equal(t, 5*time.Second, time.Since(*m.Since))
		assert.Equal(t, []interceptors.SnapshotPassThrough{{Method: healthCheck, Target: "passthrough:///bufnet"}}, snap.PassThrough)
		_, ok := rlMethod(snap, healthCheck)
		assert.False(t, ok)
	})
}

// TestStateChangesKeepsTheLatest: the ring keeps the latest RecentChanges
// changes, oldest first.
func TestStateChangesKeepsTheLatest(t *testing.T) {
	e := newEnv(t, map[string]interceptors.Policy{echoService: tripPolicy()})
	_, err := e.unary(context.Background(), nil)
	require.NoError(t, err)
	n := interceptors.RecentChanges + 7
	for i := range n {
		mode := breaker.ForcedOpen
		if i%2 == 1 {
			mode = breaker.Closed
		}
		require.NoError(t, e.suite.SetMode(unaryMethod, "", mode))
	}
	got := e.suite.StateChanges()
	require.Len(t, got, interceptors.RecentChanges)
	// Change i (0-based) goes to forced-open when i is even; the last one
	// kept is change n-1.
	assert.Equal(t, "forced-open", got[len(got)-1].To) // n-1 = 56 is even
	assert.Equal(t, "closed", got[0].To)               // change 7 (odd) is the first kept
	for i := 1; i < len(got); i++ {
		assert.Equal(t, got[i-1].To, got[i].From)
		assert.False(t, got[i].Time.Before(got[i-1].Time))
	}
	require.False(t, errors.Is(e.suite.Ready("/other/Method"), interceptors.ErrNotReady))
}
