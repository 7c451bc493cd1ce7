package retry

import (
	"context"
	"fmt"
	"math"
	"time"
)

// Jitter selects how Policy.Delay randomizes the capped exponential delay.
type Jitter uint8

const (
	// FullJitter draws the delay uniformly from [0, d) (the default).
	FullJitter Jitter = iota
	// ProportionalJitter multiplies d by U(1-JitterFactor, 1+JitterFactor)
	// (gRFC A6 and Khive, factor 0.2 by default) and clamps the result to MaxBackoff.
	ProportionalJitter
	// NoJitter uses d as is.
	NoJitter
)

// String returns "full", "proportional" or "none".
func (j Jitter) String() string {
	switch j {
	case FullJitter:
		return "full"
	case ProportionalJitter:
		return "proportional"
	case NoJitter:
		return "none"
	}
	return fmt.Sprintf("Jitter(%d)", uint8(j))
}

// Defaults applied to the zero fields of a Policy.
const (
	DefaultMaxAttempts    = 4
	DefaultInitialBackoff = 25 * time.Millisecond
	DefaultMaxBackoff     = 5 * time.Second
	DefaultMultiplier     = 2.0
	DefaultJitterFactor   = 0.2
	DefaultMinAttemptTime = time.Millisecond
	DefaultMaxPushback    = 30 * time.Second
)

// Policy configures the retries of one logical call. The zero value is usable: every zero
// field takes the documented default. A Policy is a plain value; copy it freely.
type Policy struct {
	// MaxAttempts counts the first call: 1 means no retries. 0 = default 4 (Khive
	// max_retries=3). There is no hidden cap. Negative is an error.
	MaxAttempts int
	// InitialBackoff is the delay before the first retry, before jitter. 0 = default 25ms.
	// Negative is an error.
	InitialBackoff time.Duration
	// MaxBackoff caps the exponential delay (applied before jitter). 0 = default 5s. It must
	// be >= InitialBackoff once defaults are applied.
	MaxBackoff time.Duration
	// Multiplier grows the delay per retry. 0 = default 2; otherwise it must be finite and >= 1.
	Multiplier float64
	// Jitter selects the randomization; the zero value is FullJitter.
	Jitter Jitter
	// JitterFactor is used by ProportionalJitter only. 0 = default 0.2; must be in [0, 1].
	// (A factor of exactly 0 cannot be asked for; use NoJitter.)
	JitterFactor float64
	// AttemptTimeout bounds each attempt (see AttemptContext). 0 = none. It never extends the
	// caller's deadline. Negative is an error.
	AttemptTimeout time.Duration
	// MinAttemptTime is the least time an attempt needs: a retry is not started unless the
	// caller's remaining deadline is >= delay + MinAttemptTime. 0 = default 1ms. Negative is an error.
	MinAttemptTime time.Duration
	// MaxPushback caps server-given delays (After). 0 = default 30s. Negative is an error.
	MaxPushback time.Duration
}

// Normalize validates p and returns it with each zero field replaced by its default. It
// reports the first invalid field, naming it:
//
//	retry: Policy.MaxAttempts: must be at least 1, got -2
//
// A normalized Policy normalizes to itself. Normalize never panics.
func (p Policy) Normalize() (Policy, error) {
	ok := p.valid()
	p.applyDefaults() // an invalid p is returned with its defaults too
	if !ok {
		return p, p.explain()
	}
	return p, nil
}

// valid reports whether p normalizes without an error, without writing the defaults.
func (p *Policy) valid() bool {
	initial, maxB := p.InitialBackoff, p.MaxBackoff
	if initial == 0 {
		initial = DefaultInitialBackoff
	}
	if maxB == 0 {
		maxB = DefaultMaxBackoff
	}
	return maxB >= initial && p.validAsGiven()
}

// validAsGiven reports whether each field is valid or zero, before the defaults.
func (p *Policy) validAsGiven() bool {
	// One sign test for the six integer fields: the OR of the values is negative iff one is.
	return int64(p.MaxAttempts)|int64(p.InitialBackoff)|int64(p.MaxBackoff)|
		int64(p.AttemptTimeout)|int64(p.MinAttemptTime)|int64(p.MaxPushback) >= 0 &&
		(p.Multiplier == 0 || p.Multiplier >= 1 && p.Multiplier <= math.MaxFloat64) &&
		p.JitterFactor >= 0 && p.JitterFactor <= 1 && p.Jitter <= NoJitter
}

// applyDefaults replaces each zero field of p by its default.
func (p *Policy) applyDefaults() {
	if p.MaxAttempts == 0 {
		p.MaxAttempts = DefaultMaxAttempts
	}
	if p.MinAttemptTime == 0 {
		p.MinAttemptTime = DefaultMinAttemptTime
	}
	if p.MaxPushback == 0 {
		p.MaxPushback = DefaultMaxPushback
	}
	p.applyDelayDefaults()
}

