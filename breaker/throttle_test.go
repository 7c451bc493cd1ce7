package breaker

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// calls records n calls of one attempt with outcome o, asking again while
// the throttle rejects; it returns the number of throttled calls.
func (h *harness) calls(n int, o Outcome) (throttled int) {
	h.t.Helper()
	before := h.b.Counts().Throttled
	for range n {
		h.admit().Done(o)
	}
	return int(h.b.Counts().Throttled - before)
}

func TestThrottle(t *testing.T) {
	noStreak := Config{ConsecutiveFailures: -1}
	t.Run("nothing is shed while 1/K of the calls succeed", func(t *testing.T) {
		h := newHarness(t, noStreak)
		h.play("SFx200")
		assert.Zero(t, h.b.Counts().ThrottleProbability)
		assert.Zero(t, h.b.throttle.Load())
	})
	t.Run("below MinimumCalls nothing is shed", func(t *testing.T) {
		h := newHarness(t, noStreak)
		h.play("Fx19")
		assert.Zero(t, h.b.throttle.Load())
		h.play("F")
		assert.InDelta(t, 20.0/21, h.b.Counts().ThrottleProbability, 1e-9)
	})
	t.Run("proportional: (calls - K*accepts)/(calls+1)", func(t *testing.T) {
		h := newHarness(t, noStreak)
		h.play("SFFFx25") // 100 calls, 25 accepted: (100-50)/101
		assert.InDelta(t, 50.0/101, h.b.Counts().ThrottleProbability, 1e-9)
		h = newHarness(t, Config{ConsecutiveFailures: -1, ThrottleK: 1.5})
		h.play("SFFFx25") // (100-37.5)/101
		assert.InDelta(t, 62.5/101, h.b.Counts().ThrottleProbability, 1e-9)
	})
	t.Run("a throttled call is a local rejection", func(t *testing.T) {
		h := newHarness(t, noStreak)
		h.play("Fx100")
		var oe *OpenError
		for range 1000 {
			_, err := h.b.Allow()
			if err == nil {
				continue
			}
			require.ErrorIs(t, err, ErrThrottled)
			require.NotErrorIs(t, err, ErrOpen)
			require.ErrorAs(t, err, &oe)
			assert.True(t, oe.Throttled())
			assert.Equal(t, Closed, oe.State())
			assert.Zero(t, oe.RetryAfter())
			assert.Equal(t, "breaker: throttled", err.Error())
		}
		c := h.b.Counts()
		// p = 100/101: about 990 of 1000 throttled.
		assert.Greater(t, c.Throttled, uint64(950))
		assert.Equal(t, c.Throttled, c.WindowThrottled)
		assert.EqualValues(t, 100, c.WindowCalls, "throttled calls are not calls")
		assert.Zero(t, c.Rejections)
		assert.Equal(t, Closed, c.State)
	})
	t.Run("retries are never throttled", func(t *testing.T) {
		h := newHarness(t, noStreak)
		h.play("Fx100")
		for range 1000 {
			p, err := h.b.AllowRetry()
			require.NoError(t, err)
			p.Done(Ignored)
		}
	})
	t.Run("accepted calls in a row end the throttle", func(t *testing.T) {
		h := newHarness(t, noStreak)
		h.play("SFFFx25")
		require.NotZero(t, h.b.throttle.Load())
		run := h.b.recoverRun // ceil(ln 1e5 / ln 2) = 17
		assert.Equal(t, 17, run)
		h.calls(run-1, Success)
		require.NotZero(t, h.b.throttle.Load())
		h.calls(1, Success)
		assert.Zero(t, h.b.throttle.Load())
		c := h.b.Counts()
		assert.Zero(t, c.WindowCalls, "the shedding's history is forgotten")
		assert.Zero(t, c.ThrottleProbability)
	})
	t.Run("a failed call restarts the run", func(t *testing.T) {
		h := newHarness(t, noStreak)
		h.play("SFFFx25")
		h.calls(16, Success)
		h.calls(1, Failure)
		h.calls(16, Success)
		assert.NotZero(t, h.b.throttle.Load())
	})
	t.Run("closing resets the throttle", func(t *testing.T) {
		h := newHarness(t, Config{ConsecutiveFailures: 30})
		h.play("Fx29")
		require.NotZero(t, h.b.throttle.Load())
		p, err := h.b.AllowRetry()
		require.NoError(t, err)
		p.Done(Failure)
		h.state(Open)
		assert.Zero(t, h.b.throttle.Load())
		h.toHalfOpen()
		h.allow().Done(Success)
		h.state(Closed)
		assert.Zero(t, h.b.throttle.Load())
		assert.Zero(t, h.b.Counts().ThrottleProbability)
	})
	t.Run("metrics-only computes it and never sheds", func(t *testing.T) {
		h := newHarness(t, Config{ConsecutiveFailures: -1, Mode: MetricsOnly})
		h.play("Fx100")
		assert.Zero(t, h.b.throttle.Load())
		assert.InDelta(t, 100.0/101, h.b.Counts().ThrottleProbability, 1e-9)
		assert.Zero(t, h.calls(100, Failure))
	})
	t.Run("off", func(t *testing.T) {
		h := newHarness(t, Config{ConsecutiveFailures: -1, ThrottleK: -1})
		h.play("Fx100")
		assert.Zero(t, h.calls(100, Failure))
		assert.Zero(t, h.b.Counts().ThrottleProbability)
	})
}

