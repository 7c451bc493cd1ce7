package interceptors_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
	"github.com/khive/grpc-resilience/retry"
)

// Timing: every test that depends on time runs in a testing/synctest bubble
// (server, connection and calls inside it), so backoffs and open periods use
// the bubble's fake clock and durations are exact.

func TestRetrySucceedsAfterTransientUnavailable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var ev events
		e := newEnv(t, map[string]interceptors.Policy{"*": {}}, ev.options())
		resp, err := e.unary(t.Context(), failFirst("k", 2, codes.Unavailable))
		require.NoError(t, err)
		assert.Equal(t, "m", resp.GetMessage())
		assert.Equal(t, int32(2), resp.GetPreviousAttempts())
		assert.Equal(t, 3, e.srv.Attempts("k"))
		require.Len(t, ev.retries, 2)
		assert.Equal(t, 1, ev.retries[0].Attempt)
		assert.Equal(t, 2, ev.retries[1].Attempt)
		assert.Equal(t, unaryMethod, ev.retries[0].Method)
		assert.Equal(t, codes.Unavailable, status.Code(ev.retries[0].Err))
		assert.Empty(t, ev.giveUps)
		assert.Empty(t, e.transitionLog())
	})
}

func TestNonRetryableCodesTriedOnceAndNeverOpen(t *testing.T) {
	for _, c := range []codes.Code{codes.InvalidArgument, codes.PermissionDenied, codes.NotFound, codes.FailedPrecondition} {
		t.Run(c.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var ev events
				e := newEnv(t, map[string]interceptors.Policy{"*": {}}, ev.options())
				const calls = 100 // far beyond any trip rule
				f := &echov1.Fault{Code: uint32(c), Key: "k", Message: "no"}
				for range calls {
					_, err := e.unary(t.Context(), f)
					// The invoker's error, unchanged: no annotation, no detail.
					st := status.Convert(err)
					assert.Equal(t, c, st.Code())
					assert.Equal(t, "no", st.Message())
					assert.Empty(t, st.Details())
				}
				assert.Equal(t, calls, e.srv.Attempts("k"), "each call tried once")
				assert.Empty(t, e.transitionLog(), "breaker never changes state")
				assert.Empty(t, ev.retries)
				assert.Empty(t, ev.giveUps)
			})
		})
	}
}

// outagePolicy opens after 5 failed attempts and stays open 1s (no jitter).
var outagePolicy = interceptors.Policy{
	Breaker: breaker.Config{ConsecutiveFailures: 5, RecoveryTime: time.Second, RecoveryJitter: -1},
}

func TestOutageOpensBreakerAndRejectsLocally(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, map[string]interceptors.Policy{echoService: outagePolicy})
		e.srv.SetDown(true)
		var err error
		for i := 0; i < 10 && !errors.Is(err, breaker.ErrOpen); i++ {
			_, err = e.unary(t.Context(), nil)
		}
		require.ErrorIs(t, err, breaker.ErrOpen)
		assert.Equal(t, []string{unaryMethod + ": closed -> open"}, e.transitionLog())
		reached := e.srv.Calls(echoserver.Unary)
		assert.Equal(t, 5, reached, "the breaker opened after 5 failed attempts")

		start := time.Now()
		for range 100 {
			_, err := e.unary(t.Context(), nil)
			require.ErrorIs(t, err, breaker.ErrOpen)
			assert.Equal(t, codes.Unavailable, status.Code(err))
		}
		assert.Equal(t, reached, e.srv.Calls(echoserver.Unary), "rejected calls never reach the server")
		assert.Zero(t, time.Since(start), "rejections fail fast (no backoff)")
	})
}

func TestOneMethodDownDoesNotAffectAnother(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, map[string]interceptors.Policy{
			echoService:                outagePolicy,
			"/grpc.health.v1.Health/*": outagePolicy,
		})
		for range 10 {
			_, _ = e.unary(t.Context(), fault(codes.Unavailable))
		}
		_, err := e.unary(t.Context(), nil)
		require.ErrorIs(t, err, breaker.ErrOpen, "Unary is open")
		for range 20 {
			resp, err := e.health.Check(t.Context(), &healthpb.HealthCheckRequest{})
			require.NoError(t, err, "Health/Check is unaffected")
			assert.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.GetStatus())
		}
		assert.Equal(t, []string{unaryMethod + ": closed -> open"}, e.transitionLog())
	})
}

