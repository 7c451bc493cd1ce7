package retry

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// newBudgetAt returns a ratio budget whose origin and flush clock follow *clock.
func newBudgetAt(t *rapid.T, cfg BudgetConfig, clock *time.Time) *RatioBudget {
	b, err := NewBudget(cfg)
	if err != nil {
		t.Fatalf("NewBudget(%+v): %v", cfg, err)
	}
	b.origin = *clock
	b.clock = func() time.Time { return *clock }
	return b
}

func drawBudgetConfig(t *rapid.T) BudgetConfig {
	return BudgetConfig{
		Ratio:               rapid.Float64Range(0.01, 5).Draw(t, "ratio"),
		MinRetriesPerSecond: rapid.Float64Range(0.001, 5).Draw(t, "minRetriesPerSecond"),
		Window:              time.Duration(rapid.Int64Range(int64(time.Second), int64(60*time.Second)).Draw(t, "window")),
	}
}

// Within one Window nothing expires: failing retries allowed <= Ratio × deposits + reserve,
// and the budget is not stingier than that by more than one retry.
func TestBudgetBoundWithinWindow(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		cfg := drawBudgetConfig(t)
		now := t0
		b := newBudgetAt(t, cfg, &now)
		events := rapid.IntRange(1, 300).Draw(t, "events")
		horizon := cfg.Window * 85 / 100
		deposits, allowed := 0, 0
		for i := range events {
			now = t0.Add(horizon * time.Duration(i) / time.Duration(events))
			switch rapid.IntRange(0, 2).Draw(t, "kind") {
			case 0:
				b.Succeeded(false)
				deposits++
			case 1:
				b.NotRetryable()
				deposits++
			case 2: // a call whose retries all fail
				for range rapid.IntRange(1, 5).Draw(t, "retries") {
					b.FailedAt(now)
					if !b.AllowAt(now) {
						break
					}
					allowed++
				}
			}
		}
		bound := cfg.Ratio*float64(deposits) + cfg.MinRetriesPerSecond*cfg.Window.Seconds()
		if float64(allowed) > bound*(1+1e-5)+1e-6 {
			t.Fatalf("allowed %d retries, bound %.4f (%d deposits)", allowed, bound, deposits)
		}
		for b.AllowAt(now) {
			allowed++
		}
		if float64(allowed) < bound*(1-1e-5)-1 {
			t.Fatalf("drained: allowed %d retries, want at least %.4f - 1", allowed, bound)
		}
	})
}

// Over many Windows, with failing retries: at every retry time τ, the retries in
// [τ - 0.9 Window, τ] <= Ratio × deposits in (τ - Window, τ] + MinRetriesPerSecond × Window
// seconds. No slack for late deposits: a deposit counts in the slot the budget last rotated
// to, never a later one.
func TestBudgetBoundSlidingWindow(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		cfg := drawBudgetConfig(t)
		now := t0
		b := newBudgetAt(t, cfg, &now)
		maxStep := int64(cfg.Window / time.Duration(rapid.SampledFrom([]int{5, 20, 100, 1000}).Draw(t, "stepsPerWindow")))
		var retries, deposits []time.Time
		for range rapid.IntRange(1, 600).Draw(t, "events") {
			now = now.Add(time.Duration(rapid.Int64Range(0, maxStep).Draw(t, "step")))
			switch rapid.IntRange(0, 3).Draw(t, "kind") {
			case 0:
				b.Succeeded(false)
				deposits = append(deposits, now)
			case 1:
				b.NotRetryable()
				deposits = append(deposits, now)
			default:
				for range rapid.IntRange(1, 5).Draw(t, "retries") {
					if !b.AllowAt(now) {
						break
					}
					retries = append(retries, now)
				}
			}
		}
		reserve := cfg.MinRetriesPerSecond * cfg.Window.Seconds()
		for _, tau := range retries {
			n := countIn(retries, tau.Add(-cfg.Window*9/10), tau, true)
			d := countIn(deposits, tau.Add(-cfg.Window), tau, false)
			bound := cfg.Ratio*float64(d) + reserve
			if float64(n) > bound*(1+1e-5)+1e-6 {
				t.Fatalf("at %v: %d retries in the last 0.9 Window, bound %.4f (%d deposits)", tau.Sub(t0), n, bound, d)
			}
		}
	})
}

// countIn counts the times in (from, to], or [from, to] when closed.
func countIn(ts []time.Time, from, to time.Time, closed bool) int {
	n := 0
	for _, x := range ts {
		if x.After(to) {
			continue
		}
		if x.After(from) || (closed && x.Equal(from)) {
			n++
		}
	}
	return n
}

