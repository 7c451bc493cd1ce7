package retry

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// attemptLog records when each attempt started (relative to the bubble's start).
type attemptLog struct {
	start time.Time
	at    []time.Duration
}

func (l *attemptLog) op(cost time.Duration, err error) func(context.Context) error {
	return func(ctx context.Context) error {
		l.at = append(l.at, time.Since(l.start))
		if cost > 0 {
			time.Sleep(cost)
		}
		return err
	}
}

func ms(v ...int) []time.Duration {
	out := make([]time.Duration, len(v))
	for i, x := range v {
		out[i] = time.Duration(x) * time.Millisecond
	}
	return out
}

func TestDoExactDelays(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := &attemptLog{start: time.Now()}
		p := Policy{MaxAttempts: 5, Jitter: NoJitter, InitialBackoff: 100 * time.Millisecond, MaxBackoff: 500 * time.Millisecond}
		var retries []string
		err := Do(t.Context(), p, l.op(10*time.Millisecond, errSentinel), nil,
			WithOnRetry(func(attempt int, delay time.Duration, err error) {
				retries = append(retries, fmt.Sprintf("%d %v %v", attempt, delay, err))
			}))
		// attempts take 10ms; delays 100, 200, 400, 500 (capped)
		assert.Equal(t, ms(0, 110, 320, 730, 1240), l.at)
		assert.Equal(t, []string{
			"1 100ms unavailable", "2 200ms unavailable", "3 400ms unavailable", "4 500ms unavailable",
		}, retries)
		var re *Error
		require.ErrorAs(t, err, &re)
		assert.Equal(t, Exhausted, re.Reason)
		assert.Equal(t, 5, re.Attempts)
		assert.ErrorIs(t, err, errSentinel, "the last error is preserved")
		assert.Equal(t, 1250*time.Millisecond, time.Since(l.start), "returns right after the last attempt")
	})
}

func TestDoSucceedsAfterRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		calls := 0
		v, err := DoValue(t.Context(), Policy{Jitter: NoJitter}, func(ctx context.Context) (string, error) {
			calls++
			if calls < 3 {
				return "partial", errSentinel
			}
			return "ok", nil
		}, nil)
		require.NoError(t, err)
		assert.Equal(t, "ok", v)
		assert.Equal(t, 3, calls)
		assert.Equal(t, 75*time.Millisecond, time.Since(start), "25ms + 50ms")

		v, err = DoValue(t.Context(), Policy{MaxAttempts: 2, Jitter: NoJitter}, func(ctx context.Context) (string, error) {
			return "partial", errSentinel
		}, nil)
		assert.ErrorIs(t, err, errSentinel)
		assert.Empty(t, v, "the zero value on failure")
	})
}

func TestDoNotRetryable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		errFatal := errors.New("invalid argument")
		l := &attemptLog{start: time.Now()}
		err := Do(t.Context(), Policy{}, l.op(0, errFatal), func(err error) Decision {
			if errors.Is(err, errFatal) {
				return Stop
			}
			return Backoff
		})
		var re *Error
		require.ErrorAs(t, err, &re)
		assert.Equal(t, NotRetryable, re.Reason)
		assert.Equal(t, 1, re.Attempts)
		assert.Same(t, errFatal, re.Err)
		assert.Len(t, l.at, 1)
		assert.Zero(t, time.Since(l.start))
	})
}

func TestDoInvalidPolicy(t *testing.T) {
	called := false
	err := Do(context.Background(), Policy{MaxAttempts: -1}, func(context.Context) error { called = true; return nil }, nil)
	require.EqualError(t, err, "retry: Policy.MaxAttempts: must be at least 1, got -1")
	assert.False(t, called)
	_, err = DoValue(context.Background(), Policy{Multiplier: 0.5}, func(context.Context) (int, error) { called = true; return 1, nil }, nil)
	require.Error(t, err)
	assert.False(t, called)
}

func TestDoDeadlineCutoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		dl, _ := ctx.Deadline()
		l := &attemptLog{start: time.Now()}
		p := Policy{MaxAttempts: 10, Jitter: NoJitter, InitialBackoff: 100 * time.Millisecond, MaxBackoff: 10 * time.Second, MinAttemptTime: 50 * time.Millisecond}
		err := Do(ctx, p, func(actx context.Context) error {
			require.False(t, time.Now().After(dl), "an attempt started past the deadline")
			return l.op(100*time.Millisecond, errSentinel)(actx)
		}, nil)
		// 0-100 attempt, wait 100, 200-300 attempt, wait 200, 500-600 attempt; next needs
		// 400ms wait + 50ms minimum: 600+450 > 1000, so it is not started.
		assert.Equal(t, ms(0, 200, 500), l.at)
		var re *Error
		require.ErrorAs(t, err, &re)
		assert.Equal(t, Deadline, re.Reason)
		assert.Equal(t, 3, re.Attempts)
		assert.ErrorIs(t, err, errSentinel)
		assert.Equal(t, 600*time.Millisecond, time.Since(l.start), "gives up at once, without sleeping toward the deadline")
		assert.NoError(t, ctx.Err())
	})
}

