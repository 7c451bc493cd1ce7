package retry

import (
	"context"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// newTestBudget returns a ratio budget whose origin and flush clock are t0 + *clock.
func newTestBudget(t testing.TB, cfg BudgetConfig, clock *time.Time) *RatioBudget {
	t.Helper()
	b, err := NewBudget(cfg)
	require.NoError(t, err)
	b.origin = *clock
	b.clock = func() time.Time { return *clock }
	return b
}

func TestBudgetConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  BudgetConfig
		want string
	}{
		{BudgetConfig{}, ""},
		{BudgetConfig{Ratio: 1000, MinRetriesPerSecond: 1e6, Window: 10 * time.Millisecond}, ""},
		{BudgetConfig{Ratio: 1e-300}, ""},
		{BudgetConfig{Ratio: -0.1}, "retry: BudgetConfig.Ratio: must be in (0, 1000], got -0.1"},
		{BudgetConfig{Ratio: 1000.5}, "retry: BudgetConfig.Ratio: must be in (0, 1000], got 1000.5"},
		{BudgetConfig{Ratio: math.NaN()}, "retry: BudgetConfig.Ratio: must be in (0, 1000], got NaN"},
		{BudgetConfig{MinRetriesPerSecond: -1}, "retry: BudgetConfig.MinRetriesPerSecond: must be finite and not negative, got -1"},
		{BudgetConfig{MinRetriesPerSecond: math.Inf(1)}, "retry: BudgetConfig.MinRetriesPerSecond: must be finite and not negative, got +Inf"},
		{BudgetConfig{Window: -time.Second}, "retry: BudgetConfig.Window: must be at least 10ms, got -1s"},
		{BudgetConfig{Window: time.Millisecond}, "retry: BudgetConfig.Window: must be at least 10ms, got 1ms"},
	} {
		err := tc.cfg.Validate()
		_, nerr := NewBudget(tc.cfg)
		if tc.want == "" {
			assert.NoError(t, err, "%+v", tc.cfg)
			assert.NoError(t, nerr, "%+v", tc.cfg)
			continue
		}
		assert.EqualError(t, err, tc.want)
		assert.EqualError(t, nerr, tc.want)
	}
}

func TestNewTokenBucketValidate(t *testing.T) {
	for _, tc := range []struct {
		max, ratio float64
		ok         bool
	}{
		{10, 0.1, true}, {1000, 1000, true}, {0.001, 0.001, true}, {1, 1e300, true},
		{0, 0.1, false}, {-1, 0.1, false}, {1000.1, 0.1, false}, {math.NaN(), 0.1, false}, {math.Inf(1), 0.1, false},
		{10, 0, false}, {10, -1, false}, {10, 0.0009, false}, {10, math.NaN(), false}, {10, math.Inf(1), false},
	} {
		b, err := NewTokenBucket(tc.max, tc.ratio)
		if tc.ok {
			require.NoError(t, err, "%v %v", tc.max, tc.ratio)
			assert.Equal(t, tc.max, b.Snapshot().MaxTokens)
			continue
		}
		assert.Error(t, err, "%v %v", tc.max, tc.ratio)
	}
	_, err := NewTokenBucket(0, 1)
	assert.EqualError(t, err, "retry: NewTokenBucket maxTokens: must be in (0, 1000], got 0")
	_, err = NewTokenBucket(1, 0)
	assert.EqualError(t, err, "retry: NewTokenBucket tokenRatio: must be finite and at least 0.001, got 0")
}

func TestNilBudget(t *testing.T) {
	var b *RatioBudget
	assert.True(t, b.AllowAt(t0))
	assert.True(t, b.wouldAllow(t0))
	b.FailedAt(t0)
	b.Succeeded(true)
	b.NotRetryable()
	b.refund()
	assert.Equal(t, BudgetSnapshot{}, b.Snapshot())
	var tb *TokenBucket
	assert.True(t, tb.AllowAt(t0))
	tb.FailedAt(t0)
	tb.Succeeded(true)
	assert.Equal(t, BudgetSnapshot{}, tb.Snapshot())
	var none Budget
	c := (&Policy{}).NewCall(none)
	_, stop := c.Next(context.Background(), errSentinel, Backoff, t0)
	assert.Nil(t, stop, "a nil Budget allows every retry")
	c.Done(nil, false)
}

