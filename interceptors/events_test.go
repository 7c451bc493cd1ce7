package interceptors_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
	"github.com/khive/grpc-resilience/retry"
)

type ctxKey struct{}

// rejects records WithOnReject's events.
type rejects struct {
	mu  sync.Mutex
	evs []interceptors.RejectEvent
}

func (r *rejects) option() interceptors.Option {
	return interceptors.WithOnReject(func(ev interceptors.RejectEvent) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.evs = append(r.evs, ev)
	})
}

func (r *rejects) all() []interceptors.RejectEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]interceptors.RejectEvent(nil), r.evs...)
}

// TestOnReject: every attempt the suite refuses is reported once, with the
// call's context, the attempt refused and the reason, and counted by
// khive.resilience.rejections with the same reason.
func TestOnReject(t *testing.T) {
	ctxOf := func(t *testing.T) context.Context { return context.WithValue(t.Context(), ctxKey{}, "call") }
	check := func(t *testing.T, ev interceptors.RejectEvent, reason interceptors.RejectReason, attempt int) {
		t.Helper()
		assert.Equal(t, "call", ev.Context.Value(ctxKey{}), "the call's context")
		assert.Equal(t, unaryMethod, ev.Method)
		assert.Equal(t, bufTarget, ev.Target)
		assert.Equal(t, reason, ev.Reason)
		assert.Equal(t, attempt, ev.Attempt)
		assert.Error(t, ev.Err)
	}
	counted := func(t *testing.T, r sdkmetric.Reader, reason string) float64 {
		t.Helper()
		got := collect(t, r)
		v, _ := value(t, got[interceptors.MetricRejections], map[string]string{
			"grpc.method": "khive.echo.v1.EchoService/Unary", "grpc.target": bufTarget, "reject.reason": reason})
		return v
	}
	newReader := func(t *testing.T) (sdkmetric.Reader, interceptors.Option) {
		r := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
		t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
		return r, interceptors.WithMeterProvider(mp)
	}

	t.Run("open before the first attempt", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var rj rejects
			reader, mopt := newReader(t)
			p := interceptors.Policy{Retry: retry.Policy{MaxAttempts: 1}, Breaker: breaker.Config{ConsecutiveFailures: 1, RecoveryTime: time.Minute}}
			e := newEnv(t, map[string]interceptors.Policy{echoService: p}, withOptions(rj.option(), mopt))
			_, err := e.unary(ctxOf(t), fault(codes.Unavailable))
			require.Error(t, err)
			assert.Empty(t, rj.all(), "a failed attempt is no rejection")
			_, err = e.unary(ctxOf(t), nil)
			require.ErrorIs(t, err, breaker.ErrOpen)
			evs := rj.all()
			require.Len(t, evs, 1)
			check(t, evs[0], interceptors.RejectOpen, 1)
			assert.Equal(t, err, evs[0].Err)
			assert.Equal(t, 1.0, counted(t, reader, "open"))
		})
	})
	t.Run("open before a retry", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var rj rejects
			reader, mopt := newReader(t)
			p := interceptors.Policy{Retry: retry.Policy{MaxAttempts: 4}, Breaker: breaker.Config{ConsecutiveFailures: 2, RecoveryTime: time.Minute}}
			e := newEnv(t, map[string]interceptors.Policy{echoService: p}, withOptions(rj.option(), mopt))
			_, err := e.unary(ctxOf(t), fault(codes.Unavailable))
			require.ErrorIs(t, err, breaker.ErrOpen)
			evs := rj.all()
			require.Len(t, evs, 1)
			check(t, evs[0], interceptors.RejectOpen, 3)
			assert.Equal(t, 1.0, counted(t, reader, "open"))
		})
	})
	t.Run("budget", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var rj rejects
			reader, mopt := newReader(t)
			// A token bucket of 1 token retries only above 0.5 tokens: the
			// first failure leaves none, so its retry is refused.
			p := interceptors.Policy{Retry: retry.Policy{MaxAttempts: 3}, Breaker: breaker.Config{Mode: breaker.Disabled}}
			e := newEnv(t, map[string]interceptors.Policy{echoService: p}, withOptions(rj.option(), mopt, interceptors.WithTokenBucket(1, 0.1)))
			_, err := e.unary(ctxOf(t), fault(codes.Unavailable))
			var re *retry.Error
			require.ErrorAs(t, err, &re)
			require.Equal(t, retry.BudgetExhausted, re.Reason)
			evs := rj.all()
			require.Len(t, evs, 1)
			check(t, evs[0], interceptors.RejectBudget, 2)
			assert.Equal(t, err, evs[0].Err)
			assert.Equal(t, 1.0, counted(t, reader, "budget"))
			got := collect(t, reader)
			v, ok := value(t, got[interceptors.MetricBudgetRefusals], map[string]string{"grpc.target": bufTarget})
			require.True(t, ok)
			assert.Equal(t, 1.0, v)
		})
	})
}