// applyDelayDefaults applies the defaults of the fields Delay reads.
func (p *Policy) applyDelayDefaults() {
	if p.InitialBackoff == 0 {
		p.InitialBackoff = DefaultInitialBackoff
	}
	if p.MaxBackoff == 0 {
		p.MaxBackoff = DefaultMaxBackoff
	}
	if p.Multiplier == 0 {
		p.Multiplier = DefaultMultiplier
	}
	if p.JitterFactor == 0 {
		p.JitterFactor = DefaultJitterFactor
	}
}

// Validate reports the first invalid field, as Normalize does.
func (p Policy) Validate() error {
	_, err := p.Normalize()
	return err
}

// explain says why p is invalid, naming the first invalid field, or returns nil.
func (p *Policy) explain() error {
	switch {
	case p.MaxAttempts < 0:
		return fieldError("MaxAttempts", "must be at least 1, got %d", p.MaxAttempts)
	case p.InitialBackoff < 0:
		return fieldError("InitialBackoff", "must not be negative, got %v", p.InitialBackoff)
	case p.MaxBackoff < 0:
		return fieldError("MaxBackoff", "must not be negative, got %v", p.MaxBackoff)
	case math.IsNaN(p.Multiplier) || math.IsInf(p.Multiplier, 0) || (p.Multiplier != 0 && p.Multiplier < 1):
		return fieldError("Multiplier", "must be finite and at least 1, got %v", p.Multiplier)
	case p.Jitter > NoJitter:
		return fieldError("Jitter", "unknown mode %d", uint8(p.Jitter))
	case math.IsNaN(p.JitterFactor) || p.JitterFactor < 0 || p.JitterFactor > 1:
		return fieldError("JitterFactor", "must be in [0, 1], got %v", p.JitterFactor)
	case p.AttemptTimeout < 0:
		return fieldError("AttemptTimeout", "must not be negative, got %v", p.AttemptTimeout)
	case p.MinAttemptTime < 0:
		return fieldError("MinAttemptTime", "must not be negative, got %v", p.MinAttemptTime)
	case p.MaxPushback < 0:
		return fieldError("MaxPushback", "must not be negative, got %v", p.MaxPushback)
	}
	d := *p
	d.applyDefaults()
	if d.MaxBackoff < d.InitialBackoff {
		return fieldError("MaxBackoff", "must be >= InitialBackoff (%v), got %v", d.InitialBackoff, d.MaxBackoff)
	}
	return nil
}

func fieldError(field, format string, args ...any) error {
	return fmt.Errorf("retry: Policy."+field+": "+format, args...)
}

// Delay is the pure delay before retry n (n = 0 for the first retry), given a uniform
// sample u in [0, 1). Zero fields take their defaults (Normalize):
//
//	d = min(MaxBackoff, InitialBackoff × Multiplier^n)
//	FullJitter:         d × u
//	ProportionalJitter: min(MaxBackoff, d × (1 - JitterFactor + 2 × JitterFactor × u))
//	NoJitter:           d
//
// The result is never negative and never above MaxBackoff, for any n; a negative n counts as
// 0, and u outside [0, 1) (or NaN) is clamped into it. An invalid p gives 0.
func (p Policy) Delay(n int, u float64) time.Duration {
	if !p.validAsGiven() {
		return 0
	}
	p.applyDelayDefaults() // inlined, with the order check after it: valid is not
	if p.MaxBackoff < p.InitialBackoff {
		return 0
	}
	fmax := float64(p.MaxBackoff)
	// Multiplier^n may be +Inf: the min clamps it.
	d := min(float64(p.InitialBackoff)*pow(p.Multiplier, n), fmax)
	if !(u >= 0) { // NaN or negative
		u = 0
	} else if u >= 1 {
		u = math.Nextafter(1, 0)
	}
	switch p.Jitter {
	case NoJitter:
	case ProportionalJitter:
		d *= 1 - p.JitterFactor + 2*p.JitterFactor*u
	default:
		d *= u
	}
	if d >= fmax { // float64(MaxBackoff) may round up past math.MaxInt64: return the exact cap
		return p.MaxBackoff
	}
	return time.Duration(d) // d >= 0: each factor is
}

// pow is math.Pow(x, n) for x >= 1, n counted as 0 when negative: the same value (math.Pow
// squares the mantissa the same way; x >= 1 never underflows) in a fraction of its time.
func pow(x float64, n int) float64 {
	r := 1.0
	for ; n > 0; n >>= 1 {
		if n&1 == 1 {
			r *= x
		}
		x *= x
	}
	return r
}

// noCancel is the CancelFunc returned when there is nothing to cancel.
func noCancel() {}

// AttemptContext derives the context for one attempt: ctx bounded by AttemptTimeout, never
// beyond the caller's deadline (context.WithTimeout keeps the earlier of the two). When
// AttemptTimeout is 0 it returns ctx itself and a no-op cancel, without allocating.
func (p *Policy) AttemptContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if p.AttemptTimeout <= 0 {
		return ctx, noCancel
	}
	return context.WithTimeout(ctx, p.AttemptTimeout)
}
