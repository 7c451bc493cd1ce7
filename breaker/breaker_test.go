package breaker

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// harness drives a Breaker on a fake clock with no jitter.
type harness struct {
	t   *testing.T
	b   *Breaker
	clk *fakeClock
	gap time.Duration // clock advance after each outcome of play
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	clk := newFakeClock()
	b, err := newBreaker(cfg, clk.Now, clk.AfterFunc, constRand(0.5))
	require.NoError(t, err)
	b.stripes = make([]stripe, 1) // fast-path counts fold at every 64th, deterministically
	return &harness{t: t, b: b, clk: clk, gap: 10 * time.Millisecond}
}

func (h *harness) allow() Permit {
	h.t.Helper()
	p, err := h.b.Allow()
	require.NoError(h.t, err)
	return p
}

// admit is allow for a breaker that may throttle: it asks again until the
// throttle admits the call (the throttled calls are counted as such).
func (h *harness) admit() Permit {
	h.t.Helper()
	for {
		p, err := h.b.Allow()
		if !errors.Is(err, ErrThrottled) {
			require.NoError(h.t, err)
			return p
		}
	}
}

func (h *harness) reject(want State) *OpenError {
	h.t.Helper()
	p, err := h.b.Allow()
	require.Error(h.t, err)
	require.ErrorIs(h.t, err, ErrOpen)
	require.Equal(h.t, Permit{}, p)
	var oe *OpenError
	require.ErrorAs(h.t, err, &oe)
	require.Equal(h.t, want, oe.State())
	return oe
}

func (h *harness) state(want State) {
	h.t.Helper()
	require.Equal(h.t, want, h.b.State())
	require.Equal(h.t, want, h.b.Counts().State)
}

// fail records n failures in a row, without advancing the clock.
func (h *harness) fail(n int) {
	h.t.Helper()
	for range n {
		h.allow().Done(Failure)
	}
}

// trip opens a closed breaker through the streak rule.
func (h *harness) trip() {
	h.t.Helper()
	h.state(Closed)
	h.fail(h.b.cfg.ConsecutiveFailures)
	h.state(Open)
}

// toHalfOpen waits out the current open period (jitter is off).
func (h *harness) toHalfOpen() {
	h.t.Helper()
	h.state(Open)
	h.clk.Advance(h.b.openDur - 1)
	h.state(Open)
	h.clk.Advance(1)
	h.state(HalfOpen)
}

// play runs a script of space-separated tokens: "F", "SFx10" (the pattern
// repeated 10 times), "W11s" (wait) and "@1s" (set the gap between
// outcomes). The outcomes: S a successful call, F a failed call, I an
// ignored one (each a call of one attempt: Allow, asked again while the
// throttle rejects, and Done), R a failed first
// attempt that its call retries (Allow and RetryAt), X a failed retry that
// ends its call (AllowRetry and Done). It returns the number of outcomes
// recorded when the breaker opened, or 0 if it stayed closed.
func (h *harness) play(script string) int {
	h.t.Helper()
	n := 0
	for _, tok := range strings.Fields(script) {
		switch tok[0] {
		case 'W':
			d, err := time.ParseDuration(tok[1:])
			require.NoError(h.t, err)
			h.clk.Advance(d)
			continue
		case '@':
			d, err := time.ParseDuration(tok[1:])
			require.NoError(h.t, err)
			h.gap = d
			continue
		}
		pat, reps := tok, 1
		if i := strings.IndexByte(tok, 'x'); i >= 0 {
			r, err := strconv.Atoi(tok[i+1:])
			require.NoError(h.t, err)
			pat, reps = tok[:i], r
		}
		for range reps {
			for _, c := range pat {
				switch c {
				case 'R':
					h.admit().RetryAt(Failure, time.Time{})
				case 'X':
					p, err := h.b.AllowRetry()
					require.NoError(h.t, err)
					p.Done(Failure)
				default:
					h.admit().Done(map[rune]Outcome{'S': Success, 'F': Failure, 'I': Ignored}[c])
				}
				n++
				if h.b.State() == Open {
					return n
				}
				h.clk.Advance(h.gap)
			}
		}
	}
	return 0
}