func TestBudgetRatioArithmetic(t *testing.T) {
	now := t0
	b := newTestBudget(t, BudgetConfig{}, &now) // 0.2, 1/s, 10s: reserve 10 retries
	s := b.Snapshot()
	assert.Equal(t, 10.0, s.Reserve)
	assert.Equal(t, 10.0, s.Balance)

	for range 10 {
		require.True(t, b.AllowAt(now))
	}
	assert.False(t, b.AllowAt(now), "reserve spent")
	for range 4 {
		b.Succeeded(false)
	}
	assert.False(t, b.AllowAt(now), "4 deposits = 0.8 retry")
	b.NotRetryable()
	assert.True(t, b.AllowAt(now), "5 deposits = 1 retry; Allow flushes pending deposits")
	assert.False(t, b.AllowAt(now))

	b.Succeeded(true) // a retried success: deposit + refund of one retry
	assert.InDelta(t, 1.2, b.Snapshot().Balance, 1e-9)
	s = b.Snapshot()
	assert.Equal(t, uint64(11), s.Allowed)
	assert.Equal(t, uint64(3), s.Refused)

	// Withdrawals expire with their slot: after one Window, the reserve is whole again and
	// the deposits are gone.
	now = now.Add(10 * time.Second)
	assert.InDelta(t, 10.0, b.Snapshot().Balance, 1e-9)
}

func TestBudgetSlotsExpire(t *testing.T) {
	now := t0
	b := newTestBudget(t, BudgetConfig{Ratio: 1, MinRetriesPerSecond: 1e-9, Window: 10 * time.Second}, &now)
	deposit := func(n int) {
		for range n {
			b.Succeeded(false)
		}
	}
	deposit(3)
	assert.InDelta(t, 3.0, b.Snapshot().Balance, 1e-6, "Snapshot flushes into slot 0")
	now = t0.Add(4500 * time.Millisecond)
	b.sync(now, true) // a deposit counts in the slot last rotated to: rotate, as traffic would
	deposit(2)        // slot 4
	assert.InDelta(t, 5.0, b.Snapshot().Balance, 1e-6)
	now = t0.Add(9999 * time.Millisecond)
	assert.InDelta(t, 5.0, b.Snapshot().Balance, 1e-6, "slot 0 lives until 10s")
	now = t0.Add(10 * time.Second)
	assert.InDelta(t, 2.0, b.Snapshot().Balance, 1e-6, "slot 0 expired")
	require.True(t, b.AllowAt(now))
	now = t0.Add(13999 * time.Millisecond)
	assert.InDelta(t, 1.0, b.Snapshot().Balance, 1e-6)
	now = t0.Add(14 * time.Second)
	assert.InDelta(t, -1.0, b.Snapshot().Balance, 1e-6, "slot 4 expired; the withdrawal in slot 10 lives on")
	assert.False(t, b.AllowAt(now))
	now = t0.Add(20 * time.Second)
	assert.InDelta(t, 0.0, b.Snapshot().Balance, 1e-6)
	now = t0.Add(time.Hour)
	assert.InDelta(t, 0.0, b.Snapshot().Balance, 1e-6)

	// A time before the last rotation counts as the current slot.
	deposit(1)
	assert.True(t, b.AllowAt(t0))
	assert.InDelta(t, 0.0, b.Snapshot().Balance, 1e-6)
	// Times before the origin do not panic.
	b2 := newTestBudget(t, BudgetConfig{}, &now)
	assert.True(t, b2.AllowAt(now.Add(-time.Hour-time.Nanosecond)))
}

