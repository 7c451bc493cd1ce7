package interceptors_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/proto/khive/echo/v1"
	"github.com/khive/grpc-resilience/retry"
)

// Tests of Suite.Update and Suite.Snapshot. Their helpers are prefixed rl.
// Timing: the tests that depend on time run in testing/synctest bubbles; the
// concurrent-load test runs on the real clock without sleeping and asserts
// counts only.

const (
	rlUnary  = "/khive.echo.v1.EchoService/Unary"
	rlStream = "/khive.echo.v1.EchoService/ServerStream"
	rlSvc    = "/khive.echo.v1.EchoService/*"
)

type rlEnv struct {
	srv    *echoserver.Server
	suite  *interceptors.Suite
	client echov1.EchoServiceClient
}

// newRLEnv serves the echo server over bufconn through a suite built from
// policies. Inside a synctest bubble, call it from the bubble.
func newRLEnv(t *testing.T, policies map[string]interceptors.Policy, opts ...interceptors.Option) *rlEnv {
	t.Helper()
	suite, err := interceptors.New(policies, opts...)
	require.NoError(t, err)
	e := &rlEnv{srv: echoserver.New(1), suite: suite}
	lis := bufconn.Listen(1 << 20)
	stop := echoserver.Serve(e.srv, lis)
	cc, err := grpc.NewClient("passthrough:///bufnet", append([]grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}, suite.DialOptions()...)...)
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = cc.Close()
		stop()
	})
	e.client = echov1.NewEchoServiceClient(cc)
	return e
}

func (e *rlEnv) unary(ctx context.Context, f *echov1.Fault) error {
	_, err := e.client.Unary(ctx, &echov1.UnaryRequest{Message: "m", Fault: f})
	return err
}

func (e *rlEnv) serverStream(ctx context.Context, f *echov1.Fault) error {
	st, err := e.client.ServerStream(ctx, &echov1.ServerStreamRequest{Message: "m", Count: 1, Fault: f})
	if err != nil {
		return err
	}
	for {
		if _, err := st.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

func rlDown() *echov1.Fault { return &echov1.Fault{Code: uint32(codes.Unavailable)} }

func rlMethod(s interceptors.Snapshot, method string) (interceptors.SnapshotMethod, bool) {
	for _, m := range s.Methods {
		if m.Method == method {
			return m, true
		}
	}
	return interceptors.SnapshotMethod{}, false
}

func rlCircuitOpen(t *testing.T, err error) {
	t.Helper()
	require.Error(t, err)
	assert.True(t, errors.Is(err, breaker.ErrOpen), "want a local rejection, got %v", err)
}

// TestUpdateKeepsBreakersWhoseSettingsDidNotChange: an open breaker stays
// open across an Update that changes only retry settings (or restates the
// breaker defaults explicitly), and starts fresh where the breaker settings
// changed.
func TestUpdateKeepsBreakersWhoseSettingsDidNotChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		trip := breaker.Config{ConsecutiveFailures: 3, RecoveryTime: time.Minute, MaxRecoveryTime: time.Minute}
		e := newRLEnv(t, map[string]interceptors.Policy{
			rlUnary: {Retry: retry.Policy{MaxAttempts: 1}, Breaker: trip},
			rlSvc:   {Retry: retry.Policy{MaxAttempts: 1}, Breaker: trip},
			"*":     {},
		}, interceptors.WithoutBudget())
		ctx := t.Context()
		for range 3 {
			require.Error(t, e.unary(ctx, rlDown()))
			require.Error(t, e.serverStream(ctx, rlDown()))
		}
		rlCircuitOpen(t, e.unary(ctx, nil))
		rlCircuitOpen(t, e.serverStream(ctx, nil))
		before := e.suite.Snapshot()

		same := trip
		same.HalfOpenMaxCalls = 1 // the default, written out: the same settings
		changed := trip
		changed.ConsecutiveFailures = 4
		require.NoError(t, e.suite.Update(map[string]interceptors.Policy{
			rlUnary: {Retry: retry.Policy{MaxAttempts: 2}, Breaker: same}, // retry changed, breaker not
			rlSvc:   {Retry: retry.Policy{MaxAttempts: 1}, Breaker: changed},
		}))

		// Unary: still open, rejected locally; the server sees nothing.
		calls := e.srv.Calls(echoserver.Unary)
		rlCircuitOpen(t, e.unary(ctx, nil))
		assert.Equal(t, calls, e.srv.Calls(echoserver.Unary))
		after := e.suite.Snapshot()
		mb, _ := rlMethod(before, rlUnary)
		ma, ok := rlMethod(after, rlUnary)
		require.True(t, ok)
		assert.Equal(t, "open", ma.State)
		assert.Equal(t, mb.Failures, ma.Failures)
		assert.Equal(t, mb.Rejections+1, ma.Rejections)
		require.Len(t, after.Policies, 2) // "*" was dropped
		assert.Equal(t, rlUnary, after.Policies[1].Key)
		assert.Equal(t, 2, after.Policies[1].Retry.MaxAttempts)

		// The stream's breaker settings changed: a fresh, closed breaker.
		require.NoError(t, e.serverStream(ctx, nil))
		ms, ok := rlMethod(e.suite.Snapshot(), rlStream)
		require.True(t, ok)
		assert.Equal(t, "closed", ms.State)
		assert.Equal(t, uint64(1), ms.Successes)
		assert.Equal(t, uint64(0), ms.Failures)

	})
}