func TestTripRules(t *testing.T) {
	noStreak := Config{ConsecutiveFailures: -1, ThrottleK: -1, FailureRate: 0.5}
	tests := []struct {
		name   string
		cfg    Config
		script string
		want   int // outcomes recorded when the breaker opened; 0 = stays closed
	}{
		{"streak of 12 failed calls opens", Config{}, "Fx12", 12},
		{"streak of 11 does not", Config{}, "Fx11", 0},
		{"a success breaks the streak", Config{ThrottleK: -1}, "Fx11 S Fx11", 0},
		{"ignored does not break the streak", Config{}, "Fx6 I Fx6", 13},
		{"custom streak", Config{ConsecutiveFailures: 3}, "Sx5 Fx3", 8},
		{"streak counts attempts at any rate", Config{}, "@1m Fx12", 12},
		{"first attempts alone never open", Config{}, "Rx40", 0},
		{"a failed retry completes a streak of first attempts", Config{}, "Rx11 X", 12},
		{"retries that succeed never open", Config{}, "RSx500", 0},
		// 60% of the earlier attempts failed: a streak of
		// ceil(12·ln 0.3/ln(57/97)) = 28 is needed.
		{"partial failure needs a longer streak", Config{ThrottleK: -1}, "SSFFFx20 Fx24", 0},
		{"the longer streak opens", Config{ThrottleK: -1}, "SSFFFx20 Fx25", 125},
		// 74% failed: the streak needed is capped at 4·12 = 48.
		{"the streak needed is capped", Config{ThrottleK: -1}, "SFFFx20 Fx45", 125},
		{"every rule off", Config{ConsecutiveFailures: -1, ThrottleK: -1}, "Fx200", 0},
		{"the rate rule is off by default", Config{ConsecutiveFailures: -1, ThrottleK: -1}, "SFx50", 0},
		{"rate at 50% once MinimumCalls seen", noStreak, "SFx10", 20},
		{"rate needs MinimumCalls", noStreak, "SFx9", 0},
		{"rate is evaluated on failures only", noStreak, "FSx10 F", 21},
		{"rate below threshold stays closed", noStreak, "SSFx50", 0},
		{"rate counts calls, not attempts", noStreak, "RSx50", 0},
		{"custom rate", Config{ConsecutiveFailures: -1, ThrottleK: -1, FailureRate: 0.3}, "SSFx50", 21},
		{"rate 1 needs only failures", Config{ConsecutiveFailures: -1, ThrottleK: -1, FailureRate: 1}, "SFx20 W11s Fx20", 60},
		{"custom MinimumCalls", Config{ConsecutiveFailures: -1, ThrottleK: -1, FailureRate: 0.5, MinimumCalls: 5}, "SFx10", 6},
		{"ignored outcomes are not calls", noStreak, "SIFx10", 30},
		{"low call rate: window never holds MinimumCalls", noStreak, "@1s SFx100", 0},
		{"moderate call rate: rate rule applies", noStreak, "@400ms SFx100", 20},
		{"window expiry forgets old failures", noStreak, "Fx15 W11s Sx5 F", 0},
		{"without expiry the same outcomes open", noStreak, "Fx15 Sx5 F", 21},
		{"a short window forgets faster", Config{ConsecutiveFailures: -1, ThrottleK: -1, FailureRate: 0.5, Window: time.Second}, "@100ms SFx100", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.cfg)
			assert.Equal(t, tt.want, h.play(tt.script))
		})
	}
}

func TestOpenTimeGrowth(t *testing.T) {
	h := newHarness(t, Config{})
	h.trip()
	opened := h.clk.Now()
	var got []time.Duration
	for range 14 {
		age := h.clk.Now().Sub(opened)
		want := max(time.Second, min(time.Minute, age/3))
		require.Equal(t, want, h.b.openDur, "open period at age %v", age)
		got = append(got, h.b.openDur)
		oe := h.reject(Open)
		require.Equal(t, h.clk.Now().Add(want), oe.until)
		h.toHalfOpen()
		h.allow().Done(Failure) // the probe fails: re-open
		h.state(Open)
	}
	// 1s periods until the outage is 3s old, so that a server back after 3s
	// is probed within about a second; then a third of the outage's age.
	assert.Equal(t, []time.Duration{time.Second, time.Second, time.Second, time.Second, 4 * time.Second / 3}, got[:5])
	assert.Greater(t, got[13], 5*time.Second)
	// A close starts over from RecoveryTime.
	h.toHalfOpen()
	h.allow().Done(Success)
	h.state(Closed)
	h.trip()
	require.Equal(t, time.Second, h.b.openDur)
	// So does Reset.
	h.clk.Advance(30 * time.Second)
	h.b.Reset()
	h.trip()
	require.Equal(t, time.Second, h.b.openDur)
}

