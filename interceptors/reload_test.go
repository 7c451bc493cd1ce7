package interceptors_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"slices"
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
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
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

	mu     sync.Mutex
	events []string // "name: from -> to", from WithOnStateChange
}

// newRLEnv serves the echo server over bufconn through a suite built from
// policies (its state changes recorded in events). Inside a synctest bubble,
// call it from the bubble.
func newRLEnv(t *testing.T, policies map[string]interceptors.Policy, opts ...interceptors.Option) *rlEnv {
	t.Helper()
	e := &rlEnv{srv: echoserver.New(1)}
	opts = append([]interceptors.Option{interceptors.WithOnStateChange(e.record)}, opts...)
	suite, err := interceptors.New(policies, opts...)
	require.NoError(t, err)
	e.suite = suite
	e.client = echov1.NewEchoServiceClient(rlConn(t, suite, e.srv, "passthrough:///bufnet"))
	return e
}

// rlConn serves srv over a new bufconn listener and returns a connection to
// it through suite, named target; the test's cleanup closes both.
func rlConn(t *testing.T, suite *interceptors.Suite, srv *echoserver.Server, target string) *grpc.ClientConn {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	stop := echoserver.Serve(srv, lis)
	cc, err := grpc.NewClient(target, append([]grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}, suite.DialOptions()...)...)
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = cc.Close()
		stop()
	})
	return cc
}

func (e *rlEnv) record(name string, from, to breaker.State) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.events = append(e.events, name+": "+from.String()+" -> "+to.String())
}

func (e *rlEnv) eventLog() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.events)
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

// TestUpdateDuringOutageKeepsTheBreakerOpen (issue 7, must-show 6): an
// Update that changes every breaker setting of an open breaker keeps it open
// for the rest of its open period, with its counts: the next calls are
// rejected locally and the server sees no attempt. The new settings apply
// from then on (two probes to close), and each transition is reported once.
func TestUpdateDuringOutageKeepsTheBreakerOpen(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		trip := breaker.Config{ConsecutiveFailures: 3, RecoveryTime: 10 * time.Second, MaxRecoveryTime: time.Minute, RecoveryJitter: -1}
		e := newRLEnv(t, map[string]interceptors.Policy{rlSvc: {Retry: retry.Policy{MaxAttempts: 1}, Breaker: trip}},
			interceptors.WithoutBudget())
		ctx := t.Context()
		e.srv.SetDown(true)
		for range 3 {
			require.Error(t, e.unary(ctx, nil))
		}
		rlCircuitOpen(t, e.unary(ctx, nil))
		require.Equal(t, 3, e.srv.Calls(echoserver.Unary))
		before, ok := rlMethod(e.suite.Snapshot(), rlUnary)
		require.True(t, ok)
		require.Equal(t, "open", before.State)

		time.Sleep(4 * time.Second)
		changed := breaker.Config{ConsecutiveFailures: 5, ThrottleK: 3, RecoveryTime: 2 * time.Second,
			MaxRecoveryTime: 30 * time.Second, RecoveryJitter: -1, HalfOpenMaxCalls: 2, HalfOpenMaxWait: -1}
		require.NoError(t, e.suite.Update(map[string]interceptors.Policy{
			rlSvc: {Retry: retry.Policy{MaxAttempts: 2}, Breaker: changed, FailureCodes: []codes.Code{codes.Unavailable}},
		}))

		rlCircuitOpen(t, e.unary(ctx, nil))
		assert.Equal(t, 3, e.srv.Calls(echoserver.Unary), "the server sees no attempt")
		snap := e.suite.Snapshot()
		after, ok := rlMethod(snap, rlUnary)
		require.True(t, ok)
		assert.Equal(t, "open", after.State)
		assert.Equal(t, before.Failures, after.Failures)
		assert.Equal(t, before.Transitions, after.Transitions)
		assert.Equal(t, before.Rejections+1, after.Rejections)
		require.Len(t, snap.Policies, 1)
		assert.Equal(t, 5, snap.Policies[0].Breaker.ConsecutiveFailures)
		assert.Equal(t, 2, snap.Policies[0].Breaker.HalfOpenMaxCalls)

		// The open period it started with (10s) runs to its end: the new
		// RecoveryTime (2s) does not shorten it.
		time.Sleep(5900 * time.Millisecond)
		rlCircuitOpen(t, e.unary(ctx, nil))
		assert.Equal(t, 3, e.srv.Calls(echoserver.Unary))

		e.srv.SetDown(false)
		time.Sleep(200 * time.Millisecond)
		require.NoError(t, e.unary(ctx, nil)) // first probe
		require.NoError(t, e.unary(ctx, nil)) // second probe: closes (HalfOpenMaxCalls 2)
		m, _ := rlMethod(e.suite.Snapshot(), rlUnary)
		assert.Equal(t, "closed", m.State)
		assert.Equal(t, []string{
			rlUnary + ": closed -> open",
			rlUnary + ": open -> half-open",
			rlUnary + ": half-open -> closed",
		}, e.eventLog())
	})
}