// Two goroutines can both find a slot boundary passed and queue for the rotation lock; the one
// with the older time comes second and must not move the epoch back (which would clear the
// current slot again at the next rotation).
func TestBudgetRotateNeverGoesBack(t *testing.T) {
	now := t0.Add(5 * time.Second)
	b := newTestBudget(t, BudgetConfig{Ratio: 1, MinRetriesPerSecond: 1e-9}, &now)
	b.origin = t0
	b.NotRetryable()
	assert.InDelta(t, 1.0, b.Snapshot().Balance, 1e-6, "deposited in slot 5")
	b.mu.Lock()
	b.rotate(3) // the late goroutine, with a time in slot 3
	b.mu.Unlock()
	assert.Equal(t, int64(5), b.epoch.Load())
	now = t0.Add(5500 * time.Millisecond)
	assert.InDelta(t, 1.0, b.Snapshot().Balance, 1e-6, "the deposit lives until 15s")
	now = t0.Add(15 * time.Second)
	assert.InDelta(t, 0.0, b.Snapshot().Balance, 1e-6)
}

// pendingDeposits returns the deposits waiting in b's stripes.
func pendingDeposits(b *RatioBudget) (n, stripes int64) {
	for i := range b.stripes {
		if c := b.stripes[i].v.Load() & countMask; c != 0 {
			n += c
			stripes++
		}
	}
	return n, stripes
}

// Succeeded(false) writes only a stripe: a clock read on one deposit in 64 only, no fold while the balance covers Allow, and a fold of every stripe when it does not.
func TestBudgetSucceededStriped(t *testing.T) {
	now := t0
	b := newTestBudget(t, BudgetConfig{Ratio: 1, MinRetriesPerSecond: 1e-9}, &now)
	require.GreaterOrEqual(t, len(b.stripes), 4*runtime.GOMAXPROCS(0))
	require.LessOrEqual(t, len(b.stripes), maxStripes)
	require.Zero(t, len(b.stripes)&(len(b.stripes)-1), "a power of two")
	var reads atomic.Int64
	b.clock = func() time.Time { reads.Add(1); return now }

	for range 1600 {
		b.Succeeded(false)
	}
	n, _ := pendingDeposits(b)
	assert.Equal(t, int64(1600), n, "every deposit waits in a stripe")
	assert.InDelta(t, 1600/flushEvery, reads.Load(), float64(len(b.stripes)), "a clock read on every 64th deposit of a stripe")
	assert.Equal(t, b.reserve, b.total.Load(), "nothing folded yet")

	// The balance (the reserve, 1e-8 retries) is short: Allow folds every stripe.
	require.True(t, b.AllowAt(now))
	n, _ = pendingDeposits(b)
	assert.Zero(t, n)
	assert.InDelta(t, 1599, float64(b.total.Load())/float64(b.withdraw), 1e-6)
	// Now the balance covers the next Allow: the stripes are left alone.
	b.Succeeded(false)
	require.True(t, b.AllowAt(now))
	n, _ = pendingDeposits(b)
	assert.Equal(t, int64(1), n)
	assert.InDelta(t, 1599.0, b.Snapshot().Balance, 1e-6, "Snapshot folds")
	assert.Zero(t, testing.AllocsPerRun(100, func() { b.Succeeded(false) }))
	assert.Zero(t, testing.AllocsPerRun(100, func() { b.AllowAt(now) }))
}

// Goroutines running at once deposit into different stripes (by their stack addresses), and
// every deposit is counted once.
func TestBudgetStripesSpread(t *testing.T) {
	now := t0
	b := newTestBudget(t, BudgetConfig{Ratio: 1, MinRetriesPerSecond: 1e-9}, &now)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 1000 {
				b.Succeeded(false)
			}
		})
	}
	wg.Wait()
	n, used := pendingDeposits(b)
	assert.Greater(t, used, int64(1), "16 goroutines, one stripe")
	assert.InDelta(t, 16000, float64(n)+float64(b.total.Load()-b.reserve)/depositUnits, 1e-6)
	assert.InDelta(t, 16000, b.Snapshot().Balance, 1e-6)
}

