package interceptors_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
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

func TestHalfOpenAdmitsExactlyTheConfiguredProbes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := interceptors.Policy{
			Retry: retry.Policy{MaxAttempts: 1},
			// Callers that find the probe slots taken do not wait for
			// the verdict (HalfOpenMaxWait < 0): they get the rejection.
			Breaker: breaker.Config{ConsecutiveFailures: 5, RecoveryTime: time.Second, RecoveryJitter: -1, HalfOpenMaxCalls: 3, HalfOpenMaxWait: -1},
		}
		e := newEnv(t, map[string]interceptors.Policy{"*": p})
		e.srv.SetDown(true)
		for range 5 {
			_, _ = e.unary(t.Context(), nil)
		}
		e.srv.SetDown(false)
		time.Sleep(time.Second) // the open period ends: half-open
		synctest.Wait()
		require.Equal(t, []string{unaryMethod + ": closed -> open", unaryMethod + ": open -> half-open"}, e.transitionLog())

		before := e.srv.Calls(echoserver.Unary)
		const callers = 200
		var (
			wg                  sync.WaitGroup
			mu                  sync.Mutex
			ok, rejected, other int
		)
		for range callers {
			wg.Go(func() {
				// Each probe takes 100ms, so all 200 callers arrive while
				// the probes are in flight.
				_, err := e.unary(t.Context(), &echov1.Fault{DelayMs: 100})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					ok++
				case errors.Is(err, breaker.ErrOpen):
					rejected++
					var oe *breaker.OpenError
					if assert.ErrorAs(t, err, &oe) {
						assert.Equal(t, breaker.HalfOpen, oe.State())
					}
				default:
					other++
				}
			})
		}
		wg.Wait()
		assert.Equal(t, 3, ok)
		assert.Equal(t, callers-3, rejected)
		assert.Zero(t, other)
		assert.Equal(t, 3, e.srv.Calls(echoserver.Unary)-before, "exactly 3 probes reached the server")
		assert.Equal(t, []string{
			unaryMethod + ": closed -> open", unaryMethod + ": open -> half-open", unaryMethod + ": half-open -> closed",
		}, e.transitionLog())
		_, err := e.unary(t.Context(), nil)
		require.NoError(t, err, "closed again")
	})
}

func TestBudgetBoundsAnOutageWithTheBreakerDisabled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := interceptors.Policy{Breaker: breaker.Config{Mode: breaker.Disabled}}
		e := newEnv(t, map[string]interceptors.Policy{"*": p})
		for range 500 { // a healthy period fills the budget
			_, err := e.unary(t.Context(), nil)
			require.NoError(t, err)
		}
		e.srv.SetDown(true)
		before := e.srv.Calls(echoserver.Unary)
		const calls = 1000
		for range calls {
			_, err := e.unary(t.Context(), nil)
			require.Equal(t, codes.Unavailable, status.Code(err))
			require.NotErrorIs(t, err, breaker.ErrOpen)
		}
		attempts := e.srv.Calls(echoserver.Unary) - before
		t.Logf("outage: %d calls, %d attempts", calls, attempts)
		assert.LessOrEqual(t, attempts, calls*12/10, "retries stay within the budget")
		assert.Greater(t, attempts, calls, "the budget still allowed some retries")
		assert.Empty(t, e.transitionLog())
	})
}

func TestRandomFailuresStillSucceed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, map[string]interceptors.Policy{"*": {}}, withSeed(42))
		const calls = 5000
		f := &echov1.Fault{Code: uint32(codes.Unavailable), FailProbability: 0.3}
		ok := 0
		for range calls {
			if _, err := e.unary(t.Context(), f); err == nil {
				ok++
			}
		}
		rate := float64(ok) / calls
		t.Logf("30%% random UNAVAILABLE: %d/%d calls succeeded (%.2f%%), %d attempts", ok, calls, 100*rate, e.srv.Calls(echoserver.Unary))
		assert.GreaterOrEqual(t, rate, 0.988)
		assert.Empty(t, e.transitionLog(), "the breaker stays closed")
	})
}