// TestUpdateKeepsTheBudget: the per-target budget (here A6 tokens) is not
// reset by an Update.
func TestUpdateKeepsTheBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pol := interceptors.Policy{
			Retry:   retry.Policy{MaxAttempts: 5, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond},
			Breaker: breaker.Config{Mode: breaker.Disabled},
		}
		e := newRLEnv(t, map[string]interceptors.Policy{"*": pol}, interceptors.WithTokenBucket(10, 0.1))
		ctx := t.Context()
		// Each failed attempt takes a token; A6 stops retrying at tokens <= 5:
		// 5 attempts, tokens 10 -> 5.
		require.Error(t, e.unary(ctx, rlDown()))
		assert.Equal(t, 5, e.srv.Calls(echoserver.Unary))
		b := e.suite.Snapshot().Budget
		require.Len(t, b.Targets, 1)
		assert.Equal(t, 5.0, b.Targets[0].Balance)

		pol.Retry.MaxAttempts = 6
		require.NoError(t, e.suite.Update(map[string]interceptors.Policy{"*": pol}))
		b = e.suite.Snapshot().Budget
		assert.Equal(t, "token-bucket", b.Mode)
		assert.Equal(t, 5.0, b.Targets[0].Balance) // kept, not refilled

		// Throttled at once, as it was before the Update.
		require.Error(t, e.unary(ctx, rlDown()))
		assert.Equal(t, 6, e.srv.Calls(echoserver.Unary))
	})
}

// TestUpdateInFlightCallFinishes: a call waiting to retry across an Update
// finishes under the policy it started with; the next call uses the new one.
func TestUpdateInFlightCallFinishes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		slow := interceptors.Policy{Retry: retry.Policy{MaxAttempts: 3, InitialBackoff: time.Second, MaxBackoff: time.Second, Jitter: retry.NoJitter}}
		e := newRLEnv(t, map[string]interceptors.Policy{"*": slow})
		ctx := t.Context()
		done := make(chan error)
		go func() {
			done <- e.unary(ctx, &echov1.Fault{Code: uint32(codes.Unavailable), Key: "k", FailAttempts: 2})
		}()
		time.Sleep(500 * time.Millisecond) // the call is in its first backoff
		require.NoError(t, e.suite.Update(map[string]interceptors.Policy{"*": {Retry: retry.Policy{MaxAttempts: 1}}}))
		require.NoError(t, <-done) // 3 attempts, as its policy said
		assert.Equal(t, 3, e.srv.Attempts("k"))

		err := e.unary(ctx, &echov1.Fault{Code: uint32(codes.Unavailable), Key: "k2", FailAttempts: 2})
		assert.Equal(t, codes.Unavailable, status.Code(err)) // one attempt now
		assert.Equal(t, 1, e.srv.Attempts("k2"))
	})
}

func TestUpdateRejectsInvalidPolicies(t *testing.T) {
	e := newRLEnv(t, map[string]interceptors.Policy{rlSvc: {}})
	for _, bad := range []map[string]interceptors.Policy{
		{"echo.Echo/M": {}},
		{rlSvc: {Retry: retry.Policy{MaxAttempts: -1}}},
		{rlSvc: {Breaker: breaker.Config{FailureRate: 2}}},
		{rlSvc: {RetryableCodes: []codes.Code{codes.OK}}},
	} {
		err := e.suite.Update(bad)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "interceptors: policy")
	}
	s := e.suite.Snapshot()
	require.Len(t, s.Policies, 1)
	assert.Equal(t, rlSvc, s.Policies[0].Key)
	assert.Equal(t, 4, s.Policies[0].Retry.MaxAttempts)
	// An empty map is valid: every method passes through.
	require.NoError(t, e.suite.Update(nil))
	assert.Empty(t, e.suite.Snapshot().Policies)
	require.NoError(t, e.unary(t.Context(), nil))
	assert.Empty(t, e.suite.Snapshot().Methods)
}