// TestAllowContext: callers that find the probe slots taken wait for the
// verdict, bounded by HalfOpenMaxWait and their deadline, and start no
// goroutine (goleak in TestMain).
func TestAllowContext(t *testing.T) {
	halfOpen := func(t *testing.T, cfg Config) *Breaker {
		t.Helper()
		cfg.RecoveryJitter = -1
		cfg.ConsecutiveFailures = 1
		b, err := New(cfg)
		require.NoError(t, err)
		p, _ := b.Allow()
		p.Done(Failure)
		time.Sleep(time.Second)
		synctest.Wait()
		require.Equal(t, HalfOpen, b.State())
		return b
	}
	t.Run("the probe succeeds: every waiter is admitted", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			b := halfOpen(t, Config{})
			probe, err := b.AllowContext(context.Background(), 0)
			require.NoError(t, err)
			var mu sync.Mutex
			var wg sync.WaitGroup
			admitted := 0
			for range 200 {
				wg.Go(func() {
					p, err := b.AllowContext(context.Background(), 0)
					if err == nil {
						p.Done(Success)
						mu.Lock()
						admitted++
						mu.Unlock()
					}
				})
			}
			synctest.Wait()
			time.Sleep(50 * time.Millisecond) // the probe's round trip
			probe.Done(Success)
			wg.Wait()
			assert.Equal(t, 200, admitted)
			assert.Equal(t, Closed, b.State())
		})
	})
	t.Run("the probe fails: every waiter gets the open rejection at once", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			b := halfOpen(t, Config{HalfOpenMaxCalls: 2})
			p1, _ := b.AllowContext(context.Background(), 0)
			p2, _ := b.AllowContext(context.Background(), 0)
			var wg sync.WaitGroup
			var mu sync.Mutex
			var states []State
			start := time.Now()
			for range 50 {
				wg.Go(func() {
					_, err := b.AllowContext(context.Background(), 0)
					var oe *OpenError
					require.ErrorAs(t, err, &oe)
					mu.Lock()
					states = append(states, oe.State())
					mu.Unlock()
				})
			}
			synctest.Wait()
			time.Sleep(20 * time.Millisecond)
			p1.Done(Failure)
			wg.Wait()
			assert.Equal(t, 20*time.Millisecond, time.Since(start))
			assert.Len(t, states, 50)
			for _, s := range states {
				assert.Equal(t, Open, s)
			}
			p2.Done(Success) // old generation
			b.Reset()
		})
	})
	t.Run("an ignored probe lets one waiter probe", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			b := halfOpen(t, Config{})
			p, _ := b.AllowContext(context.Background(), 0)
			got := make(chan Permit)
			go func() {
				q, err := b.AllowContext(context.Background(), 0)
				assert.NoError(t, err)
				got <- q
			}()
			synctest.Wait()
			p.Done(Ignored)
			q := <-got
			assert.NotZero(t, q.probe, "the waiter is the new probe")
			q.Done(Success)
			assert.Equal(t, Closed, b.State())
		})
	})
	t.Run("bounded by HalfOpenMaxWait", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			b := halfOpen(t, Config{HalfOpenMaxWait: 300 * time.Millisecond})
			p, _ := b.AllowContext(context.Background(), 0)
			start := time.Now()
			_, err := b.AllowContext(context.Background(), 0)
			require.ErrorIs(t, err, ErrOpen)
			assert.Equal(t, 300*time.Millisecond, time.Since(start))
			p.Done(Success)
		})
	})
	t.Run("bounded by the deadline less the reserve", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			b := halfOpen(t, Config{})
			p, _ := b.AllowContext(context.Background(), 0)
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err := b.AllowContext(ctx, 50*time.Millisecond)
			require.ErrorIs(t, err, ErrOpen)
			assert.Equal(t, 150*time.Millisecond, time.Since(start))
			ctx2, cancel2 := context.WithTimeout(context.Background(), 40*time.Millisecond)
			defer cancel2()
			_, err = b.AllowContext(ctx2, 50*time.Millisecond)
			require.ErrorIs(t, err, ErrOpen)
			assert.Equal(t, 150*time.Millisecond, time.Since(start), "no time to wait: rejected at once")
			p.Done(Success)
		})
	})
	t.Run("cancellation ends the wait", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			b := halfOpen(t, Config{})
			p, _ := b.AllowContext(context.Background(), 0)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error)
			go func() { _, err := b.AllowContext(ctx, 0); done <- err }()
			synctest.Wait()
			time.Sleep(10 * time.Millisecond)
			cancel()
			assert.ErrorIs(t, <-done, ErrOpen)
			p.Done(Success)
		})
	})
	t.Run("never waits when HalfOpenMaxWait is negative", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			b := halfOpen(t, Config{HalfOpenMaxWait: -1})
			p, _ := b.AllowContext(context.Background(), 0)
			start := time.Now()
			_, err := b.AllowContext(context.Background(), 0)
			require.ErrorIs(t, err, ErrOpen)
			assert.Zero(t, time.Since(start))
			p.Done(Success)
		})
	})
}

