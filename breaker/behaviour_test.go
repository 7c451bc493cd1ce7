package breaker

import (
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Required behaviour from DESIGN.md ("Breaker"), simulated in synctest
// bubbles with the real timer and clock (fake time).

// attemptCall makes one logical call of up to attempts attempts, sleeping
// backoffs[i] before retry i+1, as the interceptors do: Allow for the first
// attempt, AllowRetry for the others, RetryAt for a failed attempt that is
// retried, Done for the last. fail decides each attempt. It reports whether
// the call succeeded and whether the breaker rejected it.
func attemptCall(b *Breaker, attempts int, backoffs []time.Duration, fail func(attempt int) bool) (ok, rejected bool) {
	p, err := b.Allow()
	for a := 0; ; a++ {
		if err != nil {
			return false, true
		}
		if !fail(a) {
			p.Done(Success)
			return true, false
		}
		if a == attempts-1 {
			p.Done(Failure)
			return false, false
		}
		p.RetryAt(Failure, time.Time{})
		time.Sleep(backoffs[a])
		p, err = b.AllowRetry()
	}
}

// outageDetection starts callsPerSec calls per second against a dependency
// that fails every attempt, each call making up to attempts attempts, and
// returns the time from the first attempt until the breaker opened.
func outageDetection(t *testing.T, cfg Config, callsPerSec, attempts int, backoffs []time.Duration) time.Duration {
	var detected time.Duration
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		var openedAt time.Time
		cfg.OnStateChange = func(_ string, _, to State) {
			if to == Open && openedAt.IsZero() {
				openedAt = time.Now()
			}
		}
		b, err := New(cfg)
		require.NoError(t, err)
		var wg sync.WaitGroup
		for i := 0; b.State() == Closed; i++ {
			require.Less(t, i, 10000, "the breaker never opened")
			wg.Go(func() { attemptCall(b, attempts, backoffs, func(int) bool { return true }) })
			time.Sleep(time.Second / time.Duration(callsPerSec))
		}
		wg.Wait()
		detected = openedAt.Sub(start)
		b.Reset() // stop the open timer
	})
	return detected
}

func TestOutageDetection(t *testing.T) {
	small := []time.Duration{2 * time.Millisecond, 4 * time.Millisecond, 8 * time.Millisecond}
	// The mean delays of the retry package's default backoff: full jitter
	// over 25ms, 50ms, 100ms.
	meanDefault := []time.Duration{12500 * time.Microsecond, 25 * time.Millisecond, 50 * time.Millisecond}
	tests := []struct {
		name        string
		callsPerSec int
		attempts    int
		backoffs    []time.Duration
		within      time.Duration
	}{
		// 4 attempts per call at 200 calls/s: the 12th failed attempt comes
		// 17 ms after the first.
		{"200 calls/s, 4 attempts", 200, 4, small, 30 * time.Millisecond},
		// 3 calls x 4 attempts: 2 call intervals plus the backoffs.
		{"5 calls/s, 4 attempts", 5, 4, small, 600 * time.Millisecond},
		// With the default backoff: failed attempts at 0, 5, 10, 12.5, 15,
		// 17.5, 20, 22.5, 25, 27.5, 30 and 32.5 ms.
		{"200 calls/s, 4 attempts, default backoff", 200, 4, meanDefault, 33 * time.Millisecond},
		// 2 call intervals, then 12.5 + 25 + 50 ms: 487.5 ms.
		{"5 calls/s, 4 attempts, default backoff", 5, 4, meanDefault, 500 * time.Millisecond},
		// The same load as a uniform stream of 20 attempts/s: 11 gaps of 50 ms.
		{"20 attempts/s stream", 20, 1, nil, 600 * time.Millisecond},
		{"800 attempts/s stream", 800, 1, nil, 30 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := outageDetection(t, Config{}, tt.callsPerSec, tt.attempts, tt.backoffs)
			t.Logf("detected after %v", d)
			assert.LessOrEqual(t, d, tt.within)
		})
	}
}

// steadyFailures starts one call every period for dur, each attempt failing
// independently with probability p (a seeded PCG, so the run is
// deterministic), with up to 4 attempts per call and 1 ms backoffs. It
// returns the breaker's counts and the fraction of calls that succeeded.
func steadyFailures(t *testing.T, seed uint64, p float64, period, dur time.Duration) (Counts, float64) {
	var c Counts
	var rate float64
	synctest.Test(t, func(t *testing.T) {
		b, err := New(Config{})
		require.NoError(t, err)
		rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		fail := func(int) bool { return rng.Float64() < p }
		backoffs := []time.Duration{time.Millisecond, time.Millisecond, time.Millisecond}
		calls, succeeded := int(dur/period), 0
		next := time.Now()
		for range calls {
			time.Sleep(time.Until(next))
			next = next.Add(period)
			ok, rejected := attemptCall(b, 4, backoffs, fail)
			require.False(t, rejected, "the breaker opened")
			if ok {
				succeeded++
			}
		}
		c = b.Counts()
		rate = float64(succeeded) / float64(calls)
	})
	return c, rate
}