func TestCallOptionOverrides(t *testing.T) {
	tests := []struct {
		name string
		opts []grpc.CallOption
		want int // attempts
	}{
		{"policy", nil, 4},
		{"DisableRetry", []grpc.CallOption{interceptors.DisableRetry()}, 1},
		{"MaxAttempts(2)", []grpc.CallOption{interceptors.MaxAttempts(2)}, 2},
		{"MaxAttempts(6) beyond the policy", []grpc.CallOption{interceptors.MaxAttempts(6)}, 6},
		{"MaxAttempts(0) counts as 1", []grpc.CallOption{interceptors.MaxAttempts(0)}, 1},
		{"last wins", []grpc.CallOption{interceptors.DisableRetry(), interceptors.MaxAttempts(3)}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var seen []string
				spy := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
					for _, o := range opts {
						seen = append(seen, fmt.Sprintf("%T", o))
					}
					return invoker(ctx, method, req, reply, cc, opts...)
				}
				e := newEnv(t, map[string]interceptors.Policy{"*": {}}, withOptions(interceptors.WithoutBudget()), withInner(spy))
				f := fault(codes.Unavailable)
				f.Key = "k"
				_, err := e.unary(t.Context(), f, tt.opts...)
				assert.Equal(t, codes.Unavailable, status.Code(err))
				assert.Equal(t, tt.want, e.srv.Attempts("k"))
				if tt.want == 1 {
					assert.Nil(t, errorInfo(err), "a single attempt returns the server's error unchanged")
				}
				for _, typ := range seen {
					assert.NotContains(t, typ, "interceptors.", "the suite's options are removed before the invoker")
				}
			})
		})
	}
}

func TestHealthCheckIsExcludedFromStar(t *testing.T) {
	// failHealth fails every health check attempt with UNAVAILABLE and counts them.
	newFailHealth := func(n *int) grpc.UnaryClientInterceptor {
		return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			if method == healthCheck {
				*n++
				return status.Error(codes.Unavailable, "health down")
			}
			return invoker(ctx, method, req, reply, cc, opts...)
		}
	}
	tests := []struct {
		key  string
		want int
	}{
		{"*", 1},
		{"/grpc.health.v1.Health/*", 4},
		{healthCheck, 4},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var n int
				e := newEnv(t, map[string]interceptors.Policy{tt.key: {}}, withInner(newFailHealth(&n)))
				_, err := e.health.Check(t.Context(), &healthpb.HealthCheckRequest{})
				assert.Equal(t, codes.Unavailable, status.Code(err))
				assert.Equal(t, tt.want, n)
			})
		})
	}
}

func TestPassThrough(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		type key struct{}
		var got []struct {
			ctxValue any
			opts     []grpc.CallOption
		}
		spy := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			got = append(got, struct {
				ctxValue any
				opts     []grpc.CallOption
			}{ctx.Value(key{}), opts})
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		e := newEnv(t, map[string]interceptors.Policy{"/other.v1.Other/*": outagePolicy}, withInner(spy))
		ctx := context.WithValue(t.Context(), key{}, "caller")
		disable := interceptors.DisableRetry()
		for range 20 {
			_, err := e.unary(ctx, fault(codes.Unavailable), disable)
			assert.Equal(t, codes.Unavailable, status.Code(err))
			assert.Nil(t, errorInfo(err))
		}
		assert.Equal(t, 20, e.srv.Calls(echoserver.Unary), "one attempt per call, no breaker")
		require.Len(t, got, 20)
		assert.Equal(t, "caller", got[0].ctxValue)
		assert.Contains(t, got[0].opts, disable, "options untouched, even the suite's own")
		assert.Empty(t, e.transitionLog())
		for _, vals := range e.headerLog(attemptsName) {
			assert.Empty(t, vals)
		}
	})
}

