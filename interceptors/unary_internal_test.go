package interceptors

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/retry"
)

func TestSplitCallOptions(t *testing.T) {
	static := grpc.StaticMethod()
	buf := grpc.MaxRetryRPCBufferSize(1000)

	opts := []grpc.CallOption{static, buf}
	ov, out := splitCallOptions(opts)
	assert.Equal(t, overrides{replayBuffer: 1000}, ov)
	assert.Same(t, &opts[0], &out[0], "no option of ours: the same slice")
	assert.Zero(t, testing.AllocsPerRun(100, func() { _, _ = splitCallOptions(opts) }))

	ov, out = splitCallOptions([]grpc.CallOption{DisableRetry(), static, MaxAttempts(3), buf, grpc.MaxRetryRPCBufferSize(7)})
	assert.Equal(t, overrides{maxAttempts: 3, replayBuffer: 7}, ov, "the last of a kind wins")
	assert.Equal(t, []grpc.CallOption{static, buf, grpc.MaxRetryRPCBufferSize(7)}, out, "ours removed, order kept")
	assert.Equal(t, 3, ov.attempts(4))
	assert.Equal(t, 7, ov.replay(DefaultReplayBuffer))

	ov, _ = splitCallOptions(nil)
	assert.Equal(t, 4, ov.attempts(4))
	assert.Equal(t, DefaultReplayBuffer, ov.replay(DefaultReplayBuffer))
	ov, _ = splitCallOptions([]grpc.CallOption{MaxAttempts(-5)})
	assert.Equal(t, 1, ov.attempts(4))
}

func testEntry(t *testing.T, p Policy) *entry {
	t.Helper()
	s, err := New(map[string]Policy{"*": p})
	require.NoError(t, err)
	e := s.lookup(nil, "/pkg.Svc/M")
	require.NotNil(t, e)
	return e
}

// pastDeadlineCtx is past its deadline, but its timer has not fired yet.
type pastDeadlineCtx struct{ context.Context }

func (pastDeadlineCtx) Deadline() (time.Time, bool) { return time.Now().Add(-time.Millisecond), true }

func TestClassify(t *testing.T) {
	e := testEntry(t, Policy{})
	live := context.Background()
	done, cancel := context.WithCancel(live)
	cancel()
	past := pastDeadlineCtx{live}
	rej := newRejectError("/pkg.Svc/M", mustOpenError(t))
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want breaker.Outcome
	}{
		{"nil", live, nil, breaker.Success},
		{"unavailable", live, status.Error(codes.Unavailable, ""), breaker.Failure},
		{"internal", live, status.Error(codes.Internal, ""), breaker.Failure},
		{"unknown", live, status.Error(codes.Unknown, ""), breaker.Failure},
		{"data loss", live, status.Error(codes.DataLoss, ""), breaker.Failure},
		{"resource exhausted", live, status.Error(codes.ResourceExhausted, ""), breaker.Failure},
		{"deadline, ctx live", live, status.Error(codes.DeadlineExceeded, ""), breaker.Failure},
		{"deadline, ctx done", done, status.Error(codes.DeadlineExceeded, ""), breaker.Ignored},
		{"deadline, ctx past its deadline, timer not fired yet", past, status.Error(codes.DeadlineExceeded, ""), breaker.Ignored},
		{"canceled", live, status.Error(codes.Canceled, ""), breaker.Ignored},
		{"local rejection", live, rej, breaker.Ignored},
		{"not found", live, status.Error(codes.NotFound, ""), breaker.Success},
		{"invalid argument", live, status.Error(codes.InvalidArgument, ""), breaker.Success},
		{"permission denied", live, status.Error(codes.PermissionDenied, ""), breaker.Success},
		{"unavailable, ctx done", done, status.Error(codes.Unavailable, ""), breaker.Failure},
		{"a plain error is UNKNOWN", live, errors.New("boom"), breaker.Failure},
		{"a raw context error, ctx done", done, context.Canceled, breaker.Ignored},
		{"a wrapped context error, ctx done", done, fmt.Errorf("waiting: %w", context.DeadlineExceeded), breaker.Ignored},
		{"a raw attempt timeout, ctx live", live, context.DeadlineExceeded, breaker.Failure},
		{"grpc-status 99 is UNKNOWN", live, status.Error(codes.Code(99), ""), breaker.Failure},
		{"grpc-status -1 is UNKNOWN", live, status.Error(codes.Code(^uint32(0)), ""), breaker.Failure},
		{"grpc-status 17 is UNKNOWN", live, status.Error(codes.Code(17), ""), breaker.Failure},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, e.classify(tt.ctx, tt.err), tt.name)
	}
	custom := testEntry(t, Policy{FailureCodes: []codes.Code{codes.NotFound}})
	assert.Equal(t, breaker.Failure, custom.classify(live, status.Error(codes.NotFound, "")))
	assert.Equal(t, breaker.Success, custom.classify(live, status.Error(codes.Unavailable, "")))
}