func TestOpenTimeCapAndOverflow(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		age  time.Duration
		want time.Duration
	}{
		{"first", Config{}, 0, time.Second},
		{"a third of the outage", Config{}, 30 * time.Second, 10 * time.Second},
		{"capped", Config{}, time.Hour, time.Minute},
		{"huge age", Config{}, 1<<63 - 1, time.Minute},
		{"cap equals base", Config{RecoveryTime: time.Second, MaxRecoveryTime: time.Second}, time.Hour, time.Second},
		{"no overflow near MaxInt64", Config{RecoveryTime: 1 << 62, MaxRecoveryTime: 1<<63 - 1}, 0, 1 << 62},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.cfg)
			now := h.clk.Now()
			h.b.openedAt = now.Add(-tt.age)
			assert.Equal(t, tt.want, h.b.openDuration(now))
		})
	}
}

func TestJitterBounds(t *testing.T) {
	for _, tt := range []struct {
		name   string
		jitter float64
		u      float64
		want   time.Duration
	}{
		{"low end", 0, 0, 800 * time.Millisecond},
		{"middle", 0, 0.5, time.Second},
		{"high end", 0, 0.999999, 1199999600 * time.Nanosecond},
		{"custom jitter", 0.5, 0, 500 * time.Millisecond},
		{"no jitter", -1, 0, time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{RecoveryJitter: tt.jitter})
			h.b.rnd = constRand(tt.u)
			h.b.openedAt = h.clk.Now()
			assert.InDelta(t, float64(tt.want), float64(h.b.openDuration(h.clk.Now())), float64(time.Microsecond))
		})
	}
	t.Run("random within ±20% and spread", func(t *testing.T) {
		h := newHarness(t, Config{})
		b, err := New(Config{})
		require.NoError(t, err)
		h.b.rnd = b.rnd // the real source
		now := h.clk.Now()
		for _, age := range []time.Duration{0, 3 * time.Second, 30 * time.Second, time.Hour} {
			base := max(time.Second, min(time.Minute, age/3))
			h.b.openedAt = now.Add(-age)
			lo, hi := time.Duration(1<<63-1), time.Duration(0)
			for range 2000 {
				d := h.b.openDuration(now)
				lo, hi = min(lo, d), max(hi, d)
			}
			assert.GreaterOrEqual(t, lo, base*8/10)
			assert.LessOrEqual(t, hi, base*12/10)
			assert.Less(t, lo, base*82/100, "jitter should reach near the low end")
			assert.Greater(t, hi, base*118/100, "jitter should reach near the high end")
		}
	})
}

