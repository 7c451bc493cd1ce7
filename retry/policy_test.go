package retry

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"
)

func TestPolicyDefaults(t *testing.T) {
	got, err := Policy{}.Normalize()
	require.NoError(t, err)
	assert.Equal(t, Policy{
		MaxAttempts:    4,
		InitialBackoff: 25 * time.Millisecond,
		MaxBackoff:     5 * time.Second,
		Multiplier:     2,
		Jitter:         FullJitter,
		JitterFactor:   0.2,
		MinAttemptTime: time.Millisecond,
		MaxPushback:    30 * time.Second,
	}, got)
	require.NoError(t, Policy{}.Validate())
	// Explicit values survive.
	p := Policy{MaxAttempts: 1, InitialBackoff: time.Second, MaxBackoff: time.Second, Multiplier: 1, JitterFactor: 1}
	n, err := p.Normalize()
	require.NoError(t, err)
	assert.Equal(t, p.MaxAttempts, n.MaxAttempts)
	assert.Equal(t, 1.0, n.Multiplier)
	assert.Equal(t, 1.0, n.JitterFactor)
	again, err := n.Normalize()
	require.NoError(t, err)
	assert.Equal(t, n, again, "a normalized Policy normalizes to itself")
}

// An invalid Policy comes back from Normalize with its zero fields defaulted all the same, and
// Delay gives 0 for it.
func TestPolicyNormalizeInvalid(t *testing.T) {
	p := Policy{MaxAttempts: -1}
	got, err := p.Normalize()
	require.Error(t, err)
	assert.Equal(t, Policy{MaxAttempts: -1, InitialBackoff: DefaultInitialBackoff, MaxBackoff: DefaultMaxBackoff,
		Multiplier: DefaultMultiplier, JitterFactor: DefaultJitterFactor, MinAttemptTime: DefaultMinAttemptTime,
		MaxPushback: DefaultMaxPushback}, got)
	assert.Zero(t, p.Delay(0, 0.5))
	assert.Zero(t, Policy{InitialBackoff: 6 * time.Second}.Delay(0, 0.5), "invalid only once the defaults apply")
}

func TestPolicyValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    Policy
		want string // "" = valid
	}{
		{"zero", Policy{}, ""},
		{"one attempt", Policy{MaxAttempts: 1}, ""},
		{"many attempts, no hidden cap", Policy{MaxAttempts: 1000}, ""},
		{"equal backoffs", Policy{InitialBackoff: time.Second, MaxBackoff: time.Second}, ""},
		{"max backoff above default initial", Policy{MaxBackoff: 50 * time.Millisecond}, ""},
		{"multiplier one", Policy{Multiplier: 1}, ""},
		{"jitter factor bounds", Policy{Jitter: ProportionalJitter, JitterFactor: 1}, ""},
		{"no jitter", Policy{Jitter: NoJitter}, ""},
		{"attempt timeout", Policy{AttemptTimeout: time.Second}, ""},
		{"huge values", Policy{MaxBackoff: math.MaxInt64, MaxPushback: math.MaxInt64, Multiplier: math.MaxFloat64}, ""},

		{"negative attempts", Policy{MaxAttempts: -2}, "retry: Policy.MaxAttempts: must be at least 1, got -2"},
		{"negative initial", Policy{InitialBackoff: -1}, "retry: Policy.InitialBackoff: must not be negative, got -1ns"},
		{"negative max", Policy{MaxBackoff: -time.Second}, "retry: Policy.MaxBackoff: must not be negative, got -1s"},
		{"max below initial", Policy{InitialBackoff: time.Second, MaxBackoff: time.Millisecond}, "retry: Policy.MaxBackoff: must be >= InitialBackoff (1s), got 1ms"},
		{"initial above default max", Policy{InitialBackoff: 6 * time.Second}, "retry: Policy.MaxBackoff: must be >= InitialBackoff (6s), got 5s"},
		{"multiplier below one", Policy{Multiplier: 0.5}, "retry: Policy.Multiplier: must be finite and at least 1, got 0.5"},
		{"multiplier negative", Policy{Multiplier: -2}, "retry: Policy.Multiplier: must be finite and at least 1, got -2"},
		{"multiplier NaN", Policy{Multiplier: math.NaN()}, "retry: Policy.Multiplier: must be finite and at least 1, got NaN"},
		{"multiplier Inf", Policy{Multiplier: math.Inf(1)}, "retry: Policy.Multiplier: must be finite and at least 1, got +Inf"},
		{"unknown jitter", Policy{Jitter: 9}, "retry: Policy.Jitter: unknown mode 9"},
		{"jitter factor above one", Policy{JitterFactor: 1.5}, "retry: Policy.JitterFactor: must be in [0, 1], got 1.5"},
		{"jitter factor negative", Policy{JitterFactor: -0.1}, "retry: Policy.JitterFactor: must be in [0, 1], got -0.1"},
		{"jitter factor NaN", Policy{JitterFactor: math.NaN()}, "retry: Policy.JitterFactor: must be in [0, 1], got NaN"},
		{"negative attempt timeout", Policy{AttemptTimeout: -1}, "retry: Policy.AttemptTimeout: must not be negative, got -1ns"},
		{"negative min attempt time", Policy{MinAttemptTime: -1}, "retry: Policy.MinAttemptTime: must not be negative, got -1ns"},
		{"negative max pushback", Policy{MaxPushback: -1}, "retry: Policy.MaxPushback: must not be negative, got -1ns"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.p.Validate()
			if tc.want == "" {
				require.NoError(t, err)
				return
			}
			require.EqualError(t, err, tc.want)
		})
	}
}