// A deposit counts in the slot of the epoch it was made in, however late it is folded: it
// expires with that slot, and a deposit folded after its slot expired is dropped (it never
// outlives its Window).
func TestBudgetDepositsExpireWithTheirEpoch(t *testing.T) {
	t.Run("folded later, expires on time", func(t *testing.T) {
		now := t0
		b := newTestBudget(t, BudgetConfig{Ratio: 1, MinRetriesPerSecond: 1e-9}, &now)
		b.clock = func() time.Time { return now } // no rotation by the deposits' flushes below
		for range 100 {
			b.NotRetryable()
		}
		now = t0.Add(5 * time.Second)
		assert.InDelta(t, 100, b.Snapshot().Balance, 1e-6, "folded at epoch 5 into epoch 0's slot")
		now = t0.Add(10 * time.Second)
		assert.InDelta(t, 0, b.Snapshot().Balance, 1e-6, "expired with epoch 0")
	})
	t.Run("folded after expiry, dropped", func(t *testing.T) {
		now := t0
		b := newTestBudget(t, BudgetConfig{Ratio: 1, MinRetriesPerSecond: 1e-9}, &now)
		for range 100 {
			b.Succeeded(false)
		}
		now = t0.Add(10*time.Second + 500*time.Millisecond)
		assert.InDelta(t, 0, b.Snapshot().Balance, 1e-6)
		assert.False(t, b.AllowAt(now))
	})
	t.Run("a stripe meeting a new epoch folds its old deposits there", func(t *testing.T) {
		now := t0
		b := newTestBudget(t, BudgetConfig{Ratio: 1, MinRetriesPerSecond: 1e-9}, &now)
		for range 50 {
			b.Succeeded(false)
		}
		now = t0.Add(3 * time.Second)
		b.sync(now, true) // epoch 3
		for range 50 * len(b.stripes) {
			b.Succeeded(false)
		}
		// The goroutine's stripe met epoch 3, so it folded its epoch-0 deposits into slot 0; the
		// epoch-3 ones wait.
		var old int64
		for i := range b.stripes {
			if x := b.stripes[i].v.Load(); x>>countBits != 4 && x&countMask != 0 {
				old++
			}
		}
		assert.Zero(t, old, "no stripe still holds epoch-0 deposits")
		assert.Equal(t, int64(50*depositUnits), b.slots[0].Load(), "the epoch-0 deposits, in slot 0")
		now = t0.Add(10 * time.Second)
		assert.InDelta(t, float64(50*len(b.stripes)), b.Snapshot().Balance, 1e-6, "epoch 0 expired, epoch 3 kept")
	})
}

func TestBudgetTokenBucketA6(t *testing.T) {
	b, err := NewTokenBucket(10, 0.1)
	require.NoError(t, err)
	tokens := func() float64 { return b.Snapshot().Balance }
	assert.Equal(t, 10.0, tokens(), "starts full")
	b.Succeeded(false)
	assert.Equal(t, 10.0, tokens(), "clamped at maxTokens")

	for i := 1; i <= 4; i++ {
		b.FailedAt(t0)
		assert.True(t, b.AllowAt(t0), "after %d failures: %v tokens > 5", i, tokens())
	}
	b.FailedAt(t0)
	assert.Equal(t, 5.0, tokens())
	assert.False(t, b.AllowAt(t0), "after 5 retryable failures from full, retries stop (5 is not > 5)")
	b.Succeeded(false)
	assert.Equal(t, 5.1, tokens())
	assert.True(t, b.AllowAt(t0), "5.1 > 5")
	assert.Equal(t, 5.1, tokens(), "Allow charges nothing in A6 mode")

	for range 20 {
		b.FailedAt(t0)
	}
	assert.Equal(t, 0.0, tokens(), "clamped at 0")
	for range 50 {
		b.Succeeded(true)
	}
	assert.Equal(t, 5.0, tokens(), "exact: thousandths")
	assert.False(t, b.AllowAt(t0), "50 successes from 0 are not enough")
	b.Succeeded(false)
	assert.True(t, b.AllowAt(t0), "the 51st re-enables retries")

	b.NotRetryable() // A6: nothing
	b.refund()
	assert.Equal(t, 5.1, tokens())
	s := b.Snapshot()
	assert.Equal(t, 10.0, s.MaxTokens)
	assert.Equal(t, uint64(6), s.Allowed)
	assert.Equal(t, uint64(2), s.Refused)
}