// simulate runs calls whose attempts fail independently with probability pFail, with up to
// maxAttempts attempts, arriving every interval, and returns the share that succeeded.
// retried reports a retried success to the budget as such (the refund) or, when false, as a
// first-attempt success (no refund), to show what the refund is for.
func simulate(t interface{ Fatalf(string, ...any) }, b *RatioBudget, clock *time.Time, seed uint64, calls, maxAttempts int, pFail float64, interval time.Duration, refund bool) float64 {
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	p := Policy{MaxAttempts: maxAttempts, Jitter: NoJitter, InitialBackoff: 10 * time.Millisecond}
	ctx := context.Background()
	ok := 0
	for i := range calls {
		now := t0.Add(time.Duration(i) * interval)
		*clock = now
		c := p.NewCall(b)
		for {
			c.Begin()
			if rng.Float64() >= pFail {
				if refund {
					c.Done(nil, false)
				} else {
					b.Succeeded(false)
				}
				ok++
				break
			}
			delay, stop := c.Next(ctx, errSentinel, Backoff, now)
			if stop != nil {
				if stop.Reason != Exhausted && stop.Reason != BudgetExhausted {
					t.Fatalf("unexpected stop: %v", stop)
				}
				c.Done(errSentinel, true)
				break
			}
			now = now.Add(delay)
		}
	}
	return float64(ok) / float64(calls)
}

// At 30% independent attempt failures with 4 attempts, the default budget (0.2, 1/s, 10s)
// costs less than 0.5 points of success rate against unlimited retries (1 - 0.3^4 = 99.19%):
// the retries that succeed refund their cost.
func TestBudgetThirtyPercentFailures(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		seed := rapid.Uint64().Draw(t, "seed")
		rate := rapid.SampledFrom([]int{2, 20, 100, 1000, 10000}).Draw(t, "callsPerSecond")
		const calls = 20000
		interval := time.Second / time.Duration(rate)
		now := t0
		b := newBudgetAt(t, BudgetConfig{}, &now)
		unlimited := simulate(t, nil, &now, seed, calls, 4, 0.3, interval, true)
		withBudget := simulate(t, b, &now, seed, calls, 4, 0.3, interval, true)
		if unlimited-withBudget > 0.005 || withBudget < 0.988 {
			t.Fatalf("%d calls/s: success %.4f with the budget, %.4f unlimited", rate, withBudget, unlimited)
		}
	})
}

// The A6 token bucket follows the A6 arithmetic exactly (a model in thousandths of a token).
func TestBudgetTokenBucketModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		maxT := rapid.Int64Range(1, 1_000_000).Draw(t, "maxTokensThousandths")
		ratio := rapid.Int64Range(1, 2_000_000).Draw(t, "tokenRatioThousandths")
		b, err := NewTokenBucket(float64(maxT)/1000, float64(ratio)/1000)
		if err != nil {
			t.Fatal(err)
		}
		tokens := maxT
		for range rapid.IntRange(1, 500).Draw(t, "ops") {
			switch rapid.IntRange(0, 3).Draw(t, "op") {
			case 0:
				b.FailedAt(t0)
				tokens = max(tokens-1000, 0)
			case 1:
				b.Succeeded(rapid.Bool().Draw(t, "retried"))
				tokens = min(tokens+ratio, maxT)
			case 2:
				b.NotRetryable()
			case 3:
				if got, want := b.AllowAt(t0), 2*tokens > maxT; got != want {
					t.Fatalf("Allow = %v with %d/1000 tokens of %d/1000", got, tokens, maxT)
				}
			}
			if got := b.tokens.Load(); got != tokens {
				t.Fatalf("tokens = %d/1000, model %d/1000", got, tokens)
			}
		}
	})
}