// TestEventsCarryTheCallsContext: OnRetry and OnGiveUp get the call's
// context and target; OnStateChangeEvent gets the breaker, its target and
// a context, next to WithOnStateChange.
func TestEventsCarryTheCallsContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var (
			ev     events
			mu     sync.Mutex
			states []interceptors.StateChangeEvent
		)
		p := interceptors.Policy{Retry: retry.Policy{MaxAttempts: 2}, Breaker: breaker.Config{ConsecutiveFailures: 2}}
		e := newEnv(t, map[string]interceptors.Policy{echoService: p}, ev.options(), withOptions(
			interceptors.WithOnStateChangeEvent(func(s interceptors.StateChangeEvent) {
				mu.Lock()
				defer mu.Unlock()
				states = append(states, s)
			})))
		ctx := context.WithValue(t.Context(), ctxKey{}, "call")
		_, err := e.unary(ctx, fault(codes.Unavailable))
		require.Error(t, err)
		require.Len(t, ev.retries, 1)
		assert.Equal(t, "call", ev.retries[0].Context.Value(ctxKey{}))
		assert.Equal(t, bufTarget, ev.retries[0].Target)
		require.Len(t, ev.giveUps, 1)
		assert.Equal(t, "call", ev.giveUps[0].Context.Value(ctxKey{}))
		assert.Equal(t, bufTarget, ev.giveUps[0].Target)
		mu.Lock()
		defer mu.Unlock()
		require.Len(t, states, 1)
		assert.NotNil(t, states[0].Context)
		states[0].Context = nil
		assert.Equal(t, interceptors.StateChangeEvent{Breaker: unaryMethod, Target: bufTarget, From: breaker.Closed, To: breaker.Open}, states[0])
		assert.Equal(t, []string{unaryMethod + ": closed -> open"}, e.transitionLog(), "WithOnStateChange still works")
	})
}

// TestLoggerChainedWithLoggingInterceptor: with go-grpc-middleware's
// logging interceptor chained before the suite, the suite's lines carry
// the interceptor's fields and the caller's (logging.InjectFields) once,
// with no second grpc.method, and durations as numbers.
func TestLoggerChainedWithLoggingInterceptor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var (
			mu    sync.Mutex
			lines []logging.Fields
			msgs  []string
		)
		l := logging.LoggerFunc(func(_ context.Context, _ logging.Level, msg string, fields ...any) {
			mu.Lock()
			defer mu.Unlock()
			msgs = append(msgs, msg)
			lines = append(lines, logging.Fields(fields))
		})
		suite, err := interceptors.New(map[string]interceptors.Policy{echoService: {Retry: retry.Policy{MaxAttempts: 2}}},
			interceptors.WithLogger(l), interceptors.WithoutBudget())
		require.NoError(t, err)
		dial := append([]grpc.DialOption{grpc.WithChainUnaryInterceptor(logging.UnaryClientInterceptor(l))}, suite.DialOptions()...)
		client := bufClient(t, dial...)
		ctx := logging.InjectFields(t.Context(), logging.Fields{"trace_id", "t-1"})
		_, err = client.Unary(ctx, &echov1.UnaryRequest{Message: "m", Fault: fault(codes.Unavailable)})
		require.Error(t, err)

		mu.Lock()
		defer mu.Unlock()
		seen := map[string]bool{}
		for i, f := range lines {
			if msgs[i] != "retrying" && msgs[i] != "retries gave up" {
				continue
			}
			seen[msgs[i]] = true
			count := map[any]int{}
			values := map[any]any{}
			for j := 0; j+1 < len(f); j += 2 {
				count[f[j]]++
				values[f[j]] = f[j+1]
			}
			for k, n := range count {
				assert.Equal(t, 1, n, "%s: field %v appears %d times", msgs[i], k, n)
			}
			assert.Equal(t, "Unary", values["grpc.method"], msgs[i])
			assert.Equal(t, "khive.echo.v1.EchoService", values["grpc.service"], msgs[i])
			assert.Equal(t, "client", values["grpc.component"], msgs[i])
			assert.Equal(t, "t-1", values["trace_id"], msgs[i])
			assert.Equal(t, "unary", values["grpc.method_type"], "the logging interceptor's own field: "+msgs[i])
			if msgs[i] == "retrying" {
				assert.IsType(t, float64(0), values["retry.delay_ms"])
			}
		}
		assert.True(t, seen["retrying"] && seen["retries gave up"], "%v", msgs)
	})
}

// TestOnRejectThrottled: a call the adaptive throttle sheds is reported as
// throttled (the interceptor called directly: shedding needs thousands of
// failed calls).
func TestOnRejectThrottled(t *testing.T) {
	var rj rejects
	p := interceptors.Policy{Retry: retry.Policy{MaxAttempts: 1}, Breaker: breaker.Config{ConsecutiveFailures: -1}}
	s, err := interceptors.New(map[string]interceptors.Policy{"*": p}, rj.option())
	require.NoError(t, err)
	in := s.Unary()
	errUnavailable := status.Error(codes.Unavailable, "down")
	failing := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
		return errUnavailable
	}
	req, reply := new(echov1.UnaryRequest), new(echov1.UnaryResponse)
	for i := 0; i < 100_000 && !errors.Is(err, breaker.ErrThrottled); i++ {
		err = in(t.Context(), unaryMethod, req, reply, nil, failing, grpc.StaticMethod())
	}
	require.ErrorIs(t, err, breaker.ErrThrottled)
	evs := rj.all()
	require.NotEmpty(t, evs)
	for _, ev := range evs {
		assert.Equal(t, interceptors.RejectThrottled, ev.Reason)
		assert.Equal(t, 1, ev.Attempt)
		assert.ErrorIs(t, ev.Err, breaker.ErrThrottled)
	}
}