// TestBudgetConcurrent hammers a Budget from many goroutines (run it with -race) and checks the
// accounting afterwards.
func TestBudgetConcurrent(t *testing.T) {
	const goroutines, ops = 16, 4000

	t.Run("ratio/one slot", func(t *testing.T) {
		now := t0
		b := newTestBudget(t, BudgetConfig{Ratio: 0.5, MinRetriesPerSecond: 2}, &now)
		var deposits, refunds, allowed, refused atomic.Int64
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Go(func() {
				for i := range ops {
					switch (g + i) % 5 {
					case 0, 1:
						if b.AllowAt(now) {
							allowed.Add(1)
						} else {
							refused.Add(1)
						}
					case 2:
						b.Succeeded(false)
						deposits.Add(1)
					case 3:
						b.Succeeded(true)
						deposits.Add(1)
						refunds.Add(1)
					case 4:
						b.NotRetryable()
						b.FailedAt(now)
						deposits.Add(1)
						if i%50 == 0 {
							_ = b.Snapshot()
						}
					}
				}
			})
		}
		wg.Wait()
		b.foldAll(b.sync(now, true))
		want := b.reserve + deposits.Load()*depositUnits + (refunds.Load()-allowed.Load())*b.withdraw
		assert.Equal(t, want, b.total.Load(), "every deposit, refund and withdrawal accounted for")
		assert.GreaterOrEqual(t, b.total.Load(), int64(0), "never overdrawn")
		s := b.Snapshot()
		assert.Equal(t, uint64(allowed.Load()), s.Allowed)
		assert.Equal(t, uint64(refused.Load()), s.Refused)
	})

	t.Run("ratio/rotating", func(t *testing.T) {
		b, err := NewBudget(BudgetConfig{Ratio: 0.2, Window: 10 * time.Millisecond})
		require.NoError(t, err)
		var clock atomic.Int64 // nanoseconds after the origin; every goroutine moves it on
		origin := b.origin
		b.clock = func() time.Time { return origin.Add(time.Duration(clock.Load())) }
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Go(func() {
				for i := range ops {
					now := origin.Add(time.Duration(clock.Add(int64(time.Microsecond))))
					switch (g + i) % 3 {
					case 0:
						b.AllowAt(now)
					case 1:
						b.Succeeded(i%2 == 0)
					case 2:
						b.NotRetryable()
					}
				}
			})
		}
		wg.Wait()
		b.foldAll(b.sync(b.clock(), true))
		var sum int64
		for i := range b.slots {
			sum += b.slots[i].Load() - b.wslots[i].Load()*b.withdraw
		}
		assert.Equal(t, b.reserve+sum, b.total.Load(), "total = reserve + slots at rest")
	})

	t.Run("token bucket", func(t *testing.T) {
		b, err := NewTokenBucket(1000, 0.5)
		require.NoError(t, err)
		var allows atomic.Int64
		var wg sync.WaitGroup
		for range goroutines {
			wg.Go(func() {
				for i := range ops {
					switch i % 3 {
					case 0:
						b.FailedAt(t0)
					case 1:
						b.Succeeded(false)
					case 2:
						b.AllowAt(t0)
						allows.Add(1)
					}
					if tk := b.tokens.Load(); tk < 0 || tk > b.maxTokens {
						t.Errorf("tokens out of range: %d", tk)
						return
					}
				}
			})
		}
		wg.Wait()
		s := b.Snapshot()
		assert.Equal(t, uint64(allows.Load()), s.Allowed+s.Refused)
		assert.GreaterOrEqual(t, s.Balance, 0.0)
		assert.LessOrEqual(t, s.Balance, 1000.0)
	})
}