// TestUpdateWithCallbackRebuilds: a key whose old or new policy has its own
// OnStateChange always gets fresh breakers (functions cannot be compared),
// whether or not the suite has state-change hooks of its own.
func TestUpdateWithCallbackRebuilds(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []interceptors.Option
	}{
		{"suite without hooks", nil},
		{"suite with hooks", []interceptors.Option{interceptors.WithOnStateChange(func(string, breaker.State, breaker.State) {})}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var changes atomic.Int32
				pol := interceptors.Policy{
					Retry:   retry.Policy{MaxAttempts: 1},
					Breaker: breaker.Config{ConsecutiveFailures: 1, OnStateChange: func(string, breaker.State, breaker.State) { changes.Add(1) }},
				}
				e := newRLEnv(t, map[string]interceptors.Policy{rlSvc: pol}, tc.opts...)
				ctx := t.Context()
				require.Error(t, e.unary(ctx, rlDown()))
				rlCircuitOpen(t, e.unary(ctx, nil))
				require.NoError(t, e.suite.Update(map[string]interceptors.Policy{rlSvc: pol}))
				require.NoError(t, e.unary(ctx, nil), "a policy with a callback gets a fresh breaker")
				assert.Equal(t, int32(1), changes.Load())

				// Dropping the callback also rebuilds: a kept breaker would
				// still be open and would keep calling the old callback.
				require.Error(t, e.unary(ctx, rlDown()))
				rlCircuitOpen(t, e.unary(ctx, nil))
				assert.Equal(t, int32(2), changes.Load())
				quiet := pol
				quiet.Breaker.OnStateChange = nil
				require.NoError(t, e.suite.Update(map[string]interceptors.Policy{rlSvc: quiet}))
				require.NoError(t, e.unary(ctx, nil), "the old policy had a callback: a fresh breaker")
				assert.Equal(t, int32(2), changes.Load())

				// Neither has one: the breaker is kept.
				require.Error(t, e.unary(ctx, rlDown()))
				rlCircuitOpen(t, e.unary(ctx, nil))
				require.NoError(t, e.suite.Update(map[string]interceptors.Policy{rlSvc: quiet}))
				rlCircuitOpen(t, e.unary(ctx, nil))
				assert.Equal(t, int32(2), changes.Load())
			})
		})
	}
}

// TestUpdateMovedMethod: a method that moves from its service's key to its
// own key gets that key's breaker, and the snapshot lists it once.
func TestUpdateMovedMethod(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		trip := interceptors.Policy{Retry: retry.Policy{MaxAttempts: 1}, Breaker: breaker.Config{ConsecutiveFailures: 1}}
		e := newRLEnv(t, map[string]interceptors.Policy{rlSvc: trip})
		ctx := t.Context()
		require.Error(t, e.unary(ctx, rlDown()))
		rlCircuitOpen(t, e.unary(ctx, nil))
		require.NoError(t, e.suite.Update(map[string]interceptors.Policy{rlSvc: trip, rlUnary: trip}))
		require.NoError(t, e.unary(ctx, nil))
		s := e.suite.Snapshot()
		require.Len(t, s.Methods, 1)
		assert.Equal(t, rlUnary, s.Methods[0].Policy)
		assert.Equal(t, "closed", s.Methods[0].State)
	})
}