func mustOpenError(t *testing.T) *breaker.OpenError {
	t.Helper()
	b, err := breaker.New(breaker.Config{Name: "/pkg.Svc/M"})
	require.NoError(t, err)
	b.ForceOpen()
	_, err = b.Allow()
	oe, ok := err.(*breaker.OpenError)
	require.True(t, ok)
	return oe
}

func TestDecide(t *testing.T) {
	e := testEntry(t, Policy{})
	withDE := testEntry(t, Policy{RetryableCodes: []codes.Code{codes.Unavailable, codes.DeadlineExceeded}})
	live := context.Background()
	done, cancel := context.WithCancel(live)
	cancel()
	past := pastDeadlineCtx{live}
	pb := func(v ...string) metadata.MD { return metadata.MD{pushbackKey: v} }
	withInfo := func(c codes.Code, d time.Duration) error {
		st, err := status.New(c, "").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(d)})
		require.NoError(t, err)
		return st.Err()
	}
	invalidInfo := func(c codes.Code) error {
		st, err := status.New(c, "").WithDetails(&errdetails.RetryInfo{RetryDelay: &durationpb.Duration{Seconds: 1, Nanos: -5}})
		require.NoError(t, err)
		return st.Err()
	}
	withUnknown := testEntry(t, Policy{RetryableCodes: []codes.Code{codes.Unavailable, codes.Unknown}})
	unavailable := status.Error(codes.Unavailable, "")
	tests := []struct {
		name      string
		e         *entry
		ctx       context.Context
		err       error
		committed bool
		trailer   metadata.MD
		want      retry.Decision
	}{
		{"unavailable", e, live, unavailable, false, nil, retry.Backoff},
		{"committed", e, live, unavailable, true, nil, retry.Stop},
		{"ctx done", e, done, unavailable, false, nil, retry.Stop},
		{"not retryable", e, live, status.Error(codes.Internal, ""), false, nil, retry.Stop},
		{"local rejection", e, live, newRejectError("m", mustOpenError(t)), false, nil, retry.Stop},
		{"pushback 0", e, live, unavailable, false, pb("0"), retry.After(0)},
		{"pushback 200", e, live, unavailable, false, pb("200"), retry.After(200 * time.Millisecond)},
		{"pushback -1", e, live, unavailable, false, pb("-1"), retry.Stop},
		{"pushback garbage", e, live, unavailable, false, pb("1s"), retry.Stop},
		{"pushback two values", e, live, unavailable, false, pb("1", "2"), retry.Stop},
		{"pushback huge", e, live, unavailable, false, pb("99999999999999999999"), retry.Stop},
		{"pushback on a non-retryable code", e, live, status.Error(codes.Internal, ""), false, pb("5"), retry.Stop},
		{"pushback wins over RetryInfo", e, live, withInfo(codes.Unavailable, time.Second), false, pb("5"), retry.After(5 * time.Millisecond)},
		{"RetryInfo", e, live, withInfo(codes.Unavailable, time.Second), false, nil, retry.After(time.Second)},
		{"resource exhausted without hint", e, live, status.Error(codes.ResourceExhausted, ""), false, nil, retry.Stop},
		{"resource exhausted with pushback", e, live, status.Error(codes.ResourceExhausted, ""), false, pb("7"), retry.After(7 * time.Millisecond)},
		{"resource exhausted with RetryInfo", e, live, withInfo(codes.ResourceExhausted, time.Second), false, nil, retry.After(time.Second)},
		{"deadline not listed", e, live, status.Error(codes.DeadlineExceeded, ""), false, nil, retry.Stop},
		{"deadline listed", withDE, live, status.Error(codes.DeadlineExceeded, ""), false, nil, retry.Backoff},
		{"deadline listed, ctx done", withDE, done, status.Error(codes.DeadlineExceeded, ""), false, nil, retry.Stop},
		{"deadline listed, ctx past its deadline", withDE, past, status.Error(codes.DeadlineExceeded, ""), false, nil, retry.Stop},
		{"unavailable, ctx past its deadline", e, past, unavailable, false, nil, retry.Backoff}, // Next stops it: Deadline
		{"a raw attempt timeout, listed", withDE, live, context.DeadlineExceeded, false, nil, retry.Backoff},
		{"negative RetryInfo is no hint", e, live, withInfo(codes.Unavailable, -time.Second), false, nil, retry.Backoff},
		{"negative RetryInfo on resource exhausted is no hint", e, live, withInfo(codes.ResourceExhausted, -time.Second), false, nil, retry.Stop},
		{"invalid RetryInfo is no hint", e, live, invalidInfo(codes.ResourceExhausted), false, nil, retry.Stop},
		{"grpc-status 99 is UNKNOWN: not retryable by default", e, live, status.Error(codes.Code(99), ""), false, nil, retry.Stop},
		{"grpc-status 99 is UNKNOWN: retryable when UNKNOWN is", withUnknown, live, status.Error(codes.Code(99), ""), false, nil, retry.Backoff},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, tt.e.decide(tt.ctx, tt.err, tt.committed, tt.trailer), tt.name)
	}
}