func TestStaysClosedUnderIndependentFailures(t *testing.T) {
	tests := []struct {
		name       string
		p          float64
		period     time.Duration
		dur        time.Duration
		minSuccess float64
	}{
		// 30% independent attempt failures (one bad replica of three): a
		// streak of 12 failed attempts is a ~1-in-2-million event and the
		// window rate stays near 30% < 50%. 1-0.3^4 = 99.19% of calls work.
		{"30% at 200 calls/s for 60s", 0.3, 5 * time.Millisecond, time.Minute, 0.988},
		// At low volume the rate rule, counting attempts, can fire on 30%
		// (see the package documentation): 10 calls/s is safe.
		{"30% at 10 calls/s for 1h", 0.3, 100 * time.Millisecond, time.Hour, 0.988},
		{"3% at 200 calls/s for 60s", 0.03, 5 * time.Millisecond, time.Minute, 0.9999},
		{"3% at 1 call/s for 1h", 0.03, time.Second, time.Hour, 0.9999},
		{"3% at 1 call per 10s for 10h", 0.03, 10 * time.Second, 10 * time.Hour, 0.9999},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, rate := steadyFailures(t, uint64(i+1), tt.p, tt.period, tt.dur)
			t.Logf("call success %.4f, counts %+v", rate, c)
			assert.Equal(t, Closed, c.State)
			assert.Zero(t, c.Transitions)
			assert.Zero(t, c.Rejections)
			assert.GreaterOrEqual(t, rate, tt.minSuccess)
			assert.InDelta(t, tt.p, float64(c.Failures)/float64(c.Failures+c.Successes), 0.02)
		})
	}
}

// TestRecoveryCycle drives a whole outage and recovery on the real timer:
// open for ~1 s, probe fails, open for ~1 s again (a third of the outage's
// age is still less than RecoveryTime), probe succeeds, closed.
func TestRecoveryCycle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var states []State
		b, err := New(Config{Name: "svc", OnStateChange: func(_ string, _, to State) { states = append(states, to) }})
		require.NoError(t, err)
		for range 12 {
			p, err := b.Allow()
			require.NoError(t, err)
			p.Done(Failure)
		}
		require.Equal(t, Open, b.State())
		_, err = b.Allow()
		var oe *OpenError
		require.ErrorAs(t, err, &oe)
		wait := oe.RetryAfter()
		assert.GreaterOrEqual(t, wait, 800*time.Millisecond)
		assert.LessOrEqual(t, wait, 1200*time.Millisecond)
		_, err2 := b.Allow()
		assert.Same(t, oe, err2, "one prebuilt error per open period")

		time.Sleep(wait - time.Millisecond)
		synctest.Wait()
		assert.Equal(t, Open, b.State())
		assert.Equal(t, time.Millisecond, oe.RetryAfter())
		time.Sleep(time.Millisecond)
		synctest.Wait() // the timer callback has run
		assert.Equal(t, HalfOpen, b.State())

		p, err := b.Allow()
		require.NoError(t, err)
		p.Done(Failure)
		_, err = b.Allow()
		require.ErrorAs(t, err, &oe)
		wait = oe.RetryAfter()
		assert.GreaterOrEqual(t, wait, 800*time.Millisecond)
		assert.LessOrEqual(t, wait, 1200*time.Millisecond)
		time.Sleep(wait)
		synctest.Wait()
		p, err = b.Allow()
		require.NoError(t, err)
		p.Done(Success)
		assert.Equal(t, []State{Open, HalfOpen, Open, HalfOpen, Closed}, states)
		c := b.Counts()
		assert.EqualValues(t, 3, c.Rejections)
		assert.EqualValues(t, 5, c.Transitions)
	})
}

// TestLostProbeInBubble: a probe that never reports frees its permit once the
// open period has passed, on the real clock.
func TestLostProbeInBubble(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, err := New(Config{RecoveryJitter: -1, ConsecutiveFailures: 1})
		require.NoError(t, err)
		p, _ := b.Allow()
		p.Done(Failure)
		time.Sleep(time.Second)
		synctest.Wait()
		lost, err := b.Allow()
		require.NoError(t, err)
		time.Sleep(200 * time.Millisecond)
		_, err = b.Allow()
		var oe *OpenError
		require.ErrorAs(t, err, &oe)
		assert.Equal(t, HalfOpen, oe.State())
		assert.Equal(t, 800*time.Millisecond, oe.RetryAfter())
		time.Sleep(oe.RetryAfter())
		p, err = b.Allow()
		require.NoError(t, err)
		p.Done(Success)
		assert.Equal(t, Closed, b.State())
		lost.Done(Failure) // too late, old generation
		assert.Equal(t, Closed, b.State())
		assert.Zero(t, b.Counts().ConsecutiveFailures)
	})
}