// TestUpdateUnderConcurrentLoad: unary calls and server streams that need a
// retry, and a bidi stream, run while two updaters swap policies back and
// forth. The unary method's breaker settings alternate (its breaker is
// rebuilt on every swap); the service's do not (its breakers are kept). No
// call fails, the service's breakers count every outcome, and the budget is
// never reset.
func TestUpdateUnderConcurrentLoad(t *testing.T) {
	const (
		workers = 8
		calls   = 30 // unary calls and server streams, each, per worker
	)
	pol := func(streak int) interceptors.Policy {
		return interceptors.Policy{
			Retry:   retry.Policy{MaxAttempts: 3, InitialBackoff: time.Microsecond, MaxBackoff: time.Microsecond, Jitter: retry.NoJitter},
			Breaker: breaker.Config{ConsecutiveFailures: streak, MinimumCalls: -1},
		}
	}
	policies := func(i int) map[string]interceptors.Policy {
		return map[string]interceptors.Policy{rlUnary: pol(10 + i%2), rlSvc: pol(10)}
	}
	e := newRLEnv(t, policies(0), interceptors.WithTokenBucket(1000, 1))
	ctx := t.Context()

	var wg sync.WaitGroup
	var failed atomic.Int32
	var running atomic.Int32
	running.Store(workers + 1)
	for w := range workers {
		wg.Go(func() {
			defer running.Add(-1)
			for i := range calls {
				key := "w" + strconv.Itoa(w) + "-" + strconv.Itoa(i)
				f := &echov1.Fault{Code: uint32(codes.Unavailable), Key: key, FailAttempts: 1}
				if err := e.unary(ctx, f); err != nil {
					failed.Add(1)
					t.Errorf("unary %s: %v", key, err)
				}
				f = &echov1.Fault{Code: uint32(codes.Unavailable), Key: key + "s", FailAttempts: 1}
				if err := e.serverStream(ctx, f); err != nil {
					failed.Add(1)
					t.Errorf("stream %s: %v", key, err)
				}
			}
		})
	}
	wg.Go(func() { // a bidi stream open across the updates
		defer running.Add(-1)
		st, err := e.client.BidiStream(ctx)
		if err != nil {
			failed.Add(1)
			return
		}
		for i := range calls {
			if err := st.Send(&echov1.BidiStreamRequest{Message: strconv.Itoa(i)}); err != nil {
				failed.Add(1)
				return
			}
			if r, err := st.Recv(); err != nil || r.GetMessage() != strconv.Itoa(i) {
				failed.Add(1)
				return
			}
		}
		if err := st.CloseSend(); err != nil {
			failed.Add(1)
		}
		if _, err := st.Recv(); !errors.Is(err, io.EOF) {
			failed.Add(1)
		}
	})
	var updates atomic.Int32
	for u := range 2 { // two updaters at once
		wg.Go(func() {
			for i := 0; running.Load() > 0 || i < 20; i++ {
				if err := e.suite.Update(policies(i + u)); err != nil {
					t.Errorf("update: %v", err)
					return
				}
				updates.Add(1)
			}
		})
	}
	wg.Wait()

	assert.Zero(t, failed.Load())
	assert.GreaterOrEqual(t, updates.Load(), int32(40))
	// Every unary call and stream: one failed attempt, one retry.
	assert.Equal(t, 2*workers*calls, e.srv.Calls(echoserver.Unary))
	assert.Equal(t, 2*workers*calls, e.srv.Calls(echoserver.ServerStream))
	snap := e.suite.Snapshot()
	ms, ok := rlMethod(snap, rlStream)
	require.True(t, ok)
	assert.Equal(t, uint64(workers*calls), ms.Successes) // kept through every Update
	assert.Equal(t, uint64(workers*calls), ms.Failures)
	mb, ok := rlMethod(snap, "/khive.echo.v1.EchoService/BidiStream")
	require.True(t, ok)
	assert.Equal(t, uint64(1), mb.Successes)
	// The budget was never replaced: Allowed counts every retry since New.
	require.Len(t, snap.Budget.Targets, 1)
	assert.Equal(t, 1000.0, snap.Budget.Targets[0].Balance)
	assert.Equal(t, uint64(2*workers*calls), snap.Budget.Targets[0].Allowed)
}