func TestBackoffNoJitterSequence(t *testing.T) {
	p := Policy{Jitter: NoJitter} // 25ms × 2^n, capped at 5s
	want := []time.Duration{
		25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond,
		800 * time.Millisecond, 1600 * time.Millisecond, 3200 * time.Millisecond, 5 * time.Second, 5 * time.Second,
	}
	for n, w := range want {
		assert.Equal(t, w, p.Delay(n, 0.5), "n=%d", n)
	}
	for _, n := range []int{63, 64, 1000, 1 << 20, math.MaxInt} {
		assert.Equal(t, 5*time.Second, p.Delay(n, 0.5), "n=%d", n)
	}
	assert.Equal(t, 25*time.Millisecond, p.Delay(-7, 0.5), "negative n counts as 0")
}

func TestBackoffJitter(t *testing.T) {
	full := Policy{InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}
	assert.Equal(t, time.Duration(0), full.Delay(0, 0))
	assert.Equal(t, 50*time.Millisecond, full.Delay(0, 0.5))
	assert.Equal(t, 250*time.Millisecond, full.Delay(20, 0.25), "the cap applies before jitter: U(0, 1s)")
	assert.Less(t, full.Delay(20, 0.9999999), time.Second)

	prop := Policy{Jitter: ProportionalJitter, InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}
	assert.Equal(t, 80*time.Millisecond, prop.Delay(0, 0), "factor 0.2 by default: × U(0.8, 1.2)")
	assert.Equal(t, 100*time.Millisecond, prop.Delay(0, 0.5))
	assert.InDelta(t, float64(120*time.Millisecond), float64(prop.Delay(0, 0.9999999)), float64(time.Microsecond))
	assert.Equal(t, 900*time.Millisecond, prop.Delay(20, 0.25), "cap before jitter")
	assert.Equal(t, time.Second, prop.Delay(20, 0.9), "the jittered value is clamped to MaxBackoff")
	half := prop
	half.JitterFactor = 0.5
	assert.Equal(t, 50*time.Millisecond, half.Delay(0, 0))

	// u outside [0, 1) is clamped; NaN counts as 0.
	assert.Equal(t, time.Duration(0), full.Delay(0, -1))
	assert.Equal(t, time.Duration(0), full.Delay(0, math.NaN()))
	assert.InDelta(t, float64(100*time.Millisecond), float64(full.Delay(0, 7)), 1)
	assert.Equal(t, 80*time.Millisecond, prop.Delay(0, math.Inf(-1)))
}