func TestAttemptHeader(t *testing.T) {
	t.Run("default name, set on retries only", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var attempts []int
			spy := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				attempts = append(attempts, interceptors.Attempt(ctx))
				return invoker(ctx, method, req, reply, cc, opts...)
			}
			e := newEnv(t, map[string]interceptors.Policy{"*": {}}, withInner(spy))
			resp, err := e.unary(t.Context(), failFirst("k", 3, codes.Unavailable))
			require.NoError(t, err)
			assert.Equal(t, int32(3), resp.GetPreviousAttempts())
			assert.Equal(t, [][]string{nil, {"1"}, {"2"}, {"3"}}, e.headerLog(attemptsName))
			assert.Equal(t, []int{1, 2, 3, 4}, attempts, "Attempt(ctx) for interceptors chained after the suite")
		})
	})
	t.Run("set, not appended, over the caller's metadata", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, map[string]interceptors.Policy{"*": {}})
			ctx := metadata.AppendToOutgoingContext(t.Context(), attemptsName, "7", "x-caller", "kept")
			_, err := e.unary(ctx, failFirst("k", 2, codes.Unavailable))
			require.NoError(t, err)
			assert.Equal(t, [][]string{{"7"}, {"1"}, {"2"}}, e.headerLog(attemptsName))
			assert.Equal(t, [][]string{{"kept"}, {"kept"}, {"kept"}}, e.headerLog("x-caller"))
		})
	})
	t.Run("custom name", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, map[string]interceptors.Policy{"*": {}}, withOptions(interceptors.WithAttemptHeader("X-Retry-Attempt")))
			_, err := e.unary(t.Context(), failFirst("k", 2, codes.Unavailable))
			require.NoError(t, err)
			assert.Equal(t, [][]string{nil, {"1"}, {"2"}}, e.headerLog("x-retry-attempt"))
			assert.Equal(t, [][]string{nil, nil, nil}, e.headerLog(attemptsName))
		})
	})
	t.Run("off", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, map[string]interceptors.Policy{"*": {}}, withOptions(interceptors.WithAttemptHeader("")))
			_, err := e.unary(t.Context(), failFirst("k", 2, codes.Unavailable))
			require.NoError(t, err)
			assert.Equal(t, [][]string{nil, nil, nil}, e.headerLog(attemptsName))
		})
	})
	t.Run("beyond the prebuilt values", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := interceptors.Policy{
				Retry:   retry.Policy{MaxAttempts: 20, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond},
				Breaker: breaker.Config{ConsecutiveFailures: -1},
			}
			e := newEnv(t, map[string]interceptors.Policy{"*": p}, withOptions(interceptors.WithoutBudget()))
			_, err := e.unary(t.Context(), failFirst("k", 19, codes.Unavailable))
			require.NoError(t, err)
			log := e.headerLog(attemptsName)
			require.Len(t, log, 20)
			for i, vals := range log[1:] {
				assert.Equal(t, []string{fmt.Sprint(i + 1)}, vals)
			}
		})
	})
}

func TestRejectionError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, map[string]interceptors.Policy{"*": outagePolicy})
		e.srv.SetDown(true)
		for range 5 {
			_, _ = e.unary(t.Context(), nil, interceptors.DisableRetry())
		}
		time.Sleep(200 * time.Millisecond)
		_, err := e.unary(t.Context(), nil)
		require.Error(t, err)
		st := status.Convert(err)
		assert.Equal(t, codes.Unavailable, st.Code())
		assert.Contains(t, st.Message(), "breaker: open ("+unaryMethod+")")
		assert.Equal(t, "rpc error: code = Unavailable desc = "+st.Message(), err.Error())
		ei := errorInfo(err)
		require.NotNil(t, ei)
		assert.Equal(t, "CIRCUIT_OPEN", ei.GetReason())
		assert.Equal(t, "khive.grpc-resilience", ei.GetDomain())
		assert.Equal(t, map[string]string{"method": unaryMethod}, ei.GetMetadata())
		ri := retryInfoOf(err)
		require.NotNil(t, ri)
		assert.Equal(t, 800*time.Millisecond, ri.GetRetryDelay().AsDuration(), "time left in the open period")
		assert.ErrorIs(t, err, breaker.ErrOpen)
		var oe *breaker.OpenError
		require.ErrorAs(t, err, &oe)
		assert.Equal(t, breaker.Open, oe.State())

		_, err2 := e.unary(t.Context(), nil)
		assert.Same(t, err, err2, "one error per open period")
		assert.Equal(t, 5, e.srv.Calls(echoserver.Unary))
	})
}

func TestBreakerOpeningDuringRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var ev events
		p := interceptors.Policy{Breaker: breaker.Config{ConsecutiveFailures: 2}}
		e := newEnv(t, map[string]interceptors.Policy{"*": p}, ev.options())
		f := fault(codes.Unavailable)
		f.Key = "k"
		_, err := e.unary(t.Context(), f)
		assert.Equal(t, 2, e.srv.Attempts("k"), "the open breaker ended the retries")
		assert.Len(t, ev.retries, 1, "no wait for a retry the open breaker would reject")
		assert.Equal(t, codes.Unavailable, status.Code(err))
		assert.Equal(t, "CIRCUIT_OPEN", errorInfo(err).GetReason())
		assert.Contains(t, status.Convert(err).Message(), "gave up after 2 attempts (breaker open): echoserver: injected fault")
		assert.ErrorIs(t, err, breaker.ErrOpen)
		var re *retry.Error
		require.ErrorAs(t, err, &re)
		assert.Equal(t, interceptors.BreakerOpen, re.Reason)
		assert.Equal(t, 2, re.Attempts)
		require.Len(t, ev.giveUps, 1)
		g := ev.giveUps[0]
		assert.NotNil(t, g.Context, "the call's context")
		g.Context = nil
		assert.Equal(t, interceptors.GiveUpEvent{Method: unaryMethod, Target: "passthrough:///bufnet", Attempts: 2, Reason: interceptors.BreakerOpen, Err: err}, g)
	})
}

func TestGiveUpError(t *testing.T) {
	t.Run("exhausted keeps code and details", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, map[string]interceptors.Policy{"*": {}}, withOptions(interceptors.WithoutBudget()))
			f := &echov1.Fault{Code: uint32(codes.Unavailable), Message: "busy", HasRetryInfo: true, RetryInfoMs: 1}
			_, err := e.unary(t.Context(), f)
			st := status.Convert(err)
			assert.Equal(t, codes.Unavailable, st.Code())
			assert.Equal(t, "gave up after 4 attempts (exhausted): busy", st.Message())
			assert.Equal(t, "rpc error: code = Unavailable desc = gave up after 4 attempts (exhausted): busy", err.Error())
			require.NotNil(t, retryInfoOf(err), "the server's details are kept")
			ei := errorInfo(err)
			require.NotNil(t, ei)
			assert.Equal(t, "RETRIES_EXHAUSTED", ei.GetReason())
			assert.Equal(t, "khive.grpc-resilience", ei.GetDomain())
			assert.Equal(t, "4", ei.GetMetadata()["attempts"])
			var re *retry.Error
			require.ErrorAs(t, err, &re)
			assert.Equal(t, retry.Exhausted, re.Reason)
			assert.Equal(t, 4, re.Attempts)
			assert.Equal(t, "busy", status.Convert(re.Err).Message(), "the last attempt's error")
			assert.NotErrorIs(t, err, breaker.ErrOpen)
		})
	})
	t.Run("budget", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, map[string]interceptors.Policy{"*": {}}, withOptions(interceptors.WithTokenBucket(2, 0.1)))
			f := fault(codes.Unavailable)
			f.Key = "k"
			_, err := e.unary(t.Context(), f)
			assert.Equal(t, 1, e.srv.Attempts("k"), "the token bucket (2 tokens) refuses the first retry")
			assert.Equal(t, "RETRY_BUDGET_EXHAUSTED", errorInfo(err).GetReason())
			assert.Equal(t, codes.Unavailable, status.Code(err))
		})
	})
	t.Run("not retryable after a retry", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			inner := script(step{code: codes.Unavailable}, step{code: codes.NotFound})
			e := newEnv(t, map[string]interceptors.Policy{"*": {}}, withInner(inner))
			_, err := e.unary(t.Context(), nil)
			assert.Equal(t, codes.NotFound, status.Code(err))
			assert.Equal(t, "NOT_RETRYABLE", errorInfo(err).GetReason())
			assert.Equal(t, "gave up after 2 attempts (not retryable): scripted", status.Convert(err).Message())
		})
	})
}