func TestDoDeadlineExactFit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// remaining == delay + MinAttemptTime: the retry starts.
		ctx, cancel := context.WithTimeout(t.Context(), 150*time.Millisecond)
		defer cancel()
		l := &attemptLog{start: time.Now()}
		p := Policy{MaxAttempts: 3, Jitter: NoJitter, InitialBackoff: 100 * time.Millisecond, MinAttemptTime: 50 * time.Millisecond}
		err := Do(ctx, p, l.op(0, errSentinel), nil)
		assert.Equal(t, ms(0, 100), l.at)
		var re *Error
		require.ErrorAs(t, err, &re)
		assert.Equal(t, Deadline, re.Reason)
		assert.LessOrEqual(t, time.Since(l.start), 150*time.Millisecond)
	})
}

func TestDoPushbackBeyondDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		l := &attemptLog{start: time.Now()}
		err := Do(ctx, Policy{}, l.op(0, errSentinel), func(error) Decision { return After(5 * time.Second) })
		var re *Error
		require.ErrorAs(t, err, &re)
		assert.Equal(t, Deadline, re.Reason, "a server delay that does not fit fails fast")
		assert.Zero(t, time.Since(l.start))
	})
}

func TestDoCanceledMidSleep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var timers []*time.Timer
		waitTimerHook = func(tm *time.Timer) { timers = append(timers, tm) }
		defer func() { waitTimerHook = nil }()

		ctx, cancel := context.WithCancel(t.Context())
		l := &attemptLog{start: time.Now()}
		go func() {
			time.Sleep(1234 * time.Millisecond)
			cancel()
		}()
		p := Policy{MaxAttempts: 3, Jitter: NoJitter, InitialBackoff: time.Hour, MaxBackoff: time.Hour}
		err := Do(ctx, p, l.op(0, errSentinel), nil)
		assert.Equal(t, 1234*time.Millisecond, time.Since(l.start), "returns as soon as ctx ends")
		var re *Error
		require.ErrorAs(t, err, &re)
		assert.Equal(t, Canceled, re.Reason)
		assert.Equal(t, 1, re.Attempts, "the abandoned retry is not counted")
		assert.ErrorIs(t, err, errSentinel, "the last attempt's error, annotated")
		require.Len(t, timers, 1)
		assert.False(t, timers[0].Stop(), "the timer was already stopped")
	})
}

func TestDoCanceledDuringAttempt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		l := &attemptLog{start: time.Now()}
		err := Do(ctx, Policy{}, func(ctx context.Context) error {
			l.at = append(l.at, time.Since(l.start))
			cancel()
			return ctx.Err()
		}, nil)
		var re *Error
		require.ErrorAs(t, err, &re)
		assert.Equal(t, Canceled, re.Reason)
		assert.ErrorIs(t, err, context.Canceled)
		assert.Len(t, l.at, 1, "no retry once the caller's ctx is done")
	})
}

func TestWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var timers []*time.Timer
		waitTimerHook = func(tm *time.Timer) { timers = append(timers, tm) }
		defer func() { waitTimerHook = nil }()

		start := time.Now()
		require.NoError(t, Wait(t.Context(), 3*time.Second))
		assert.Equal(t, 3*time.Second, time.Since(start))

		require.NoError(t, Wait(t.Context(), 0))
		require.NoError(t, Wait(t.Context(), -time.Second))
		assert.Equal(t, 3*time.Second, time.Since(start), "d <= 0 returns at once")

		done, cancel := context.WithCancel(t.Context())
		cancel()
		assert.ErrorIs(t, Wait(done, 0), context.Canceled, "d <= 0 with ctx done: ctx.Err()")
		assert.ErrorIs(t, Wait(done, time.Hour), context.Canceled)
		assert.Equal(t, 3*time.Second, time.Since(start))

		ctx, cancel2 := context.WithTimeout(t.Context(), 500*time.Millisecond)
		defer cancel2()
		assert.ErrorIs(t, Wait(ctx, time.Hour), context.DeadlineExceeded)
		assert.Equal(t, 3500*time.Millisecond, time.Since(start))

		require.Len(t, timers, 2, "a timer only when there is something to wait for")
		for _, tm := range timers {
			assert.False(t, tm.Stop(), "no timer left running")
		}
	})
}