func TestHalfOpen(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		steps func(h *harness)
	}{
		{"default admits one probe; others get HalfOpen rejections", Config{}, func(h *harness) {
			h.allow()
			oe := h.reject(HalfOpen)
			assert.Equal(h.t, h.clk.Now().Add(time.Second), oe.until)
			assert.Same(h.t, oe, h.reject(HalfOpen), "the rejection error is reused")
		}},
		{"permit exhaustion with HalfOpenMaxCalls 3", Config{HalfOpenMaxCalls: 3}, func(h *harness) {
			h.allow()
			h.allow()
			h.allow()
			h.reject(HalfOpen)
			h.reject(HalfOpen)
			assert.EqualValues(h.t, 2, h.b.Counts().Rejections)
		}},
		{"closes after HalfOpenMaxCalls successes", Config{HalfOpenMaxCalls: 3}, func(h *harness) {
			p1, p2, p3 := h.allow(), h.allow(), h.allow()
			p1.Done(Success)
			p2.Done(Success)
			h.state(HalfOpen)
			h.reject(HalfOpen) // successes keep their slot: no fourth probe
			p3.Done(Success)
			h.state(Closed)
			c := h.b.Counts()
			assert.Zero(h.t, c.WindowCalls, "a close starts with an empty window")
			assert.Zero(h.t, c.ConsecutiveFailures)
		}},
		{"first failure re-opens", Config{HalfOpenMaxCalls: 3}, func(h *harness) {
			p1, p2, p3 := h.allow(), h.allow(), h.allow()
			p1.Done(Success)
			p2.Done(Failure)
			h.state(Open)
			assert.Equal(h.t, time.Second, h.b.openDur, "the outage is 1s old: a third of it is less than RecoveryTime")
			gen := h.b.Counts().Generation
			p3.Done(Success) // old generation: counted, no transition
			h.state(Open)
			assert.Equal(h.t, gen, h.b.Counts().Generation)
		}},
		{"a probe that never reports frees its permit after the open period", Config{}, func(h *harness) {
			lost := h.allow()
			h.clk.Advance(time.Second - 1)
			oe := h.reject(HalfOpen)
			assert.Equal(h.t, time.Duration(1), oe.until.Sub(h.clk.Now()))
			h.clk.Advance(1)
			p := h.allow() // reclaimed
			lost.Done(Success)
			h.state(HalfOpen) // the reclaimed probe decides nothing
			lost.Done(Failure)
			h.state(HalfOpen)
			p.Done(Success)
			h.state(Closed)
			assert.EqualValues(h.t, 2, h.b.Counts().Successes)
		}},
		{"ignored outcomes release the permit and decide nothing", Config{}, func(h *harness) {
			for range 5 {
				h.allow().Done(Ignored)
				h.state(HalfOpen)
			}
			h.allow().Done(Success)
			h.state(Closed)
			assert.EqualValues(h.t, 5, h.b.Counts().Ignored)
		}},
		{"ignored with other probes pending", Config{HalfOpenMaxCalls: 2}, func(h *harness) {
			p1, p2 := h.allow(), h.allow()
			h.reject(HalfOpen)
			p1.Done(Ignored)
			p3 := h.allow()
			p2.Done(Success)
			h.state(HalfOpen)
			p3.Done(Success)
			h.state(Closed)
		}},
		{"a failed probe re-arms the timer", Config{}, func(h *harness) {
			h.allow().Done(Failure)
			h.toHalfOpen()
			h.allow().Done(Success)
			h.state(Closed)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.cfg)
			h.trip()
			h.toHalfOpen()
			tt.steps(h)
		})
	}
}

func TestOldGenerationNeverTransitions(t *testing.T) {
	t.Run("closed permits after a trip", func(t *testing.T) {
		h := newHarness(t, Config{})
		old := make([]Permit, 20)
		for i := range old {
			old[i] = h.allow()
		}
		h.trip()
		h.toHalfOpen()
		for _, p := range old[:10] {
			p.Done(Success) // must not close
		}
		h.state(HalfOpen)
		probe := h.allow()
		for _, p := range old[10:] {
			p.Done(Failure) // must not re-open
		}
		h.state(HalfOpen)
		probe.Done(Success)
		h.state(Closed)
		c := h.b.Counts()
		assert.EqualValues(t, 11, c.Successes)
		assert.EqualValues(t, 22, c.Failures)
	})
	t.Run("closed permits across Reset", func(t *testing.T) {
		h := newHarness(t, Config{})
		old := make([]Permit, 30)
		for i := range old {
			old[i] = h.allow()
		}
		h.b.Reset()
		for _, p := range old {
			p.Done(Failure)
		}
		h.state(Closed)
		c := h.b.Counts()
		assert.Zero(t, c.ConsecutiveFailures)
		assert.Zero(t, c.WindowCalls)
		assert.EqualValues(t, 30, c.Failures)
	})
	t.Run("a timer of an old generation does nothing", func(t *testing.T) {
		h := newHarness(t, Config{})
		h.trip()
		gen := h.b.gen
		h.b.Reset()
		h.b.endOpen(gen)
		h.state(Closed)
		h.trip()
		h.b.endOpen(gen)
		h.state(Open)
	})
}

