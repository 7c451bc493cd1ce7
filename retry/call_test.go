package retry

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func TestCallNextDelaysAndExhaustion(t *testing.T) {
	p := Policy{MaxAttempts: 5, Jitter: NoJitter, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
	c := p.NewCall(nil)
	ctx := context.Background()
	var delays []time.Duration
	for {
		c.Begin()
		d, stop := c.Next(ctx, errSentinel, Backoff, t0)
		if stop != nil {
			assert.Equal(t, Exhausted, stop.Reason)
			assert.Equal(t, 5, stop.Attempts)
			assert.Same(t, errSentinel, stop.Err)
			break
		}
		delays = append(delays, d)
	}
	assert.Equal(t, []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond, 50 * time.Millisecond}, delays)
	assert.Equal(t, 5, c.Attempts())
}

func TestCallNextOneAttempt(t *testing.T) {
	p := Policy{MaxAttempts: 1}
	c := p.NewCall(nil)
	c.Begin()
	_, stop := c.Next(context.Background(), errSentinel, Backoff, t0)
	require.NotNil(t, stop)
	assert.Equal(t, Exhausted, stop.Reason)
	assert.Equal(t, 1, stop.Attempts)
}

func TestCallNextWithoutBegin(t *testing.T) {
	p := Policy{MaxAttempts: 2, Jitter: NoJitter}
	c := p.NewCall(nil)
	d, stop := c.Next(context.Background(), errSentinel, Backoff, t0)
	require.Nil(t, stop)
	assert.Equal(t, DefaultInitialBackoff, d)
	assert.Equal(t, 1, c.Attempts(), "the failed attempt counts as the first")
}

func TestCallNextAfter(t *testing.T) {
	p := Policy{MaxAttempts: 10, Jitter: NoJitter, InitialBackoff: 100 * time.Millisecond, MaxBackoff: 10 * time.Second, MaxPushback: 2 * time.Second}
	c := p.NewCall(nil)
	ctx := context.Background()
	var got []time.Duration
	for _, dec := range []Decision{Backoff, Backoff, After(7 * time.Millisecond), Backoff, Backoff, After(time.Hour), Backoff, After(0)} {
		c.Begin()
		d, stop := c.Next(ctx, errSentinel, dec, t0)
		require.Nil(t, stop)
		got = append(got, d)
	}
	assert.Equal(t, []time.Duration{
		100 * time.Millisecond, 200 * time.Millisecond,
		7 * time.Millisecond,                           // exact, no jitter
		100 * time.Millisecond, 200 * time.Millisecond, // exponent reset
		2 * time.Second,        // capped at MaxPushback
		100 * time.Millisecond, // reset again
		0,
	}, got)

	// After is never jittered, whatever the jitter mode.
	p.Jitter = FullJitter
	c = p.NewCall(nil)
	for range 3 {
		c.Begin()
		d, stop := c.Next(ctx, errSentinel, After(1234*time.Millisecond), t0)
		require.Nil(t, stop)
		assert.Equal(t, 1234*time.Millisecond, d)
	}
}

func TestCallNextCheckOrder(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	deadline, cancel2 := context.WithDeadline(context.Background(), t0.Add(time.Second))
	defer cancel2()
	empty := func() *RatioBudget {
		b, err := NewBudget(BudgetConfig{MinRetriesPerSecond: 1e-9})
		require.NoError(t, err)
		return b
	}
	p := Policy{MaxAttempts: 2, Jitter: NoJitter, InitialBackoff: 100 * time.Millisecond, MinAttemptTime: 10 * time.Millisecond}

	for _, tc := range []struct {
		name     string
		ctx      context.Context
		dec      Decision
		attempts int
		budget   *RatioBudget
		now      time.Time
		want     Reason // "" = a delay
	}{
		{"canceled beats everything", canceled, Stop, 5, empty(), t0.Add(time.Hour), Canceled},
		{"stop beats exhausted", context.Background(), Stop, 5, empty(), t0, NotRetryable},
		{"exhausted beats budget", context.Background(), Backoff, 2, empty(), t0, Exhausted},
		{"budget beats deadline", deadline, Backoff, 1, empty(), t0.Add(time.Second), BudgetExhausted},
		{"deadline", deadline, Backoff, 1, nil, t0.Add(time.Second), Deadline},
		{"deadline: remaining < delay + MinAttemptTime", deadline, Backoff, 1, nil, t0.Add(890*time.Millisecond + 1), Deadline},
		{"fits exactly", deadline, Backoff, 1, nil, t0.Add(890 * time.Millisecond), ""},
		{"pushback does not fit", deadline, After(2 * time.Second), 1, nil, t0, Deadline},
		{"pushback fits", deadline, After(900 * time.Millisecond), 1, nil, t0, ""},
		{"past deadline by the given clock", deadline, Backoff, 1, nil, t0.Add(2 * time.Second), Deadline},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := p.NewCall(tc.budget)
			for range tc.attempts {
				c.Begin()
			}
			d, stop := c.Next(tc.ctx, errSentinel, tc.dec, tc.now)
			if tc.want == "" {
				require.Nil(t, stop)
				assert.Positive(t, d)
				return
			}
			require.NotNil(t, stop)
			assert.Zero(t, d)
			assert.Equal(t, tc.want, stop.Reason)
			assert.Equal(t, tc.attempts, stop.Attempts)
			assert.ErrorIs(t, stop, errSentinel)
		})
	}
}