func TestLookup(t *testing.T) {
	s, err := New(map[string]Policy{
		"/a.S/M": {},
		"/a.S/*": {},
		"/b.S/*": {},
		"*":      {},
	})
	require.NoError(t, err)
	tab := s.tab.Load()
	keyOf := func(m string) string {
		e := s.lookup(nil, m)
		if e == nil {
			return ""
		}
		return e.pol.key
	}
	assert.Equal(t, "/a.S/M", keyOf("/a.S/M"))
	assert.Equal(t, "/a.S/*", keyOf("/a.S/N"))
	assert.Equal(t, "/b.S/*", keyOf("/b.S/M"))
	assert.Equal(t, "*", keyOf("/c.S/M"))
	assert.Equal(t, "", keyOf("/grpc.health.v1.Health/Check"), "excluded from *")
	assert.Nil(t, tab.match("/grpc.health.v1.Health/Watch"))

	// The fast cache is keyed by the string's address: equal strings at
	// other addresses, and different strings, still resolve correctly.
	for range 3 {
		for _, m := range []string{"/a.S/M", "/a.S/N", "/c.S/M"} {
			clone := strings.Clone(m)
			assert.Same(t, s.lookup(nil, m), s.lookup(nil, clone), m)
		}
	}
	// One breaker per method, shared by the entries of every target.
	assert.Same(t, s.lookup(nil, "/a.S/N").brk, s.lookup(nil, strings.Clone("/a.S/N")).brk)
	assert.NotSame(t, s.lookup(nil, "/a.S/N").brk, s.lookup(nil, "/a.S/O").brk)

	// WithBreakerKey: one breaker per key.
	s2, err := New(map[string]Policy{"*": {}}, WithBreakerKey(func(_, m string) string { return "all" }))
	require.NoError(t, err)
	assert.Same(t, s2.lookup(nil, "/a.S/M").brk, s2.lookup(nil, "/b.S/M").brk)
	assert.Equal(t, "all", s2.lookup(nil, "/a.S/M").brk.Name())
}

func TestHotPathsAllocateNothing(t *testing.T) {
	s, err := New(map[string]Policy{"*": {Breaker: breaker.Config{ConsecutiveFailures: 1, RecoveryTime: time.Hour, MaxRecoveryTime: time.Hour}}})
	require.NoError(t, err)
	in := s.Unary()
	ctx := context.Background()
	opts := []grpc.CallOption{grpc.StaticMethod()}
	ok := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	fail := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
		return status.Error(codes.Unavailable, "")
	}
	const m = "/pkg.Svc/M"
	assert.Zero(t, testing.AllocsPerRun(1000, func() { _ = in(ctx, m, nil, nil, nil, ok, opts...) }), "success")
	_ = in(ctx, m, nil, nil, nil, fail, DisableRetry())
	require.ErrorIs(t, in(ctx, m, nil, nil, nil, ok, opts...), breaker.ErrOpen)
	assert.Zero(t, testing.AllocsPerRun(1000, func() { _ = in(ctx, m, nil, nil, nil, ok, opts...) }), "rejection")
}