func TestDoPushback(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := &attemptLog{start: time.Now()}
		decisions := []Decision{Backoff, Backoff, After(7 * time.Millisecond), Backoff, After(time.Hour), Backoff, Backoff}
		i := 0
		p := Policy{MaxAttempts: 7, Jitter: NoJitter, InitialBackoff: 100 * time.Millisecond, MaxPushback: 2 * time.Second}
		err := Do(t.Context(), p, l.op(0, errSentinel), func(error) Decision { i++; return decisions[i-1] })
		var re *Error
		require.ErrorAs(t, err, &re)
		assert.Equal(t, Exhausted, re.Reason)
		// waits: 100, 200, 7 (exact), 100 (exponent reset), 2000 (MaxPushback), 100 (reset)
		assert.Equal(t, ms(0, 100, 300, 307, 407, 2407, 2507), l.at)
	})
}

func TestDoAttemptTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		parentDL, _ := ctx.Deadline()
		l := &attemptLog{start: time.Now()}
		var deadlines []time.Time
		p := Policy{MaxAttempts: 10, Jitter: NoJitter, InitialBackoff: 100 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, AttemptTimeout: 300 * time.Millisecond}
		err := Do(ctx, p, func(actx context.Context) error {
			l.at = append(l.at, time.Since(l.start))
			dl, ok := actx.Deadline()
			require.True(t, ok)
			deadlines = append(deadlines, dl)
			<-actx.Done() // a hung server: only the attempt timeout ends it
			return actx.Err()
		}, nil)
		// attempts at 0 (to 300), 400 (to 700); the third would need 100+1ms at 800: it fits
		// until 1000, and its context ends at the parent's deadline, not at 800+300.
		assert.Equal(t, ms(0, 400, 800), l.at)
		require.Len(t, deadlines, 3)
		assert.Equal(t, l.start.Add(300*time.Millisecond), deadlines[0])
		assert.Equal(t, l.start.Add(700*time.Millisecond), deadlines[1])
		assert.Equal(t, parentDL, deadlines[2], "the attempt timeout never extends the caller's deadline")
		var re *Error
		require.ErrorAs(t, err, &re)
		assert.Equal(t, Canceled, re.Reason, "the caller's deadline passed during the last attempt")
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Equal(t, time.Second, time.Since(l.start), "never past the caller's deadline")
	})
}

func TestDoBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, err := NewBudget(BudgetConfig{Ratio: 0.2, MinRetriesPerSecond: 1e-9})
		require.NoError(t, err)
		p := Policy{Jitter: NoJitter}
		var calls atomic.Int32
		failing := func(context.Context) error { calls.Add(1); return errSentinel }

		err = Do(t.Context(), p, failing, nil, WithBudget(b))
		var re *Error
		require.ErrorAs(t, err, &re)
		assert.Equal(t, BudgetExhausted, re.Reason, "no deposits yet: no retry")
		assert.Equal(t, 1, re.Attempts)

		for range 5 { // 5 successes deposit 5 × 0.2 = 1 retry
			require.NoError(t, Do(t.Context(), p, func(context.Context) error { return nil }, nil, WithBudget(b)))
		}
		calls.Store(0)
		err = Do(t.Context(), p, failing, nil, WithBudget(b))
		require.ErrorAs(t, err, &re)
		assert.Equal(t, BudgetExhausted, re.Reason)
		assert.Equal(t, int32(2), calls.Load(), "exactly one retry")
		s := b.Snapshot()
		assert.Equal(t, uint64(1), s.Allowed)
		assert.Equal(t, uint64(2), s.Refused)
	})
}

func TestDoOptions(t *testing.T) {
	// Options from other packages can only embed ours; they still apply.
	type wrapped struct{ Option }
	b, err := NewBudget(BudgetConfig{})
	require.NoError(t, err)
	o := collect([]Option{nil, wrapped{WithBudget(b)}, WithOnRetry(func(int, time.Duration, error) {})})
	assert.Same(t, b, o.budget)
	assert.NotNil(t, o.onRetry)
	o = collect([]Option{WithBudget(b), WithBudget(nil)})
	assert.Nil(t, o.budget, "the last option wins")
}

func TestDoZeroAllocs(t *testing.T) {
	ctx := context.Background()
	p := Policy{}
	ok := func(context.Context) error { return nil }
	b, err := NewBudget(BudgetConfig{})
	require.NoError(t, err)
	assert.Zero(t, testing.AllocsPerRun(1000, func() { _ = Do(ctx, p, ok, nil) }))
	assert.Zero(t, testing.AllocsPerRun(1000, func() { _ = Do(ctx, p, ok, nil, WithBudget(b)) }))
	assert.Zero(t, testing.AllocsPerRun(1000, func() {
		_, _ = DoValue(ctx, p, func(context.Context) (int, error) { return 42, nil }, nil)
	}))
}