func TestCallDeadlineDoesNotChargeBudget(t *testing.T) {
	b, err := NewBudget(BudgetConfig{Ratio: 1, MinRetriesPerSecond: 0.1}) // reserve: 1 retry
	require.NoError(t, err)
	ctx, cancel := context.WithDeadline(context.Background(), t0.Add(time.Second))
	defer cancel()
	p := Policy{Jitter: NoJitter}
	now := t0
	b.origin, b.clock = now, func() time.Time { return now }

	c := p.NewCall(b)
	c.Begin()
	_, stop := c.Next(ctx, errSentinel, After(time.Hour), now)
	require.NotNil(t, stop)
	assert.Equal(t, Deadline, stop.Reason)
	assert.InDelta(t, 1.0, b.Snapshot().Balance, 1e-9, "a doomed retry costs nothing")

	c = p.NewCall(b)
	c.Begin()
	_, stop = c.Next(context.Background(), errSentinel, Backoff, now)
	require.Nil(t, stop)
	assert.InDelta(t, 0.0, b.Snapshot().Balance, 1e-9)
}

func TestCallDoneInformsBudget(t *testing.T) {
	clock := t0
	newB := func() *RatioBudget {
		b, err := NewBudget(BudgetConfig{Ratio: 0.5, MinRetriesPerSecond: 0.2}) // reserve 2 retries per 10s
		require.NoError(t, err)
		b.origin, b.clock = clock, func() time.Time { return clock }
		return b
	}
	p := Policy{Jitter: NoJitter}
	ctx := context.Background()

	// First-attempt success: one deposit = 0.5 retry.
	b := newB()
	c := p.NewCall(b)
	c.Begin()
	c.Done(nil, false)
	assert.InDelta(t, 2.5, b.Snapshot().Balance, 1e-9)

	// Non-retryable failure: a deposit too.
	c = p.NewCall(b)
	c.Begin()
	_, stop := c.Next(ctx, errSentinel, Stop, clock)
	require.NotNil(t, stop)
	c.Done(errSentinel, false)
	assert.InDelta(t, 3.0, b.Snapshot().Balance, 1e-9)

	// Retried and succeeded: withdrawal refunded, plus a deposit.
	c = p.NewCall(b)
	c.Begin()
	_, stop = c.Next(ctx, errSentinel, Backoff, clock)
	require.Nil(t, stop)
	assert.InDelta(t, 2.0, b.Snapshot().Balance, 1e-9)
	c.Begin()
	c.Done(nil, false)
	assert.InDelta(t, 3.5, b.Snapshot().Balance, 1e-9)

	// A retry granted and abandoned before it began is refunded.
	c = p.NewCall(b)
	c.Begin()
	_, stop = c.Next(ctx, errSentinel, Backoff, clock)
	require.Nil(t, stop)
	assert.InDelta(t, 2.5, b.Snapshot().Balance, 1e-9)
	c.Done(errSentinel, true)
	assert.InDelta(t, 3.5, b.Snapshot().Balance, 1e-9)

	// Exhausted with a retryable error: no deposit, no refund.
	c = p.NewCall(b)
	for {
		c.Begin()
		_, stop = c.Next(ctx, errSentinel, Backoff, clock)
		if stop != nil {
			break
		}
	}
	assert.Equal(t, Exhausted, stop.Reason)
	c.Done(errSentinel, true)
	assert.InDelta(t, 0.5, b.Snapshot().Balance, 1e-9, "3 retries withdrawn for good")

	// nil budget: nothing to do, nothing breaks.
	c = p.NewCall(nil)
	c.Begin()
	c.Done(nil, false)
	c.Done(errors.New("x"), false)
}

// A retry that Next granted is given back if Next is called again before the retry began.
func TestCallNextAgainBeforeBeginRefunds(t *testing.T) {
	clock := t0
	b, err := NewBudget(BudgetConfig{Ratio: 1, MinRetriesPerSecond: 0.2}) // reserve 2 retries
	require.NoError(t, err)
	b.origin, b.clock = clock, func() time.Time { return clock }
	ctx := context.Background()
	p := Policy{Jitter: NoJitter}
	c := p.NewCall(b)
	c.Begin()
	_, stop := c.Next(ctx, errSentinel, Backoff, clock)
	require.Nil(t, stop)
	assert.InDelta(t, 1.0, b.Snapshot().Balance, 1e-9)
	_, stop = c.Next(ctx, errSentinel, Backoff, clock)
	require.Nil(t, stop)
	assert.InDelta(t, 1.0, b.Snapshot().Balance, 1e-9, "one retry charged, not two")
	c.Begin()
	c.Done(nil, false)
	assert.InDelta(t, 3.0, b.Snapshot().Balance, 1e-9, "a deposit and the refund of the retry that ran")
}

func TestCallTokenBucketFailedOnRetryableOnly(t *testing.T) {
	b, err := NewTokenBucket(10, 0.1)
	require.NoError(t, err)
	p := Policy{MaxAttempts: 1}
	for range 3 {
		c := p.NewCall(b)
		c.Begin()
		_, stop := c.Next(context.Background(), errSentinel, Stop, t0)
		require.NotNil(t, stop)
	}
	assert.Equal(t, 10.0, b.Snapshot().Balance, "non-retryable failures cost no token")
	c := p.NewCall(b)
	c.Begin()
	_, stop := c.Next(context.Background(), errSentinel, Backoff, t0)
	require.NotNil(t, stop)
	assert.Equal(t, Exhausted, stop.Reason)
	assert.Equal(t, 9.0, b.Snapshot().Balance, "every retryable failed attempt costs a token, the last one too")
}