func TestModes(t *testing.T) {
	t.Run("forced open rejects until Reset", func(t *testing.T) {
		h := newHarness(t, Config{})
		h.b.ForceOpen()
		oe := h.reject(ForcedOpen)
		assert.Zero(t, oe.RetryAfter())
		h.clk.Advance(time.Hour)
		h.reject(ForcedOpen)
		h.b.Reset()
		h.state(Closed)
		h.allow().Done(Success)
	})
	t.Run("isolate while open cancels the timer", func(t *testing.T) {
		h := newHarness(t, Config{})
		h.trip()
		require.Equal(t, 1, h.clk.Pending())
		h.b.ForceOpen()
		assert.Zero(t, h.clk.Pending())
		h.clk.Advance(time.Hour)
		h.state(ForcedOpen)
	})
	t.Run("isolate twice is one transition", func(t *testing.T) {
		h := newHarness(t, Config{})
		h.b.ForceOpen()
		h.b.ForceOpen()
		assert.EqualValues(t, 1, h.b.Counts().Transitions)
	})
	t.Run("disabled admits everything and records nothing", func(t *testing.T) {
		h := newHarness(t, Config{})
		h.b.Disable()
		h.fail(1000)
		h.state(Disabled)
		c := h.b.Counts()
		assert.Zero(t, c.Failures)
		assert.Zero(t, c.ConsecutiveFailures)
	})
	t.Run("disabled as the starting mode", func(t *testing.T) {
		h := newHarness(t, Config{Mode: Disabled})
		h.state(Disabled)
		h.fail(100)
		h.state(Disabled)
		h.b.Reset()
		h.trip()
	})
	t.Run("metrics-only counts shadow trips and never rejects", func(t *testing.T) {
		h := newHarness(t, Config{Mode: MetricsOnly})
		h.fail(30)
		h.state(MetricsOnly)
		c := h.b.Counts()
		assert.EqualValues(t, 2, c.ShadowTrips) // each trip starts the evaluation afresh
		assert.EqualValues(t, 6, c.ConsecutiveFailures)
		assert.EqualValues(t, 30, c.Failures)
		assert.Zero(t, c.Rejections)
		assert.Zero(t, c.Transitions)
	})
	t.Run("metrics-only rate rule", func(t *testing.T) {
		h := newHarness(t, Config{Mode: MetricsOnly, ConsecutiveFailures: -1, ThrottleK: -1, FailureRate: 0.5})
		assert.Zero(t, h.play("SFx10"))
		assert.EqualValues(t, 1, h.b.Counts().ShadowTrips)
	})
	t.Run("switching modes from open", func(t *testing.T) {
		h := newHarness(t, Config{})
		h.trip()
		h.b.MetricsOnly()
		h.state(MetricsOnly)
		assert.Zero(t, h.clk.Pending())
		h.allow().Done(Success)
		h.b.Disable()
		h.state(Disabled)
		h.b.Reset()
		h.state(Closed)
	})
	t.Run("reset clears the window and streak but not lifetime counts", func(t *testing.T) {
		h := newHarness(t, Config{})
		h.play("Sx3 Fx10")
		c := h.b.Counts()
		assert.EqualValues(t, 10, c.ConsecutiveFailures)
		assert.EqualValues(t, 13, c.WindowCalls)
		h.b.Reset()
		c = h.b.Counts()
		assert.Zero(t, c.ConsecutiveFailures)
		assert.Zero(t, c.WindowCalls)
		assert.EqualValues(t, 3, c.Successes)
		assert.EqualValues(t, 10, c.Failures)
		assert.Zero(t, c.Transitions, "closed to closed is not a state change")
		assert.EqualValues(t, 1, c.Generation)
	})
}

func TestLazySuccessStamping(t *testing.T) {
	h := newHarness(t, Config{})
	calls := func() uint64 { w := h.b.win.sum(h.clk.Now()); return w.succ + w.callFail }
	for range 63 {
		h.allow().Done(Success)
	}
	assert.Zero(t, calls(), "not stamped yet")
	h.allow().Done(Success)
	assert.EqualValues(t, 64, calls(), "every 64th success stamps")
	h.allow().Done(Success)
	h.allow().Done(Failure)
	assert.EqualValues(t, 66, calls(), "a failure stamps the pending successes")
	assert.EqualValues(t, 1, h.b.win.sum(h.clk.Now()).callFail)
	// Pending successes are stamped when they are folded, so a late fold
	// attributes them to a later bucket: the documented approximation.
	h.allow().Done(Success)
	h.clk.Advance(15 * time.Second)
	c := h.b.Counts()
	assert.EqualValues(t, 1, c.WindowCalls)
	assert.EqualValues(t, 66, c.Successes)
}