func TestPushback(t *testing.T) {
	tests := []struct {
		name      string
		code      codes.Code
		pushback  []string
		retried   bool
		wantDelay time.Duration // the wait before the retry (exact: no jitter on pushback)
	}{
		{"zero retries at once", codes.Unavailable, []string{"0"}, true, 0},
		{"200ms waits exactly 200ms", codes.Unavailable, []string{"200"}, true, 200 * time.Millisecond},
		{"negative means do not retry", codes.Unavailable, []string{"-1"}, false, 0},
		{"garbage means do not retry", codes.Unavailable, []string{"soon"}, false, 0},
		{"empty means do not retry", codes.Unavailable, []string{""}, false, 0},
		{"two values mean do not retry", codes.Unavailable, []string{"10", "20"}, false, 0},
		{"capped by MaxPushback", codes.Unavailable, []string{"3600000"}, true, 30 * time.Second},
		{"makes RESOURCE_EXHAUSTED retryable", codes.ResourceExhausted, []string{"50"}, true, 50 * time.Millisecond},
		{"never makes a non-retryable code retryable", codes.InvalidArgument, []string{"0"}, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var ev events
				e := newEnv(t, map[string]interceptors.Policy{"*": {}}, ev.options())
				f := failFirst("k", 1, tt.code)
				f.Pushback = tt.pushback
				start := time.Now()
				_, err := e.unary(t.Context(), f)
				if !tt.retried {
					assert.Equal(t, tt.code, status.Code(err))
					assert.Equal(t, 1, e.srv.Attempts("k"))
					assert.Nil(t, errorInfo(err), "a single attempt returns the server's error unchanged")
					return
				}
				require.NoError(t, err)
				assert.Equal(t, 2, e.srv.Attempts("k"))
				assert.Equal(t, tt.wantDelay, time.Since(start))
				assert.Equal(t, []string{tt.wantDelay.String()}, ev.retryDelays())
			})
		})
	}
}

// TestPushbackThatStopsChargesTheTokenBucket: with the gRFC A6 token bucket,
// a pushback that says "do not retry" counts as a failed attempt (grpc-go
// throttles before giving up), like any retryable failure; a committed
// attempt or a non-retryable code costs nothing.
func TestPushbackThatStopsChargesTheTokenBucket(t *testing.T) {
	tests := []struct {
		name     string
		code     codes.Code
		pushback []string
		header   bool
		want     float64 // tokens after the call (10 at first)
	}{
		{"negative", codes.Unavailable, []string{"-1"}, false, 9},
		{"garbage", codes.Unavailable, []string{"soon"}, false, 9},
		{"two values", codes.Unavailable, []string{"10", "20"}, false, 9},
		{"resource exhausted", codes.ResourceExhausted, []string{"-1"}, false, 9},
		{"valid: one failure, then a success", codes.Unavailable, []string{"0"}, false, 9.1},
		{"not retryable", codes.InvalidArgument, []string{"-1"}, false, 10},
		{"committed", codes.Unavailable, []string{"-1"}, true, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, map[string]interceptors.Policy{"*": {}}, withOptions(interceptors.WithTokenBucket(10, 0.1)))
				f := failFirst("k", 1, tt.code)
				f.Pushback, f.SendHeader = tt.pushback, tt.header
				_, _ = e.unary(t.Context(), f)
				b := e.suite.Snapshot().Budget
				require.Len(t, b.Targets, 1)
				assert.InDelta(t, tt.want, b.Targets[0].Balance, 1e-9)
			})
		})
	}
}

func TestPushbackResetsTheExponent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var ev events
		p := interceptors.Policy{Retry: retry.Policy{MaxAttempts: 6, InitialBackoff: 100 * time.Millisecond, Jitter: retry.NoJitter}}
		// Attempts 1, 2 and 4 fail plainly, attempt 3 with a 7ms pushback.
		inner := script(step{code: codes.Unavailable}, step{code: codes.Unavailable},
			step{code: codes.Unavailable, pushback: []string{"7"}}, step{code: codes.Unavailable}, step{})
		e := newEnv(t, map[string]interceptors.Policy{"*": p}, ev.options(), withInner(inner))
		_, err := e.unary(t.Context(), nil)
		require.NoError(t, err)
		assert.Equal(t, []string{"100ms", "200ms", "7ms", "100ms"}, ev.retryDelays())
	})
}