// TestRetiredBreakerStaysSilent (issue 7): an open breaker that an Update
// drops (no policy covers its method any more) never reports again, though
// its open period ends; its method passes through and leaves Snapshot.
func TestRetiredBreakerStaysSilent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		trip := breaker.Config{ConsecutiveFailures: 1, RecoveryTime: 100 * time.Millisecond, RecoveryJitter: -1}
		var own atomic.Int32
		withOwn := trip
		withOwn.OnStateChange = func(string, breaker.State, breaker.State) { own.Add(1) }
		e := newRLEnv(t, map[string]interceptors.Policy{
			rlUnary:  {Retry: retry.Policy{MaxAttempts: 1}, Breaker: trip},
			rlStream: {Retry: retry.Policy{MaxAttempts: 1}, Breaker: withOwn},
		})
		ctx := t.Context()
		e.srv.SetDown(true)
		require.Error(t, e.unary(ctx, nil))
		require.Error(t, e.serverStream(ctx, nil))
		rlCircuitOpen(t, e.unary(ctx, nil))
		rlCircuitOpen(t, e.serverStream(ctx, nil))
		require.Len(t, e.eventLog(), 2)
		require.Equal(t, int32(1), own.Load())

		require.NoError(t, e.suite.Update(map[string]interceptors.Policy{"/other.v1.Svc/*": {}}))
		time.Sleep(time.Second) // both open periods end
		synctest.Wait()
		assert.Len(t, e.eventLog(), 2, "a dropped breaker reports nothing: %v", e.eventLog())
		assert.Equal(t, int32(1), own.Load())
		assert.Empty(t, e.suite.Snapshot().Methods)

		calls := e.srv.Calls(echoserver.Unary)
		err := e.unary(ctx, nil)
		assert.Equal(t, codes.Unavailable, status.Code(err))
		assert.False(t, errors.Is(err, breaker.ErrOpen), "passes through to the server")
		assert.Equal(t, calls+1, e.srv.Calls(echoserver.Unary))
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

// TestUpdateSwitchesCallbacks: a kept breaker calls the OnStateChange of its
// new policy from the Update on, and never the old one's.
func TestUpdateSwitchesCallbacks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var oldCalls, newCalls atomic.Int32
		pol := func(n *atomic.Int32) interceptors.Policy {
			return interceptors.Policy{
				Retry: retry.Policy{MaxAttempts: 1},
				Breaker: breaker.Config{ConsecutiveFailures: 1, RecoveryTime: time.Second, RecoveryJitter: -1,
					OnStateChange: func(string, breaker.State, breaker.State) { n.Add(1) }},
			}
		}
		e := newRLEnv(t, map[string]interceptors.Policy{rlSvc: pol(&oldCalls)})
		ctx := t.Context()
		require.Error(t, e.unary(ctx, rlDown()))
		rlCircuitOpen(t, e.unary(ctx, nil))
		require.Equal(t, int32(1), oldCalls.Load())

		require.NoError(t, e.suite.Update(map[string]interceptors.Policy{rlSvc: pol(&newCalls)}))
		rlCircuitOpen(t, e.unary(ctx, nil)) // kept open
		time.Sleep(1100 * time.Millisecond)
		require.NoError(t, e.unary(ctx, nil)) // the probe closes it
		assert.Equal(t, int32(1), oldCalls.Load())
		assert.Equal(t, int32(2), newCalls.Load(), "open -> half-open -> closed")
		assert.Equal(t, []string{
			rlUnary + ": closed -> open",
			rlUnary + ": open -> half-open",
			rlUnary + ": half-open -> closed",
		}, e.eventLog(), "the suite's hook once per transition")
	})
}

// TestUpdateMovedMethodKeepsItsBreaker: a method that moves from its
// service's key to its own key keeps its breaker (open), now under its own
// key, and the snapshot lists it once.
func TestUpdateMovedMethodKeepsItsBreaker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		trip := interceptors.Policy{Retry: retry.Policy{MaxAttempts: 1}, Breaker: breaker.Config{ConsecutiveFailures: 1, RecoveryTime: time.Minute}}
		e := newRLEnv(t, map[string]interceptors.Policy{rlSvc: trip})
		ctx := t.Context()
		require.Error(t, e.unary(ctx, rlDown()))
		rlCircuitOpen(t, e.unary(ctx, nil))
		require.NoError(t, e.suite.Update(map[string]interceptors.Policy{rlSvc: trip, rlUnary: trip}))
		rlCircuitOpen(t, e.unary(ctx, nil))
		s := e.suite.Snapshot()
		require.Len(t, s.Methods, 1)
		assert.Equal(t, rlUnary, s.Methods[0].Method)
		assert.Equal(t, "passthrough:///bufnet", s.Methods[0].Target)
		assert.Equal(t, rlUnary, s.Methods[0].Policy)
		assert.Equal(t, "open", s.Methods[0].State)
	})
}