// TestFailedAttemptsAllocateLittle pins the failure path's allocations: a
// call whose 4 attempts fail allocates its retry context, the retry.Error
// and the give-up error, at most one allocation per attempt.
func TestFailedAttemptsAllocateLittle(t *testing.T) {
	p := Policy{
		Retry:   retry.Policy{MaxAttempts: 4, InitialBackoff: time.Nanosecond, MaxBackoff: time.Nanosecond},
		Breaker: breaker.Config{Mode: breaker.Disabled},
	}
	s, err := New(map[string]Policy{"*": p}, WithoutBudget())
	require.NoError(t, err)
	in := s.Unary()
	ctx := context.Background()
	opts := []grpc.CallOption{grpc.StaticMethod()}
	failure := status.Error(codes.Unavailable, "")
	attempts := 0
	fail := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
		attempts++
		return failure
	}
	allocs := testing.AllocsPerRun(100, func() { _ = in(ctx, "/pkg.Svc/M", nil, nil, nil, fail, opts...) })
	require.Equal(t, 4*101, attempts)
	assert.LessOrEqual(t, allocs, 3.0)
}

// TestThrottledRejection: a call the breaker's throttle sheds is a local
// rejection: UNAVAILABLE with ErrorInfo reason THROTTLED, errors.Is
// breaker.ErrThrottled (not ErrOpen), prebuilt (no allocation), never a
// breaker failure nor retried, and it goes to the unary Fallback like an
// open rejection. A nested suite's throttle is ignored the same way.
func TestThrottledRejection(t *testing.T) {
	var fallbackGot error
	s, err := New(map[string]Policy{"*": {
		Retry:   retry.Policy{MaxAttempts: 1},
		Breaker: breaker.Config{ConsecutiveFailures: -1}, // the throttle alone
		Fallback: func(_ context.Context, _ string, _, _ any, err error) error {
			fallbackGot = err
			return err
		},
	}})
	require.NoError(t, err)
	in := s.Unary()
	ctx := context.Background()
	opts := []grpc.CallOption{grpc.StaticMethod()}
	fail := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
		return status.Error(codes.Unavailable, "down")
	}
	const m = "/pkg.Svc/M"
	for i := 0; i < 10_000 && !errors.Is(err, breaker.ErrThrottled); i++ {
		err = in(ctx, m, nil, nil, nil, fail, opts...)
	}
	require.ErrorIs(t, err, breaker.ErrThrottled)
	assert.NotErrorIs(t, err, breaker.ErrOpen)
	assert.Equal(t, codes.Unavailable, status.Code(err))
	var info *errdetails.ErrorInfo
	for _, d := range status.Convert(err).Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			info = ei
		}
	}
	require.NotNil(t, info)
	assert.Equal(t, ReasonThrottled, info.GetReason())
	assert.Equal(t, ErrorDomain, info.GetDomain())
	assert.Same(t, err, fallbackGot, "a throttled call goes to the fallback")

	e := s.lookup(nil, m)
	assert.Equal(t, breaker.Ignored, e.classify(ctx, err))
	assert.Equal(t, breaker.Ignored, e.classify(ctx, fmt.Errorf("a nested suite: %w", err)))
	assert.Equal(t, retry.Stop, e.decide(ctx, err, false, nil))
	assert.Equal(t, retry.Stop, e.decide(ctx, fmt.Errorf("a nested suite: %w", err), false, nil))

	// Never a failure: only the calls that reached the invoker count.
	before := e.brk.Counts()
	reached, throttled := 0, 0
	counting := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
		reached++
		return fail(ctx, method, req, reply, cc, opts...)
	}
	for range 1000 {
		if errors.Is(in(ctx, m, nil, nil, nil, counting, opts...), breaker.ErrThrottled) {
			throttled++
		}
	}
	after := e.brk.Counts()
	assert.Equal(t, uint64(reached), after.Failures-before.Failures)
	assert.Equal(t, 1000, reached+throttled)
	assert.Greater(t, throttled, 900, "the throttle sheds nearly everything when nothing succeeds")

	assert.Zero(t, testing.AllocsPerRun(1000, func() { _ = in(ctx, m, nil, nil, nil, fail, opts...) }), "a throttled rejection allocates nothing")
}