func TestBackoffExtremes(t *testing.T) {
	huge := Policy{Jitter: NoJitter, InitialBackoff: math.MaxInt64, MaxBackoff: math.MaxInt64, Multiplier: math.MaxFloat64}
	for _, n := range []int{0, 1, 2, 1000, math.MaxInt} {
		assert.Equal(t, time.Duration(math.MaxInt64), huge.Delay(n, 0.5), "n=%d", n)
	}
	huge.Jitter = ProportionalJitter
	assert.Equal(t, time.Duration(math.MaxInt64), huge.Delay(3, 0.99))
	huge.Jitter = FullJitter
	d := huge.Delay(3, 0.99)
	assert.Positive(t, d)

	one := Policy{Jitter: NoJitter, Multiplier: 1, InitialBackoff: time.Second, MaxBackoff: time.Hour}
	assert.Equal(t, time.Second, one.Delay(math.MaxInt, 0))

	// A multiplier close to 1 takes many retries to reach the cap: the formula holds at any n.
	slow := Policy{Jitter: NoJitter, Multiplier: 1.01, InitialBackoff: time.Millisecond, MaxBackoff: time.Second}
	for _, n := range []int{10, 40, 100, 500, 694} {
		want := float64(time.Millisecond) * math.Pow(1.01, float64(n))
		assert.InDelta(t, want, float64(slow.Delay(n, 0)), want*1e-12+1, "n=%d", n)
	}
	assert.Equal(t, time.Second, slow.Delay(695, 0), "1.01^695 > 1000")

	tiny := Policy{Jitter: NoJitter, InitialBackoff: 1, MaxBackoff: 1}
	assert.Equal(t, time.Duration(1), tiny.Delay(0, 0))

	// Invalid policies do not panic and stay within [0, MaxBackoff].
	bad := Policy{Jitter: 9, InitialBackoff: -time.Second, Multiplier: math.NaN(), JitterFactor: 7}
	assert.Equal(t, time.Duration(0), bad.Delay(3, 0.5))
	bad = Policy{Jitter: ProportionalJitter, JitterFactor: math.NaN(), Multiplier: -3}
	d = bad.Delay(3, 0.5)
	assert.GreaterOrEqual(t, d, time.Duration(0))
	assert.LessOrEqual(t, d, DefaultMaxBackoff)
	assert.Equal(t, time.Duration(0), Policy{MaxBackoff: -1}.Delay(0, 0.5))
}

func TestJitterString(t *testing.T) {
	assert.Equal(t, "full", FullJitter.String())
	assert.Equal(t, "proportional", ProportionalJitter.String())
	assert.Equal(t, "none", NoJitter.String())
	assert.Equal(t, "Jitter(7)", Jitter(7).String())
}

func TestAttemptContext(t *testing.T) {
	parent, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()

	var p Policy
	ctx, c := p.AttemptContext(parent)
	assert.Equal(t, parent, ctx, "no AttemptTimeout: ctx itself")
	c()
	assert.NoError(t, parent.Err(), "the no-op cancel leaves the parent alone")
	assert.Zero(t, testing.AllocsPerRun(100, func() {
		_, c := p.AttemptContext(parent)
		c()
	}))

	p.AttemptTimeout = time.Second
	ctx, c = p.AttemptContext(parent)
	dl, ok := ctx.Deadline()
	require.True(t, ok)
	pdl, _ := parent.Deadline()
	assert.True(t, dl.Before(pdl))
	c()
	assert.Error(t, ctx.Err())
	assert.NoError(t, parent.Err())

	p.AttemptTimeout = 2 * time.Hour
	ctx, c = p.AttemptContext(parent)
	defer c()
	dl, _ = ctx.Deadline()
	assert.Equal(t, pdl, dl, "never beyond the caller's deadline")
}

