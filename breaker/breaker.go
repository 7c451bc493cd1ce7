package breaker

import (
	"context"
	"sync"
	"time"
)

// Breaker is a circuit breaker. It is safe for concurrent use. Create one
// with New; the zero value is not usable.
type Breaker struct {
	mu  sync.Mutex
	cfg Config
}

// Permit is the right to make one attempt, returned by Allow. It is a small
// value (a *Breaker plus a state/generation word); report the attempt's
// outcome with Done exactly once. The zero Permit's Done is a no-op.
type Permit struct {
	b     *Breaker
	w     uint64 // generation<<8 | state at admission
	probe uint32 // half-open probe number, 0 otherwise
}

// Counts is a snapshot of a Breaker's counters, for monitoring.
type Counts struct {
	State State
	// Lifetime, monotonic counters.
	Successes, Failures, Ignored, Rejections, Transitions uint64
	// ConsecutiveFailures is the current streak of failed attempts.
	ConsecutiveFailures uint64
	// WindowCalls and WindowFailures are the successes+failures and the
	// failures in the current rolling window (approximate, see the package
	// documentation on lazy success stamping).
	WindowCalls, WindowFailures uint64
	// ShadowTrips counts the times a trip rule fired in MetricsOnly mode.
	ShadowTrips uint64
	// Generation is incremented on every transition (and Reset).
	Generation uint64
}

// New returns a Breaker configured by cfg, or the validation error of cfg.
func New(cfg Config) (*Breaker, error) {
	c, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	return &Breaker{cfg: c}, nil
}

// Allow asks for a permit to make one attempt. When the breaker rejects, the
// error is an *OpenError (matching ErrOpen) and the Permit is the zero value.
func (b *Breaker) Allow() (Permit, error) { return Permit{b: b}, nil }

// Done records the outcome of the permit's attempt.
func (p Permit) Done(o Outcome) {}

// Do runs fn under the breaker (the Khive @circuit_breaker decorator): it
// asks for a permit, runs fn, and records classify(err). A nil classify
// treats a nil error as Success, any error once ctx is done as Ignored, and
// every other error as Failure. A rejection returns the *OpenError without
// calling fn; otherwise Do returns fn's error unchanged.
func (b *Breaker) Do(ctx context.Context, fn func(context.Context) error, classify func(error) Outcome) error {
	return fn(ctx)
}

// State returns the current state.
func (b *Breaker) State() State { return Closed }

// Counts returns a snapshot of the counters.
func (b *Breaker) Counts() Counts { return Counts{} }

// Name returns Config.Name.
func (b *Breaker) Name() string { return b.cfg.Name }

// Isolate forces the breaker open (ForcedOpen) until Reset.
func (b *Breaker) Isolate() {}

// Reset closes the breaker: it clears the window and the streak, resets the
// re-open exponent and starts a new generation.
func (b *Breaker) Reset() {}

// Disable switches the breaker to Disabled.
func (b *Breaker) Disable() {}

// MetricsOnly switches the breaker to MetricsOnly.
func (b *Breaker) MetricsOnly() {}

var _ = time.Second