// A full outage after a healthy period: the first Window spends the deposits of the healthy
// Window (Ratio 0.2: at most 1.2× load), after that only the reserve is left (1.0× + 1/R).
// Without the refund, 30% failures would already be throttled (the comparison the package
// documentation quotes).
func TestBudgetOutageLoad(t *testing.T) {
	const rate = 100 // calls per second
	now := t0
	b, err := NewBudget(BudgetConfig{})
	if err != nil {
		t.Fatal(err)
	}
	b.origin, b.clock = now, func() time.Time { return now }
	p := Policy{Jitter: NoJitter}
	ctx := context.Background()
	attemptsPerSecond := map[int]int{}
	for i := range 60 * rate {
		now = t0.Add(time.Duration(i) * time.Second / rate)
		second := i / rate
		down := second >= 20 // healthy for 20s, then a full outage
		c := p.NewCall(b)
		for {
			c.Begin()
			attemptsPerSecond[second]++
			if !down {
				c.Done(nil, false)
				break
			}
			if _, stop := c.Next(ctx, errSentinel, Backoff, now); stop != nil {
				c.Done(errSentinel, true)
				break
			}
		}
	}
	load := func(from, to int) float64 {
		n := 0
		for s := from; s < to; s++ {
			n += attemptsPerSecond[s]
		}
		return float64(n) / float64((to-from)*rate)
	}
	t.Logf("load: healthy %.3f, first outage window %.3f, later %.3f", load(0, 20), load(20, 30), load(31, 60))
	if l := load(0, 20); l != 1 {
		t.Fatalf("healthy load %.3f", l)
	}
	if l := load(20, 30); l > 1.2+10.0/(10*rate)+0.001 || l < 1.15 {
		t.Fatalf("first outage window: load %.3f, want about 1.2 (the healthy window's deposits × 0.2 + reserve)", l)
	}
	if l := load(31, 60); l > 1+1.0/rate+0.001 {
		t.Fatalf("later outage windows: load %.3f, want <= 1 + 1/R", l)
	}
}

// TestBudgetRefundMatters pins the comparison in the package documentation: at 30% failures
// the budget without the refund would cut the success rate to about 82%.
func TestBudgetRefundMatters(t *testing.T) {
	now := t0
	with, err := NewBudget(BudgetConfig{})
	if err != nil {
		t.Fatal(err)
	}
	with.origin, with.clock = now, func() time.Time { return now }
	without, _ := NewBudget(BudgetConfig{})
	without.origin, without.clock = now, func() time.Time { return now }
	const calls, interval = 50000, 10 * time.Millisecond
	rWith := simulate(t, with, &now, 1, calls, 4, 0.3, interval, true)
	now = t0
	rWithout := simulate(t, without, &now, 1, calls, 4, 0.3, interval, false)
	if rWith < 0.99 || rWithout > 0.85 {
		t.Fatalf("success with refund %.4f, without %.4f", rWith, rWithout)
	}
	t.Logf("30%% failures, 4 attempts, 100 calls/s: success %.4f with refund, %.4f without", rWith, rWithout)
}

// Concurrent calls through Call, interleaved at random, within one Window: the retries that
// failed (granted, neither refunded nor given back) stay within Ratio × deposits + 2 × reserve
// (the in-flight credit is at most the reserve), and within Ratio × deposits + reserve + 1 when
// the credit is off (one caller at a time). The retries in flight are settled exactly.
func TestBudgetInFlightCreditBound(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		cfg := drawBudgetConfig(t)
		now := t0
		b := newBudgetAt(t, cfg, &now)
		callers := rapid.IntRange(1, 40).Draw(t, "callers")
		pOK := rapid.SampledFrom([]float64{0, 0.3, 0.7, 1}).Draw(t, "attemptSuccess")
		p := Policy{MaxAttempts: 4, Jitter: NoJitter}
		ctx := context.Background()
		type caller struct {
			c      Call
			active bool
		}
		cs := make([]caller, callers)
		deposits, failed := 0, 0
		for range rapid.IntRange(1, 2000).Draw(t, "steps") {
			i := rapid.IntRange(0, callers-1).Draw(t, "caller")
			k := &cs[i]
			if !k.active {
				k.c = p.NewCall(b)
				k.active = true
			}
			retry := k.c.Attempts() > 0
			k.c.Begin()
			if rapid.Float64Range(0, 1).Draw(t, "u") < pOK {
				k.c.Done(nil, false)
				deposits++
				k.active = false
				continue
			}
			if retry {
				failed++
			}
			if _, stop := k.c.Next(ctx, errSentinel, Backoff, now); stop != nil {
				k.c.Done(errSentinel, true)
				k.active = false
			}
		}
		reserve := cfg.MinRetriesPerSecond * cfg.Window.Seconds()
		limit := cfg.Ratio*float64(deposits) + 2*reserve
		if callers == 1 {
			limit = cfg.Ratio*float64(deposits) + reserve + 1
		}
		if float64(failed) > limit*(1+1e-5)+1e-6 {
			t.Fatalf("%d retries failed, limit %.4f (%d deposits)", failed, limit, deposits)
		}
		active := 0
		for i := range cs {
			if cs[i].active && cs[i].c.inflight {
				active++
			}
		}
		if got := b.inflight.Load(); got != int64(active) {
			t.Fatalf("in flight: budget %d, calls %d", got, active)
		}
	})
}