func TestFallback(t *testing.T) {
	type call struct {
		method string
		err    error
	}
	newPolicy := func(calls *[]call, answer error) interceptors.Policy {
		p := outagePolicy
		p.Fallback = func(ctx context.Context, method string, req, reply any, err error) error {
			*calls = append(*calls, call{method, err})
			if answer != nil {
				return answer
			}
			reply.(*echov1.UnaryResponse).Message = "cached " + req.(*echov1.UnaryRequest).GetMessage()
			return nil
		}
		return p
	}
	t.Run("retries gave up", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var calls []call
			e := newEnv(t, map[string]interceptors.Policy{"*": newPolicy(&calls, nil)})
			resp, err := e.unary(t.Context(), fault(codes.Unavailable))
			require.NoError(t, err)
			assert.Equal(t, "cached m", resp.GetMessage())
			require.Len(t, calls, 1)
			assert.Equal(t, unaryMethod, calls[0].method)
			assert.Equal(t, "RETRIES_EXHAUSTED", errorInfo(calls[0].err).GetReason())
		})
	})
	t.Run("circuit open", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var calls []call
			e := newEnv(t, map[string]interceptors.Policy{"*": newPolicy(&calls, nil)})
			e.srv.SetDown(true)
			for range 5 {
				_, _ = e.unary(t.Context(), nil, interceptors.DisableRetry())
			}
			calls = nil
			resp, err := e.unary(t.Context(), nil)
			require.NoError(t, err)
			assert.Equal(t, "cached m", resp.GetMessage())
			require.Len(t, calls, 1)
			assert.ErrorIs(t, calls[0].err, breaker.ErrOpen)
		})
	})
	t.Run("its error is the caller's", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var calls []call
			answer := status.Error(codes.Aborted, "no cache")
			e := newEnv(t, map[string]interceptors.Policy{"*": newPolicy(&calls, answer)})
			_, err := e.unary(t.Context(), fault(codes.Unavailable))
			assert.Equal(t, answer, err)
		})
	})
	t.Run("not for application errors or canceled calls", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var calls []call
			e := newEnv(t, map[string]interceptors.Policy{"*": newPolicy(&calls, nil)})
			_, err := e.unary(t.Context(), fault(codes.InvalidArgument))
			assert.Equal(t, codes.InvalidArgument, status.Code(err))
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Millisecond)
			defer cancel()
			_, err = e.unary(ctx, &echov1.Fault{DelayMs: 100})
			assert.Equal(t, codes.DeadlineExceeded, status.Code(err))
			assert.Empty(t, calls)
		})
	})
}

var levelName = map[logging.Level]string{logging.LevelDebug: "DEBUG", logging.LevelInfo: "INFO", logging.LevelWarn: "WARN", logging.LevelError: "ERROR"}