func TestRetryInfo(t *testing.T) {
	for _, c := range []codes.Code{codes.Unavailable, codes.ResourceExhausted} {
		t.Run(c.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var ev events
				e := newEnv(t, map[string]interceptors.Policy{"*": {}}, ev.options())
				f := failFirst("k", 1, c)
				f.HasRetryInfo, f.RetryInfoMs = true, 300
				start := time.Now()
				_, err := e.unary(t.Context(), f)
				require.NoError(t, err)
				assert.Equal(t, 300*time.Millisecond, time.Since(start))
				assert.Equal(t, []string{"300ms"}, ev.retryDelays())
			})
		})
	}
}

func TestResourceExhaustedWithoutHintIsNotRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := interceptors.Policy{RetryableCodes: []codes.Code{codes.Unavailable, codes.ResourceExhausted}}
		e := newEnv(t, map[string]interceptors.Policy{"*": p})
		_, err := e.unary(t.Context(), failFirst("k", 1, codes.ResourceExhausted))
		assert.Equal(t, codes.ResourceExhausted, status.Code(err))
		assert.Equal(t, 1, e.srv.Attempts("k"), "listed, but no delay hint")
	})
}

func TestHeadersThenFailureIsNotRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var ev events
		e := newEnv(t, map[string]interceptors.Policy{"*": {}}, ev.options())
		f := failFirst("k", 1, codes.Unavailable)
		f.SendHeader = true
		var hdr metadata.MD
		_, err := e.unary(t.Context(), f, grpc.Header(&hdr))
		assert.Equal(t, codes.Unavailable, status.Code(err))
		assert.Equal(t, 1, e.srv.Attempts("k"), "committed once headers arrived (gRFC A6)")
		assert.Equal(t, []string{"sent"}, hdr.Get("x-echo-header"), "the caller's own Header option still works")
		assert.Empty(t, ev.retries)

		// The same failure without headers (Trailers-Only) is retried.
		_, err = e.unary(t.Context(), failFirst("k2", 1, codes.Unavailable))
		require.NoError(t, err)
		assert.Equal(t, 2, e.srv.Attempts("k2"))
	})
}

func TestDeadlineNoAttemptThatCannotFinish(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var ev events
		e := newEnv(t, map[string]interceptors.Policy{"*": {}}, ev.options())
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		f := fault(codes.Unavailable)
		f.Key, f.Pushback = "k", []string{"200"}
		start := time.Now()
		_, err := e.unary(ctx, f)
		assert.Zero(t, time.Since(start), "gives up at once instead of sleeping past the deadline")
		assert.Equal(t, 1, e.srv.Attempts("k"))
		assert.Equal(t, codes.Unavailable, status.Code(err), "the last real status")
		require.NotNil(t, errorInfo(err))
		assert.Equal(t, interceptors.ReasonDeadlineTooShort, errorInfo(err).GetReason())
		var re *retry.Error
		require.ErrorAs(t, err, &re)
		assert.Equal(t, retry.Deadline, re.Reason)
		require.Len(t, ev.giveUps, 1)
		assert.Equal(t, retry.Deadline, ev.giveUps[0].Reason)
	})
}

func TestDeadlineIsNeverExceeded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := interceptors.Policy{Retry: retry.Policy{MaxAttempts: 10, InitialBackoff: 100 * time.Millisecond, Jitter: retry.NoJitter}}
		e := newEnv(t, map[string]interceptors.Policy{"*": p}, withOptions(interceptors.WithoutBudget()))
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		defer cancel()
		f := fault(codes.Unavailable)
		f.Key = "k"
		start := time.Now()
		_, err := e.unary(ctx, f)
		// Attempts at 0, 100ms and 300ms; the next would start at 700ms.
		assert.Equal(t, 300*time.Millisecond, time.Since(start))
		assert.Equal(t, 3, e.srv.Attempts("k"))
		assert.Equal(t, codes.Unavailable, status.Code(err))
		assert.Contains(t, status.Convert(err).Message(), "gave up after 3 attempts (deadline)")
		assert.NoError(t, ctx.Err(), "returned before the caller's deadline")
	})
}