func TestStateChangeCallbacks(t *testing.T) {
	var got []string
	var b *Breaker
	clk := newFakeClock()
	b, err := newBreaker(Config{
		Name: "svc",
		OnStateChange: func(name string, from, to State) {
			// Runs after unlock: the breaker's methods are usable here.
			got = append(got, name+":"+from.String()+">"+to.String()+"="+b.State().String())
			_ = b.Counts()
		},
	}, clk.Now, clk.AfterFunc, constRand(0.5))
	require.NoError(t, err)
	for range 12 {
		p, err := b.Allow()
		require.NoError(t, err)
		p.Done(Failure)
	}
	clk.Advance(5 * time.Second)
	p, err := b.Allow()
	require.NoError(t, err)
	p.Done(Success)
	b.ForceOpen()
	b.Disable()
	b.MetricsOnly()
	b.Reset()
	b.Reset()
	assert.Equal(t, []string{
		"svc:closed>open=open",
		"svc:open>half-open=half-open",
		"svc:half-open>closed=closed",
		"svc:closed>forced-open=forced-open",
		"svc:forced-open>disabled=disabled",
		"svc:disabled>metrics-only=metrics-only",
		"svc:metrics-only>closed=closed",
	}, got)
	assert.EqualValues(t, 7, b.Counts().Transitions)
}

func TestCallbackReentrancyKeepsOrder(t *testing.T) {
	var got []string
	var b *Breaker
	b, err := New(Config{OnStateChange: func(_ string, from, to State) {
		got = append(got, "enter "+to.String())
		if to == ForcedOpen {
			// Both are queued and delivered by the running dispatcher once
			// this callback has returned, in transition order.
			b.Disable()
			b.MetricsOnly()
		}
		got = append(got, "exit "+to.String())
	}})
	require.NoError(t, err)
	b.ForceOpen()
	assert.Equal(t, []string{
		"enter forced-open", "exit forced-open",
		"enter disabled", "exit disabled",
		"enter metrics-only", "exit metrics-only",
	}, got)
}

func TestCallbackPanicDoesNotWedge(t *testing.T) {
	var got []State
	b, err := New(Config{OnStateChange: func(_ string, from, to State) {
		got = append(got, to)
		if to == ForcedOpen {
			panic("boom")
		}
	}})
	require.NoError(t, err)
	assert.PanicsWithValue(t, "boom", b.ForceOpen)
	b.Disable()
	assert.Equal(t, []State{ForcedOpen, Disabled}, got)
}

func TestDo(t *testing.T) {
	ctx := context.Background()
	errBoom := errors.New("boom")
	t.Run("default classifier", func(t *testing.T) {
		b, err := New(Config{ConsecutiveFailures: 2})
		require.NoError(t, err)
		require.NoError(t, b.Do(ctx, func(context.Context) error { return nil }, nil))
		canceled, cancel := context.WithCancel(ctx)
		cancel()
		require.ErrorIs(t, b.Do(canceled, func(ctx context.Context) error { return ctx.Err() }, nil), context.Canceled)
		require.ErrorIs(t, b.Do(ctx, func(context.Context) error { return errBoom }, nil), errBoom)
		c := b.Counts()
		assert.EqualValues(t, 1, c.Successes)
		assert.EqualValues(t, 1, c.Ignored)
		assert.EqualValues(t, 1, c.Failures)
		require.ErrorIs(t, b.Do(ctx, func(context.Context) error { return errBoom }, nil), errBoom)
		called := false
		err = b.Do(ctx, func(context.Context) error { called = true; return nil }, nil)
		require.ErrorIs(t, err, ErrOpen)
		assert.False(t, called, "a rejection does not call fn")
	})
	t.Run("custom classifier", func(t *testing.T) {
		b, err := New(Config{ConsecutiveFailures: 1})
		require.NoError(t, err)
		notFound := errors.New("not found")
		classify := func(err error) Outcome {
			if err == nil || errors.Is(err, notFound) {
				return Success
			}
			return Failure
		}
		for range 5 {
			require.ErrorIs(t, b.Do(ctx, func(context.Context) error { return notFound }, classify), notFound)
		}
		assert.Equal(t, Closed, b.State())
		require.ErrorIs(t, b.Do(ctx, func(context.Context) error { return errBoom }, classify), errBoom)
		assert.Equal(t, Open, b.State())
	})
	t.Run("a panic is a failure and continues", func(t *testing.T) {
		b, err := New(Config{ConsecutiveFailures: 1})
		require.NoError(t, err)
		assert.PanicsWithValue(t, "fn", func() {
			_ = b.Do(ctx, func(context.Context) error { panic("fn") }, nil)
		})
		assert.Equal(t, Open, b.State())
		assert.EqualValues(t, 1, b.Counts().Failures)
	})
}