func TestLogger(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var (
			mu    sync.Mutex
			lines []string
		)
		l := logging.LoggerFunc(func(_ context.Context, lvl logging.Level, msg string, fields ...any) {
			mu.Lock()
			defer mu.Unlock()
			lines = append(lines, fmt.Sprint(levelName[lvl], " ", msg, " ", fields))
		})
		p := interceptors.Policy{Retry: retry.Policy{MaxAttempts: 2}, Breaker: breaker.Config{ConsecutiveFailures: 2}}
		e := newEnv(t, map[string]interceptors.Policy{"*": p}, withOptions(interceptors.WithLogger(l)))
		_, err := e.unary(t.Context(), &echov1.Fault{Code: uint32(codes.Unavailable), Message: "down"})
		require.Error(t, err)
		mu.Lock()
		defer mu.Unlock()
		require.Len(t, lines, 3, strings.Join(lines, "\n"))
		call := "grpc.component client grpc.service khive.echo.v1.EchoService grpc.method Unary grpc.target passthrough:///bufnet"
		assert.True(t, strings.HasPrefix(lines[0], "DEBUG retrying ["+call+" grpc.attempt 1 retry.delay_ms "), lines[0])
		assert.Equal(t, "WARN circuit breaker state change [grpc.component client breaker.name "+unaryMethod+
			" grpc.service khive.echo.v1.EchoService grpc.method Unary grpc.target passthrough:///bufnet breaker.from closed breaker.to open]", lines[1])
		assert.Equal(t, "WARN retries gave up ["+call+" grpc.attempt 2 retry.reason exhausted grpc.code Unavailable grpc.error rpc error: code = Unavailable desc = down]", lines[2])
	})
}

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name     string
		policies map[string]interceptors.Policy
		opts     []interceptors.Option
		want     string
	}{
		{"retry field", map[string]interceptors.Policy{"/echo.v1.Echo/*": {Retry: retry.Policy{MaxAttempts: -1}}}, nil,
			`interceptors: policy "/echo.v1.Echo/*": Retry.MaxAttempts: must be at least 1, got -1`},
		{"breaker field", map[string]interceptors.Policy{"*": {Breaker: breaker.Config{FailureRate: 1.5}}}, nil,
			`interceptors: policy "*": Breaker.FailureRate: must be in [0, 1], got 1.5`},
		{"code list", map[string]interceptors.Policy{"*": {RetryableCodes: []codes.Code{codes.Unavailable, codes.OK}}}, nil,
			`interceptors: policy "*": RetryableCodes[1]: must be a non-OK code below 64, got OK`},
		{"no leading slash", map[string]interceptors.Policy{"pkg.Svc/Method": {}}, nil,
			`interceptors: policy "pkg.Svc/Method": key must be "/pkg.Service/Method", "/pkg.Service/*" or "*"`},
		{"three parts", map[string]interceptors.Policy{"/a/b/c": {}}, nil,
			`interceptors: policy "/a/b/c": key must name one method or "*"`},
		{"star service", map[string]interceptors.Policy{"/*": {}}, nil,
			`interceptors: policy "/*": key must be "/pkg.Service/Method", "/pkg.Service/*" or "*"`},
		{"empty", map[string]interceptors.Policy{"": {}}, nil,
			`interceptors: policy "": key must be "/pkg.Service/Method", "/pkg.Service/*" or "*"`},
		{"budget", nil, []interceptors.Option{interceptors.WithBudget(retry.BudgetConfig{Ratio: 2000})},
			`interceptors: WithBudget: retry: BudgetConfig.Ratio: must be in (0, 1000], got 2000`},
		{"attempt header", nil, []interceptors.Option{interceptors.WithAttemptHeader("X Retry")},
			`interceptors: WithAttemptHeader: "x retry" is not a metadata key (characters in [0-9a-z-_.])`},
		{"every problem, options first, then policies by key", map[string]interceptors.Policy{
			"/b.B/*": {Retry: retry.Policy{MaxAttempts: -1}},
			"/a.A/*": {Breaker: breaker.Config{FailureRate: 2}},
		}, []interceptors.Option{interceptors.WithMaxBreakers(0), interceptors.WithReplayBuffer(-1)},
			"interceptors: WithReplayBuffer: must not be negative\n" +
				"interceptors: WithMaxBreakers: must be at least 1, got 0\n" +
				`interceptors: policy "/a.A/*": Breaker.FailureRate: must be in [0, 1], got 2` + "\n" +
				`interceptors: policy "/b.B/*": Retry.MaxAttempts: must be at least 1, got -1`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := interceptors.New(tt.policies, tt.opts...)
			require.EqualError(t, err, tt.want)
		})
	}
	s, err := interceptors.New(nil)
	require.NoError(t, err, "no policies: everything passes through")
	require.Len(t, s.DialOptions(), 3)
}