func TestReconfigure(t *testing.T) {
	t.Run("an open breaker stays open for the rest of its period", func(t *testing.T) {
		h := newHarness(t, Config{})
		h.trip()
		h.clk.Advance(400 * time.Millisecond)
		require.NoError(t, h.b.Reconfigure(Config{ConsecutiveFailures: 3, RecoveryTime: 10 * time.Second, MaxRecoveryTime: time.Minute}))
		h.state(Open)
		h.clk.Advance(600*time.Millisecond - 1)
		h.state(Open)
		h.clk.Advance(1)
		h.state(HalfOpen)
		h.allow().Done(Failure)
		assert.Equal(t, 10*time.Second, h.b.openDur, "the next period follows the new settings")
	})
	t.Run("closed keeps its window, streak and counts", func(t *testing.T) {
		h := newHarness(t, Config{ThrottleK: -1})
		h.play("Sx10 Fx5")
		before := h.b.Counts()
		require.NoError(t, h.b.Reconfigure(Config{ThrottleK: -1, ConsecutiveFailures: 8}))
		after := h.b.Counts()
		assert.Equal(t, before, after)
		h.play("Fx3")
		h.state(Open)
	})
	t.Run("a new window size starts an empty window", func(t *testing.T) {
		h := newHarness(t, Config{})
		h.play("SFx10")
		require.NoError(t, h.b.Reconfigure(Config{Window: time.Second}))
		c := h.b.Counts()
		assert.Zero(t, c.WindowCalls)
		assert.EqualValues(t, 10, c.Failures)
	})
	t.Run("a mode change switches; the same mode keeps the state", func(t *testing.T) {
		h := newHarness(t, Config{})
		h.trip()
		require.NoError(t, h.b.Reconfigure(Config{Mode: Closed}))
		h.state(Open)
		require.NoError(t, h.b.Reconfigure(Config{Mode: Disabled}))
		h.state(Disabled)
		require.NoError(t, h.b.Reconfigure(Config{Mode: Disabled, ConsecutiveFailures: 3}))
		h.state(Disabled)
		require.NoError(t, h.b.Reconfigure(Config{Mode: MetricsOnly}))
		h.state(MetricsOnly)
		require.NoError(t, h.b.Reconfigure(Config{}))
		h.state(Closed)
	})
	t.Run("an invalid config changes nothing", func(t *testing.T) {
		h := newHarness(t, Config{Name: "x"})
		err := h.b.Reconfigure(Config{FailureRate: 2})
		require.EqualError(t, err, "breaker: Config.FailureRate: must be in [0, 1], got 2")
		assert.Equal(t, "x", h.b.Config().Name)
		assert.Equal(t, 12, h.b.Config().ConsecutiveFailures)
	})
	t.Run("fewer half-open probes needed: the successes close it", func(t *testing.T) {
		h := newHarness(t, Config{HalfOpenMaxCalls: 3})
		h.trip()
		h.toHalfOpen()
		h.allow().Done(Success)
		h.state(HalfOpen)
		require.NoError(t, h.b.Reconfigure(Config{HalfOpenMaxCalls: 1}))
		h.state(Closed)
	})
	t.Run("the new callback gets the next changes", func(t *testing.T) {
		var old, cur []State
		h := newHarness(t, Config{OnStateChange: func(_ string, _, to State) { old = append(old, to) }})
		h.trip()
		require.NoError(t, h.b.Reconfigure(Config{OnStateChange: func(_ string, _, to State) { cur = append(cur, to) }}))
		h.toHalfOpen()
		assert.Equal(t, []State{Open}, old)
		assert.Equal(t, []State{HalfOpen}, cur)
	})
}

func TestRetire(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var got []State
		b, err := New(Config{ConsecutiveFailures: 1, OnStateChange: func(_ string, _, to State) { got = append(got, to) }})
		require.NoError(t, err)
		p, _ := b.Allow()
		p.Done(Failure)
		b.Retire()
		time.Sleep(2 * time.Second) // the open period ends
		synctest.Wait()
		assert.Equal(t, HalfOpen, b.State(), "the retired breaker still works")
		p, err = b.Allow()
		require.NoError(t, err)
		p.Done(Success)
		assert.Equal(t, Closed, b.State())
		assert.Equal(t, []State{Open}, got, "nothing after Retire")
	})
}