// TestDecideThenRecord: after a failed attempt the call decides first, then
// records: the attempt always counts (Failures, the streak), but only a call
// that stops on it has a final outcome (WindowFailures); a call rescued by a
// retry is no failed call, and neither is one that the caller canceled
// during the backoff, nor one whose retry the budget refused.
func TestDecideThenRecord(t *testing.T) {
	pol := Policy{
		Retry:   retry.Policy{MaxAttempts: 4, InitialBackoff: time.Nanosecond, MaxBackoff: time.Nanosecond},
		Breaker: breaker.Config{ConsecutiveFailures: -1, ThrottleK: -1},
	}
	unavailable := status.Error(codes.Unavailable, "down")
	opts := []grpc.CallOption{grpc.StaticMethod()}
	const m = "/pkg.Svc/M"
	failing := func(n int) grpc.UnaryInvoker {
		return func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
			if n > 0 {
				n--
				return unavailable
			}
			return nil
		}
	}
	check := func(t *testing.T, s *Suite, f func(), attempts, calls uint64) {
		t.Helper()
		b := s.lookup(nil, m).brk
		before := b.Counts()
		f()
		after := b.Counts()
		assert.Equal(t, attempts, after.Failures-before.Failures, "failed attempts")
		assert.Equal(t, calls, after.WindowFailures-before.WindowFailures, "failed calls")
	}
	reason := func(t *testing.T, err error, want retry.Reason) {
		t.Helper()
		var re *retry.Error
		require.ErrorAs(t, err, &re)
		require.Equal(t, want, re.Reason)
	}
	ctx := context.Background()

	s, err := New(map[string]Policy{"*": pol}, WithoutBudget())
	require.NoError(t, err)
	in := s.Unary()
	check(t, s, func() { require.NoError(t, in(ctx, m, nil, nil, nil, failing(1), opts...)) }, 1, 0)
	check(t, s, func() { reason(t, in(ctx, m, nil, nil, nil, failing(9), opts...), retry.Exhausted) }, 4, 1)
	check(t, s, func() { require.Error(t, in(ctx, m, nil, nil, nil, failing(9), append(opts, DisableRetry())...)) }, 1, 1)

	// Canceled during the backoff (OnRetry runs just before it).
	cctx, cancel := context.WithCancel(ctx)
	s, err = New(map[string]Policy{"*": pol}, WithoutBudget(), WithOnRetry(func(RetryEvent) { cancel() }))
	require.NoError(t, err)
	in = s.Unary()
	check(t, s, func() { reason(t, in(cctx, m, nil, nil, nil, failing(9), opts...), retry.Canceled) }, 1, 0)

	// A budget with no retry to give.
	s, err = New(map[string]Policy{"*": pol}, WithTokenBucket(1, 0.1))
	require.NoError(t, err)
	in = s.Unary()
	check(t, s, func() { reason(t, in(ctx, m, nil, nil, nil, failing(9), opts...), retry.BudgetExhausted) }, 1, 0)
}

// TestRetryContextsAreImmutable: each attempt's context keeps its own
// attempt number and header after later retries (contexts never change).
func TestRetryContextsAreImmutable(t *testing.T) {
	p := Policy{
		Retry:   retry.Policy{MaxAttempts: 6, InitialBackoff: time.Nanosecond, MaxBackoff: time.Nanosecond},
		Breaker: breaker.Config{Mode: breaker.Disabled},
	}
	s, err := New(map[string]Policy{"*": p}, WithoutBudget(), WithAttemptHeader("x-attempt"))
	require.NoError(t, err)
	var kept []context.Context
	fail := func(ctx context.Context, _ string, _, _ any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
		kept = append(kept, ctx)
		return status.Error(codes.Unavailable, "")
	}
	_ = s.Unary()(context.Background(), "/pkg.Svc/M", nil, nil, nil, fail)
	require.Len(t, kept, 6)
	for i, ctx := range kept {
		assert.Equal(t, i+1, Attempt(ctx), "attempt %d", i+1)
		md, _ := metadata.FromOutgoingContext(ctx)
		if i == 0 {
			assert.Empty(t, md.Get("x-attempt"))
		} else {
			assert.Equal(t, []string{strconv.Itoa(i)}, md.Get("x-attempt"), "attempt %d", i+1)
		}
	}
}