// FuzzBackoff: for any attempt n, any sample u and any config that validates,
// 0 <= Backoff <= MaxBackoff (after defaults), and NoJitter is monotonic in n.
func FuzzBackoff(f *testing.F) {
	f.Add(0, 0.5, int64(0), int64(0), 0.0, uint8(0), 0.0)
	f.Add(3, 0.99, int64(time.Millisecond), int64(time.Second), 1.6, uint8(1), 0.2)
	f.Add(math.MaxInt, 0.0, int64(math.MaxInt64), int64(math.MaxInt64), math.MaxFloat64, uint8(1), 1.0)
	f.Add(64, 0.999999, int64(1), int64(2), 2.0, uint8(2), 0.0)
	f.Add(-5, -1.0, int64(7), int64(7), 1.0, uint8(0), 0.5)
	f.Fuzz(func(t *testing.T, n int, u float64, initial, maxB int64, mult float64, jitter uint8, factor float64) {
		p := Policy{
			InitialBackoff: time.Duration(initial),
			MaxBackoff:     time.Duration(maxB),
			Multiplier:     mult,
			Jitter:         Jitter(jitter),
			JitterFactor:   factor,
		}
		d := p.Delay(n, u) // must not panic, even when p is invalid
		if p.Validate() != nil {
			if d != 0 {
				t.Fatalf("invalid policy %+v: Delay(%d, %v) = %v, want 0", p, n, u, d)
			}
			return
		}
		np, _ := p.Normalize()
		capB := np.MaxBackoff
		if d < 0 || d > capB {
			t.Fatalf("Backoff(%d, %v) = %v, want within [0, %v] for %+v", n, u, d, capB, p)
		}
		if p.Jitter == NoJitter && n >= 0 && n < math.MaxInt {
			if next := p.Delay(n+1, u); next < d {
				t.Fatalf("NoJitter not monotonic: Backoff(%d) = %v > Backoff(%d) = %v for %+v", n, d, n+1, next, p)
			}
		}
	})
}

// FuzzPolicyValidate: Validate never panics, and a policy it accepts has sane defaults applied.
func FuzzPolicyValidate(f *testing.F) {
	f.Add(0, int64(0), int64(0), 0.0, uint8(0), 0.0, int64(0), int64(0), int64(0))
	f.Add(-2, int64(-1), int64(-1), math.NaN(), uint8(200), math.Inf(1), int64(-1), int64(-1), int64(-1))
	f.Add(1, int64(math.MaxInt64), int64(math.MaxInt64), math.MaxFloat64, uint8(1), 1.0, int64(math.MaxInt64), int64(math.MaxInt64), int64(math.MaxInt64))
	f.Fuzz(func(t *testing.T, attempts int, initial, maxB int64, mult float64, jitter uint8, factor float64, timeout, minAttempt, pushback int64) {
		p := Policy{
			MaxAttempts:    attempts,
			InitialBackoff: time.Duration(initial),
			MaxBackoff:     time.Duration(maxB),
			Multiplier:     mult,
			Jitter:         Jitter(jitter),
			JitterFactor:   factor,
			AttemptTimeout: time.Duration(timeout),
			MinAttemptTime: time.Duration(minAttempt),
			MaxPushback:    time.Duration(pushback),
		}
		if p.valid() != (p.explain() == nil) {
			t.Fatalf("valid() = %v but explain() = %v for %+v", p.valid(), p.explain(), p)
		}
		d, err := p.Normalize()
		if err != nil {
			if len(err.Error()) < len("retry: Policy.X: ") {
				t.Fatalf("error too short: %q", err)
			}
			return
		}
		if again, err := d.Normalize(); err != nil || again != d {
			t.Fatalf("Normalize not idempotent: %+v -> %+v, %v", d, again, err)
		}
		if d.MaxAttempts < 1 || d.InitialBackoff <= 0 || d.MaxBackoff < d.InitialBackoff || !(d.Multiplier >= 1) ||
			d.JitterFactor < 0 || d.JitterFactor > 1 || d.MinAttemptTime <= 0 || d.MaxPushback <= 0 {
			t.Fatalf("accepted policy has bad defaults: %+v", d)
		}
	})
}

func TestPowIsMathPow(t *testing.T) {
	check := func(x float64, n int) {
		want := math.Pow(x, float64(max(n, 0)))
		require.Equal(t, math.Float64bits(want), math.Float64bits(pow(x, n)), "pow(%v, %d)", x, n)
	}
	for _, x := range []float64{1, math.Nextafter(1, 2), 1.1, 1.5, 1.6, 2, 3, 10, 1e10, 1e300, math.MaxFloat64} {
		for n := -2; n <= 1100; n++ {
			check(x, n)
		}
		check(x, math.MaxInt)
	}
	rapid.Check(t, func(t *rapid.T) {
		check(rapid.Float64Range(1, 1e6).Draw(t, "x"), rapid.IntRange(-5, 1<<20).Draw(t, "n"))
	})
}