// episode runs callers goroutines that each make a call every period for
// dur, every attempt failing when fail(elapsed) says so, with up to
// attempts attempts and 1 ms backoffs, against a breaker of cfg. It returns
// the successes and calls counted per slice of the episode, and the counts.
func episode(t *testing.T, cfg Config, callers int, period, dur, slice time.Duration, attempts int, fail func(attempt int, elapsed time.Duration) bool) (succ, calls []int, c Counts) {
	n := int(dur / slice)
	succ, calls = make([]int, n), make([]int, n)
	synctest.Test(t, func(t *testing.T) {
		b, err := New(cfg)
		require.NoError(t, err)
		start := time.Now()
		var mu sync.Mutex
		var wg sync.WaitGroup
		backoffs := []time.Duration{time.Millisecond, time.Millisecond, time.Millisecond, time.Millisecond}
		for g := range callers {
			wg.Go(func() {
				time.Sleep(period * time.Duration(g) / time.Duration(callers))
				for {
					at := time.Since(start)
					if at >= dur {
						return
					}
					ok, _ := attemptCall(b, attempts, backoffs, func(a int) bool { return fail(a, time.Since(start)) })
					mu.Lock()
					calls[at/slice]++
					if ok {
						succ[at/slice]++
					}
					mu.Unlock()
					time.Sleep(period)
				}
			})
		}
		wg.Wait()
		c = b.Counts()
		b.Reset()
	})
	return succ, calls, c
}

func ratio(succ, calls []int, from, to int) float64 {
	s, c := 0, 0
	for i := from; i < to && i < len(calls); i++ {
		s, c = s+succ[i], c+calls[i]
	}
	return float64(s) / float64(c)
}

// coin returns a seeded failure decision with probability p.
func coin(seed uint64, p float64) func(int, time.Duration) bool {
	rng := rand.New(rand.NewPCG(seed, 7))
	var mu sync.Mutex
	return func(int, time.Duration) bool {
		mu.Lock()
		defer mu.Unlock()
		return rng.Float64() < p
	}
}

// TestNeverWorseThanNoBreaker runs the situations of DESIGN.md ("a breaker
// must never cost availability a plain client would have had") with the
// defaults and with the breaker disabled, and compares.
func TestNeverWorseThanNoBreaker(t *testing.T) {
	sec := time.Second
	t.Run("retries that succeed", func(t *testing.T) {
		// Every call's first attempt fails, its retry works (a rolling
		// restart), 32 callers at once: no call may be lost.
		firstFails := func(a int, _ time.Duration) bool { return a == 0 }
		succ, calls, c := episode(t, Config{}, 32, 10*time.Millisecond, 10*sec, sec, 4, firstFails)
		assert.Equal(t, 1.0, ratio(succ, calls, 0, 10))
		assert.Zero(t, c.Transitions)
		assert.Zero(t, c.Throttled)
	})
	t.Run("partial failure: 50% of calls fail", func(t *testing.T) {
		succ, calls, c := episode(t, Config{}, 8, 20*time.Millisecond, 60*sec, sec, 1, coin(1, 0.5))
		bs, bc, _ := episode(t, Config{Mode: Disabled}, 8, 20*time.Millisecond, 60*sec, sec, 1, coin(1, 0.5))
		with, without := ratio(succ, calls, 0, 60), ratio(bs, bc, 0, 60)
		t.Logf("success %.4f, without a breaker %.4f, counts %+v", with, without, c)
		assert.GreaterOrEqual(t, with, without-0.02)
		assert.Zero(t, c.Transitions, "a partial failure never opens the breaker")
	})
	t.Run("brownout: 70% of attempts fail", func(t *testing.T) {
		fail := coin(2, 0.7)
		succ, calls, c := episode(t, Config{}, 16, 10*time.Millisecond, 30*sec, sec, 4, fail)
		t.Logf("success %.4f, counts %+v", ratio(succ, calls, 0, 30), c)
		assert.Zero(t, c.Transitions, "a partial failure throttles, it does not open")
	})
	t.Run("outage of 3s", func(t *testing.T) {
		down := func(_ int, at time.Duration) bool { return at >= 2*sec && at < 5*sec }
		succ, calls, c := episode(t, Config{}, 16, 10*time.Millisecond, 10*sec, 100*time.Millisecond, 4, down)
		got := ratio(succ, calls, 62, 100) // from 1.2 s after the recovery
		t.Logf("success from 1.2s after recovery %.4f, counts %+v", got, c)
		assert.GreaterOrEqual(t, got, 0.99)
		assert.Equal(t, 1.0, ratio(succ, calls, 0, 20), "before the outage")
	})
}