// TestSnapshotJSON pins the JSON form of a snapshot.
func TestSnapshotJSON(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newRLEnv(t, map[string]interceptors.Policy{
			rlUnary: {
				Retry: retry.Policy{MaxAttempts: 3, InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second,
					Multiplier: 2, Jitter: retry.ProportionalJitter, AttemptTimeout: 1500 * time.Microsecond},
				RetryableCodes: []codes.Code{codes.Unavailable, codes.Canceled},
			},
			rlSvc: {
				Retry:        retry.Policy{MaxAttempts: 1},
				Breaker:      breaker.Config{ConsecutiveFailures: -1, MinimumCalls: -1, RecoveryJitter: -1, Mode: breaker.MetricsOnly},
				FailureCodes: []codes.Code{codes.Internal},
				Fallback:     func(context.Context, string, any, any, error) error { return nil },
			},
		}, interceptors.WithTokenBucket(10, 0.5))
		ctx := t.Context()
		require.NoError(t, e.unary(ctx, &echov1.Fault{Code: uint32(codes.Unavailable), Key: "k", FailAttempts: 1}))
		require.NoError(t, e.serverStream(ctx, nil))

		got, err := json.MarshalIndent(e.suite.Snapshot(), "", "  ")
		require.NoError(t, err)
		assert.JSONEq(t, `{
		  "policies": [
		    {
		      "key": "/khive.echo.v1.EchoService/*",
		      "retryPolicy": {"maxAttempts": 1, "initialBackoff": "0.025s", "maxBackoff": "5s", "backoffMultiplier": 2,
		        "retryableStatusCodes": ["UNAVAILABLE"], "jitter": "full", "minAttemptTime": "0.001s", "maxPushback": "30s"},
		      "circuitBreaker": {"mode": "metrics-only", "consecutiveFailures": 0, "failureRate": 0.5, "minimumCalls": 0,
		        "window": "10s", "recoveryTime": "5s", "maxRecoveryTime": "60s", "recoveryJitter": 0, "halfOpenMaxCalls": 1,
		        "failureStatusCodes": ["INTERNAL"]},
		      "fallback": true
		    },
		    {
		      "key": "/khive.echo.v1.EchoService/Unary",
		      "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.100s", "maxBackoff": "1s", "backoffMultiplier": 2,
		        "retryableStatusCodes": ["CANCELLED", "UNAVAILABLE"], "jitter": "proportional", "jitterFactor": 0.2,
		        "perAttemptTimeout": "0.001500s", "minAttemptTime": "0.001s", "maxPushback": "30s"},
		      "circuitBreaker": {"mode": "closed", "consecutiveFailures": 12, "failureRate": 0.5, "minimumCalls": 20,
		        "window": "10s", "recoveryTime": "5s", "maxRecoveryTime": "60s", "recoveryJitter": 0.2, "halfOpenMaxCalls": 1,
		        "failureStatusCodes": ["UNKNOWN", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"]},
		      "fallback": false
		    }
		  ],
		  "methods": [
		    {"method": "/khive.echo.v1.EchoService/ServerStream", "policy": "/khive.echo.v1.EchoService/*", "state": "metrics-only",
		      "successes": 1, "failures": 0, "ignored": 0, "rejections": 0, "transitions": 0,
		      "consecutiveFailures": 0, "windowCalls": 1, "windowFailures": 0, "shadowTrips": 0},
		    {"method": "/khive.echo.v1.EchoService/Unary", "policy": "/khive.echo.v1.EchoService/Unary", "state": "closed",
		      "successes": 1, "failures": 1, "ignored": 0, "rejections": 0, "transitions": 0,
		      "consecutiveFailures": 0, "windowCalls": 2, "windowFailures": 1, "shadowTrips": 0}
		  ],
		  "budget": {"mode": "token-bucket", "maxTokens": 10, "tokenRatio": 0.5,
		    "targets": [{"target": "passthrough:///bufnet", "balance": 10, "reserve": 0, "allowed": 1, "refused": 0}]}
		}`, string(got))
	})
}

func TestSnapshotBudgetModes(t *testing.T) {
	s, err := interceptors.New(nil)
	require.NoError(t, err)
	b := s.Snapshot().Budget
	assert.Equal(t, interceptors.SnapshotBudget{Mode: "ratio", Ratio: 0.2, MinRetriesPerSecond: 1, Window: "10s", Targets: []interceptors.SnapshotTarget{}}, b)

	s, err = interceptors.New(nil, interceptors.WithBudget(retry.BudgetConfig{Ratio: 0.5, MinRetriesPerSecond: 3, Window: 2500 * time.Millisecond}))
	require.NoError(t, err)
	assert.Equal(t, interceptors.SnapshotBudget{Mode: "ratio", Ratio: 0.5, MinRetriesPerSecond: 3, Window: "2.500s", Targets: []interceptors.SnapshotTarget{}}, s.Snapshot().Budget)

	s, err = interceptors.New(nil, interceptors.WithoutBudget())
	require.NoError(t, err)
	got, err := json.Marshal(s.Snapshot())
	require.NoError(t, err)
	assert.JSONEq(t, `{"policies": [], "methods": [], "budget": {"mode": "none", "targets": []}}`, string(got))
}