// TestUpdateUnderConcurrentLoad: unary calls and server streams that need a
// retry, and a bidi stream, run while two updaters swap policies back and
// forth. The unary method's breaker settings alternate (its breaker is
// reconfigured on every swap); the service's do not. No call fails, every
// breaker counts every outcome, and the budget is never reset.
func TestUpdateUnderConcurrentLoad(t *testing.T) {
	const (
		workers = 8
		calls   = 30 // unary calls and server streams, each, per worker
	)
	pol := func(streak int) interceptors.Policy {
		return interceptors.Policy{
			Retry:   retry.Policy{MaxAttempts: 3, InitialBackoff: time.Microsecond, MaxBackoff: time.Microsecond, Jitter: retry.NoJitter},
			Breaker: breaker.Config{ConsecutiveFailures: streak, ThrottleK: -1},
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
	for _, m := range []string{rlUnary, rlStream} {
		ms, ok := rlMethod(snap, m)
		require.True(t, ok)
		assert.Equal(t, uint64(workers*calls), ms.Successes, m) // kept through every Update
		assert.Equal(t, uint64(workers*calls), ms.Failures, m)
	}
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
				Retry: retry.Policy{MaxAttempts: 1},
				Breaker: breaker.Config{ConsecutiveFailures: -1, ThrottleK: -1, FailureRate: 0.5, MinimumCalls: 5,
					RecoveryJitter: -1, HalfOpenMaxWait: -1, Mode: breaker.MetricsOnly},
				FailureCodes: []codes.Code{codes.Internal},
				Fallback:     func(context.Context, string, any, any, error) error { return nil },
			},
		}, interceptors.WithTokenBucket(10, 0.5), interceptors.WithMaxBreakers(100))
		ctx := t.Context()
		require.NoError(t, e.unary(ctx, nil))
		require.NoError(t, e.serverStream(ctx, nil))

		got, err := json.MarshalIndent(e.suite.Snapshot(), "", "  ")
		require.NoError(t, err)
		assert.JSONEq(t, `{
		  "policies": [
		    {
		      "key": "/khive.echo.v1.EchoService/*",
		      "retryPolicy": {"maxAttempts": 1, "initialBackoff": "0.025s", "maxBackoff": "5s", "backoffMultiplier": 2,
		        "retryableStatusCodes": ["UNAVAILABLE"], "jitter": "full", "minAttemptTime": "0.001s", "maxPushback": "30s"},
		      "circuitBreaker": {"mode": "metrics-only", "consecutiveFailures": 0, "throttleK": 0, "failureRate": 0.5,
		        "minimumCalls": 5, "window": "10s", "recoveryTime": "1s", "maxRecoveryTime": "60s", "recoveryJitter": 0,
		        "halfOpenMaxCalls": 1, "halfOpenMaxWait": "0s", "failureStatusCodes": ["INTERNAL"]},
		      "fallback": true
		    },
		    {
		      "key": "/khive.echo.v1.EchoService/Unary",
		      "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.100s", "maxBackoff": "1s", "backoffMultiplier": 2,
		        "retryableStatusCodes": ["CANCELLED", "UNAVAILABLE"], "jitter": "proportional", "jitterFactor": 0.2,
		        "perAttemptTimeout": "0.001500s", "minAttemptTime": "0.001s", "maxPushback": "30s"},
		      "circuitBreaker": {"mode": "closed", "consecutiveFailures": 12, "throttleK": 2, "failureRate": 0,
		        "minimumCalls": 20, "window": "10s", "recoveryTime": "1s", "maxRecoveryTime": "60s", "recoveryJitter": 0.2,
		        "halfOpenMaxCalls": 1, "halfOpenMaxWait": "1s",
		        "failureStatusCodes": ["UNKNOWN", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"]},
		      "fallback": false
		    }
		  ],
		  "methods": [
		    {"method": "/khive.echo.v1.EchoService/ServerStream", "target": "passthrough:///bufnet",
		      "policy": "/khive.echo.v1.EchoService/*", "state": "metrics-only",
		      "successes": 1, "failures": 0, "ignored": 0, "rejections": 0, "throttled": 0, "transitions": 0,
		      "consecutiveFailures": 0, "windowCalls": 1, "windowFailures": 0, "windowThrottled": 0,
		      "throttleProbability": 0, "shadowTrips": 0},
		    {"method": "/khive.echo.v1.EchoService/Unary", "target": "passthrough:///bufnet",
		      "policy": "/khive.echo.v1.EchoService/Unary", "state": "closed",
		      "successes": 1, "failures": 0, "ignored": 0, "rejections": 0, "throttled": 0, "transitions": 0,
		      "consecutiveFailures": 0, "windowCalls": 1, "windowFailures": 0, "windowThrottled": 0,
		      "throttleProbability": 0, "shadowTrips": 0}
		  ],
		  "passThrough": [],
		  "breakers": {"count": 2, "max": 100, "overflowed": 0, "evicted": 0},
		  "budget": {"mode": "token-bucket", "maxTokens": 10, "tokenRatio": 0.5,
		    "targets": [{"target": "passthrough:///bufnet", "balance": 10, "reserve": 0, "allowed": 0, "refused": 0}]}
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
	assert.JSONEq(t, `{"policies": [], "methods": [], "passThrough": [],
	  "breakers": {"count": 0, "max": 10000, "overflowed": 0, "evicted": 0},
	  "budget": {"mode": "none", "targets": []}}`, string(got))
}