// TestBudgetDepositsTakeNoMutex: Succeeded and NotRetryable (and so Do's first-attempt success
// with a budget) never wait for the rotation lock, even when their flush finds a slot rotation
// due: they leave the rotation to the lock's holder.
func TestBudgetDepositsTakeNoMutex(t *testing.T) {
	now := t0
	b := newTestBudget(t, BudgetConfig{Ratio: 1, MinRetriesPerSecond: 1e-9}, &now)
	now = t0.Add(5 * time.Second) // a rotation is due
	b.mu.Lock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 40 {
			b.Succeeded(false)
			b.NotRetryable()
		}
		_ = Do(context.Background(), Policy{}, func(context.Context) error { return nil }, nil, WithBudget(b))
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second): // waited for only if a deposit blocks
		t.Fatal("a deposit blocked on the rotation lock")
	}
	b.mu.Unlock()
	assert.InDelta(t, 81.0, b.Snapshot().Balance, 1e-6, "every deposit counted")
}

// The in-flight credit, step by step: a fresh default budget (reserve 10) and 40 calls whose
// first attempts fail at once. With no history a retry in flight is expected to come back
// with probability (0+4)/(0+8) = 1/2, so Next grants a retry while 10 - k + k/2 >= 1 with k
// already in flight: 19 of them (Allow alone would grant 10). When all 19 fail, q = 4/27 and
// the balance (-9) refuses every retry; the retries that failed exceed the reserve by 9, less
// than the cap (the reserve).
func TestBudgetInFlightCredit(t *testing.T) {
	now := t0
	b := newTestBudget(t, BudgetConfig{}, &now)
	p := Policy{Jitter: NoJitter}
	ctx := context.Background()
	calls := make([]Call, 40)
	granted := 0
	for i := range calls {
		calls[i] = p.NewCall(b)
		calls[i].Begin()
		if _, stop := calls[i].Next(ctx, errSentinel, Backoff, now); stop == nil {
			granted++
		} else {
			require.Equal(t, BudgetExhausted, stop.Reason)
			calls[i].Done(errSentinel, true)
		}
	}
	assert.Equal(t, 19, granted)
	assert.Equal(t, int64(19), b.inflight.Load())
	for i := range granted { // every retry fails
		calls[i].Begin()
		_, stop := calls[i].Next(ctx, errSentinel, Backoff, now)
		require.NotNil(t, stop, "retry %d", i)
		calls[i].Done(errSentinel, true)
	}
	assert.Zero(t, b.inflight.Load())
	assert.InDelta(t, -9.0, b.Snapshot().Balance, 1e-9)

	// A retry that succeeds is refunded and settled.
	b2 := newTestBudget(t, BudgetConfig{}, &now)
	c := p.NewCall(b2)
	c.Begin()
	_, stop := c.Next(ctx, errSentinel, Backoff, now)
	require.Nil(t, stop)
	assert.Equal(t, int64(1), b2.inflight.Load())
	c.Begin()
	c.Done(nil, false)
	assert.Zero(t, b2.inflight.Load())
	assert.Equal(t, int64(1), b2.rsum.Load())
	assert.InDelta(t, 10.2, b2.Snapshot().Balance, 1e-9)
}

// TestRatioBudgetLayout: withdrawals write total, wsum and a wslots entry. In a
// RatioBudget from NewBudget, total starts a cache line, which the first slots' wslots
// share (BenchmarkBudgetAllow/allowed/parallel): the allocation, in the 640-byte size
// class, is line-aligned and begins with the runtime's 8-byte header.
func TestRatioBudgetLayout(t *testing.T) {
	for range 4 {
		b, err := NewBudget(BudgetConfig{})
		require.NoError(t, err)
		assert.Zero(t, uintptr(unsafe.Pointer(&b.total))%64, "total's address")
		assert.Greater(t, unsafe.Sizeof(*b)+8, uintptr(576), "the 640-byte size class")
		assert.LessOrEqual(t, unsafe.Sizeof(*b)+8, uintptr(640), "the 640-byte size class")
	}
}