func TestAttemptTimeout(t *testing.T) {
	slow := &echov1.Fault{DelayMs: 100, Key: "k"} // every attempt answers after 100ms
	t.Run("retried when listed", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := interceptors.Policy{
				Retry:          retry.Policy{MaxAttempts: 3, AttemptTimeout: 30 * time.Millisecond, InitialBackoff: 10 * time.Millisecond, Jitter: retry.NoJitter},
				RetryableCodes: []codes.Code{codes.Unavailable, codes.DeadlineExceeded},
				Breaker:        breaker.Config{ConsecutiveFailures: 3},
			}
			e := newEnv(t, map[string]interceptors.Policy{"*": p})
			start := time.Now()
			_, err := e.unary(t.Context(), slow)
			// 0-30ms, wait 10ms, 40-70ms, wait 20ms, 90-120ms.
			assert.Equal(t, 120*time.Millisecond, time.Since(start))
			assert.Equal(t, 3, e.srv.Attempts("k"))
			assert.Equal(t, codes.DeadlineExceeded, status.Code(err))
			assert.Equal(t, interceptors.ReasonRetriesExhausted, errorInfo(err).GetReason())
			// Attempt timeouts (caller's ctx live) are failures: 3 of them open the breaker.
			assert.Equal(t, []string{unaryMethod + ": closed -> open"}, e.transitionLog())
		})
	})
	t.Run("not retried by default", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := interceptors.Policy{Retry: retry.Policy{AttemptTimeout: 30 * time.Millisecond}}
			e := newEnv(t, map[string]interceptors.Policy{"*": p})
			start := time.Now()
			_, err := e.unary(t.Context(), slow)
			assert.Equal(t, 30*time.Millisecond, time.Since(start))
			assert.Equal(t, 1, e.srv.Attempts("k"))
			assert.Equal(t, codes.DeadlineExceeded, status.Code(err))
			assert.Nil(t, errorInfo(err))
		})
	})
	t.Run("never extends the caller's deadline", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := interceptors.Policy{Retry: retry.Policy{AttemptTimeout: time.Second}}
			e := newEnv(t, map[string]interceptors.Policy{"*": p})
			ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err := e.unary(ctx, slow)
			assert.Equal(t, 50*time.Millisecond, time.Since(start))
			assert.Equal(t, codes.DeadlineExceeded, status.Code(err))
		})
	})
}

func TestCallerDeadlineIsIgnoredByTheBreaker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, map[string]interceptors.Policy{"*": outagePolicy})
		for range 20 {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Millisecond)
			_, err := e.unary(ctx, &echov1.Fault{DelayMs: 100, Key: "k"})
			cancel()
			assert.Equal(t, codes.DeadlineExceeded, status.Code(err))
			assert.Nil(t, errorInfo(err), "unchanged")
		}
		assert.Equal(t, 20, e.srv.Attempts("k"), "never retried")
		assert.Empty(t, e.transitionLog(), "the caller's own deadline is not the server's fault")
	})
}

func TestCanceledDuringBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var ev events
		cancelOnRetry := withOptions(interceptors.WithOnRetry(func(interceptors.RetryEvent) { cancel() }))
		e := newEnv(t, map[string]interceptors.Policy{"*": {}}, ev.options(), cancelOnRetry)
		_, err := e.unary(ctx, fault(codes.Unavailable))
		assert.Equal(t, codes.Canceled, status.Code(err), "the caller canceled")
		var re *retry.Error
		require.ErrorAs(t, err, &re)
		assert.Equal(t, retry.Canceled, re.Reason)
		assert.Equal(t, codes.Unavailable, status.Code(re.Err), "the last real error is kept")
		require.Len(t, ev.giveUps, 1)
		assert.Equal(t, retry.Canceled, ev.giveUps[0].Reason)
	})
}