func TestZeroPermit(t *testing.T) {
	assert.NotPanics(t, func() {
		var p Permit
		p.Done(Success)
		p.Done(Failure)
	})
}

func TestOpenError(t *testing.T) {
	// In a bubble, time.Now stands still: RetryAfter is exact.
	synctest.Test(t, func(t *testing.T) {
		e := &OpenError{name: "pay", state: ForcedOpen}
		assert.Equal(t, "breaker: forced-open (pay)", e.Error())
		assert.Equal(t, "pay", e.Name())
		assert.Zero(t, e.RetryAfter())
		assert.ErrorIs(t, e, ErrOpen)
		assert.NotErrorIs(t, e, errors.New("breaker: open"))
		past := &OpenError{state: Open, until: time.Now().Add(-time.Second)}
		assert.Zero(t, past.RetryAfter())
		assert.Equal(t, "breaker: open, retry in 0s", past.Error())
		future := &OpenError{name: "x", state: HalfOpen, until: time.Now().Add(time.Hour)}
		assert.Equal(t, time.Hour, future.RetryAfter())
		assert.Equal(t, "breaker: half-open (x), probe slots full, retry in 1h0m0s", future.Error())
		time.Sleep(20 * time.Minute)
		assert.Equal(t, 40*time.Minute, future.RetryAfter(), "computed when called")
	})
}

func TestStrings(t *testing.T) {
	for s, want := range map[State]string{
		Closed: "closed", Open: "open", HalfOpen: "half-open", ForcedOpen: "forced-open",
		Disabled: "disabled", MetricsOnly: "metrics-only", State(42): "State(42)",
	} {
		assert.Equal(t, want, s.String())
	}
	for o, want := range map[Outcome]string{Success: "success", Failure: "failure", Ignored: "ignored", Outcome(9): "Outcome(9)"} {
		assert.Equal(t, want, o.String())
	}
}

// TestHotPathsReadNoClockAndAllocateNothing pins the cost contract: the
// closed admit+success path and an open rejection read no clock and
// allocate nothing.
func TestHotPathsReadNoClockAndAllocateNothing(t *testing.T) {
	clk := newFakeClock()
	var reads int
	b, err := newBreaker(Config{}, func() time.Time { reads++; return clk.Now() }, clk.AfterFunc, constRand(0.5))
	require.NoError(t, err)

	reads = 0
	for range 63 {
		p, err := b.Allow()
		require.NoError(t, err)
		p.Done(Success)
		p.Done(Ignored)
	}
	assert.Zero(t, reads, "closed Allow + Done(Success|Ignored)")
	b.Reset()
	allocs := testing.AllocsPerRun(1000, func() {
		p, _ := b.Allow()
		p.Done(Success)
	})
	assert.Zero(t, allocs)

	for range 12 {
		p, _ := b.Allow()
		p.Done(Failure)
	}
	require.Equal(t, Open, b.State())
	reads = 0
	allocs = testing.AllocsPerRun(1000, func() {
		_, err := b.Allow()
		if err == nil {
			t.Fatal("admitted")
		}
	})
	assert.Zero(t, allocs)
	assert.Zero(t, reads, "open rejection")

	ctx := context.Background()
	b.Reset()
	allocs = testing.AllocsPerRun(1000, func() {
		_ = b.Do(ctx, func(context.Context) error { return nil }, nil)
	})
	assert.Zero(t, allocs, "Do on success")

	// A throttled rejection: the throttle sheds nearly every call.
	b, err = newBreaker(Config{ConsecutiveFailures: -1, MinimumCalls: 1}, func() time.Time { reads++; return clk.Now() }, clk.AfterFunc, constRand(0.5))
	require.NoError(t, err)
	b.stripes = make([]stripe, 1)
	p, _ := b.Allow()
	p.Done(Failure)
	require.NotZero(t, b.throttle.Load())
	b.throttle.Store(^uint32(0)) // shed all but one call in 2^32
	reads = 0
	for range 63 { // the 64th folds the stripe under the mutex
		_, err := b.Allow()
		require.ErrorIs(t, err, ErrThrottled)
	}
	assert.Zero(t, reads, "throttled rejection")
	allocs = testing.AllocsPerRun(1000, func() { _, _ = b.Allow() })
	assert.Zero(t, allocs, "throttled rejection")
	b.throttle.Store(0)
	allocs = testing.AllocsPerRun(1000, func() {
		p, _ := b.AllowRetry()
		p.Done(Success)
	})
	assert.Zero(t, allocs, "AllowRetry + Done(Success)")
}

// TestHotPathsTakeNoMutex runs the closed admit+success path (63 successes,
// short of the 64th, which stamps the window under the mutex), Done(Ignored)
// and open rejections while the test holds the breaker's mutex: a hot path
// that took it would block.
func TestHotPathsTakeNoMutex(t *testing.T) {
	b, err := New(Config{ConsecutiveFailures: 1})
	require.NoError(t, err)
	defer b.Reset() // stop the open timer
	withMutexHeld := func(name string, f func()) {
		t.Helper()
		b.mu.Lock()
		defer b.mu.Unlock()
		done := make(chan struct{})
		go func() { defer close(done); f() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second): // waited for only if the hot path blocks
			t.Fatalf("%s blocked on the breaker's mutex", name)
		}
	}
	var admitted, rejected int
	withMutexHeld("closed Allow + Done(Success|Ignored)", func() {
		for range 63 {
			if p, err := b.Allow(); err == nil {
				admitted++
				p.Done(Success)
				p.Done(Ignored)
			}
		}
	})
	assert.Equal(t, 63, admitted)
	p, err := b.Allow()
	require.NoError(t, err)
	p.Done(Failure)
	require.Equal(t, Open, b.State())
	withMutexHeld("open rejection", func() {
		for range 100 {
			if _, err := b.Allow(); err != nil {
				rejected++
			}
		}
	})
	assert.Equal(t, 100, rejected)
	b.Reset()
	b.throttle.Store(^uint32(0))
	throttled := 0
	withMutexHeld("throttled rejection", func() {
		for range 63 {
			if _, err := b.Allow(); errors.Is(err, ErrThrottled) {
				throttled++
			}
		}
	})
	assert.Equal(t, 63, throttled)
}

// DoneAt uses the caller's clock reading: a failed attempt recorded with it
// reads no clock of its own, and the window follows the time given.
func TestDoneAtUsesTheGivenTime(t *testing.T) {
	c := newFakeClock()
	reads := 0
	clock := func() time.Time { reads++; return c.Now() }
	b, err := newBreaker(Config{ConsecutiveFailures: -1, ThrottleK: -1, FailureRate: 0.5, MinimumCalls: 4, RecoveryJitter: -1}, clock, c.AfterFunc, constRand(0.5))
	require.NoError(t, err)
	reads = 0
	fail := func(at time.Time) {
		t.Helper()
		p, err := b.Allow()
		require.NoError(t, err)
		p.DoneAt(Failure, at)
	}

	// Two failures now, two 20s later (by the times given; the breaker's
	// own clock does not move): the first two have left the 10s window, so
	// the rate rule sees 2 calls, not 4.
	t0 := c.Now()
	fail(t0)
	fail(t0)
	later := t0.Add(20 * time.Second)
	fail(later)
	fail(later)
	assert.Equal(t, Closed, b.State(), "only 2 failures in the window of the time given")
	fail(later)
	fail(later)
	assert.Equal(t, Open, b.State(), "4 failures in the window")
	assert.Zero(t, reads, "DoneAt read no clock")
}
