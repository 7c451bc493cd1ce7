package breaker

import (
	"fmt"
	"math"
	"time"
)

// Defaults applied to zero Config fields.
const (
	DefaultConsecutiveFailures = 12
	DefaultFailureRate         = 0.5
	DefaultMinimumCalls        = 20
	DefaultWindow              = 10 * time.Second
	DefaultRecoveryTime        = 5 * time.Second
	DefaultMaxRecoveryTime     = 60 * time.Second
	DefaultRecoveryJitter      = 0.2
	DefaultHalfOpenMaxCalls    = 1
)

// windowBuckets is the number of buckets of the rolling window.
const windowBuckets = 10

// Config configures a Breaker. The zero value is usable: every zero field
// means the documented default.
type Config struct {
	// Name is reported in errors and callbacks (Group sets it to the key).
	Name string

	// Trip rules: either one opens the breaker.

	// ConsecutiveFailures is the streak of failed attempts (every recorded
	// Failure) that opens the breaker. 0 means the default 12; a negative
	// value turns the rule off.
	ConsecutiveFailures int
	// FailureRate opens the breaker when failures/(successes+failures) >=
	// FailureRate over Window. 0 means the default 0.5; it must be in [0, 1].
	FailureRate float64
	// MinimumCalls is the number of success+failure outcomes the window must
	// hold before the rate rule applies. 0 means the default 20; a negative
	// value turns the rate rule off.
	MinimumCalls int
	// Window is the rolling window of the rate rule, in 10 buckets. 0 means
	// the default 10s; a negative value is an error.
	Window time.Duration

	// Open time.

	// RecoveryTime is the first open period (Khive recovery_time). 0 means
	// the default 5s.
	RecoveryTime time.Duration
	// MaxRecoveryTime caps the open period, which doubles on each re-open and
	// is reset on close. 0 means the default 60s; it must be >= RecoveryTime.
	MaxRecoveryTime time.Duration
	// RecoveryJitter multiplies each open period by U(1-j, 1+j). 0 means the
	// default 0.2; a negative value means no jitter; it must be < 1.
	RecoveryJitter float64

	// HalfOpenMaxCalls is the number of probes admitted at once in the
	// half-open state; the breaker closes after that many successes and the
	// first failure re-opens it. 0 means the default 1 (as Khive).
	HalfOpenMaxCalls int

	// Mode is the starting mode: Closed (the zero value), Disabled or
	// MetricsOnly.
	Mode State

	// OnStateChange, if set, is called on every state change. It runs after
	// the breaker's lock is released, in transition order, and never
	// concurrently for one breaker, so it may call the breaker's methods.
	OnStateChange func(name string, from, to State)
}

// Validate reports the first invalid field, as an error naming it, such as
// "breaker: Config.FailureRate: must be in [0, 1], got 1.5". It never panics.
func (c Config) Validate() error {
	_, err := c.normalize()
	return err
}

func fieldError(field, format string, args ...any) error {
	return fmt.Errorf("breaker: Config.%s: "+format, append([]any{field}, args...)...)
}

// normalize validates c and returns it with the defaults applied.
func (c Config) normalize() (Config, error) {
	if c.ConsecutiveFailures == 0 {
		c.ConsecutiveFailures = DefaultConsecutiveFailures
	}
	switch {
	case math.IsNaN(c.FailureRate) || c.FailureRate < 0 || c.FailureRate > 1:
		return c, fieldError("FailureRate", "must be in [0, 1], got %v", c.FailureRate)
	case c.FailureRate == 0:
		c.FailureRate = DefaultFailureRate
	}
	if c.MinimumCalls == 0 {
		c.MinimumCalls = DefaultMinimumCalls
	}
	switch {
	case c.Window < 0:
		return c, fieldError("Window", "must not be negative, got %v", c.Window)
	case c.Window == 0:
		c.Window = DefaultWindow
	case c.Window < windowBuckets:
		return c, fieldError("Window", "must be at least %v, got %v", time.Duration(windowBuckets), c.Window)
	}
	switch {
	case c.RecoveryTime < 0:
		return c, fieldError("RecoveryTime", "must not be negative, got %v", c.RecoveryTime)
	case c.RecoveryTime == 0:
		c.RecoveryTime = DefaultRecoveryTime
	}
	switch {
	case c.MaxRecoveryTime < 0:
		return c, fieldError("MaxRecoveryTime", "must not be negative, got %v", c.MaxRecoveryTime)
	case c.MaxRecoveryTime == 0:
		c.MaxRecoveryTime = DefaultMaxRecoveryTime
	}
	if c.MaxRecoveryTime < c.RecoveryTime {
		return c, fieldError("MaxRecoveryTime", "must be >= RecoveryTime (%v), got %v", c.RecoveryTime, c.MaxRecoveryTime)
	}
	switch {
	case math.IsNaN(c.RecoveryJitter) || c.RecoveryJitter >= 1:
		return c, fieldError("RecoveryJitter", "must be < 1, got %v", c.RecoveryJitter)
	case c.RecoveryJitter == 0:
		c.RecoveryJitter = DefaultRecoveryJitter
	case c.RecoveryJitter < 0:
		c.RecoveryJitter = 0
	}
	switch {
	case c.HalfOpenMaxCalls < 0:
		return c, fieldError("HalfOpenMaxCalls", "must not be negative, got %d", c.HalfOpenMaxCalls)
	case c.HalfOpenMaxCalls == 0:
		c.HalfOpenMaxCalls = DefaultHalfOpenMaxCalls
	}
	switch c.Mode {
	case Closed, Disabled, MetricsOnly:
	default:
		return c, fieldError("Mode", "must be Closed, Disabled or MetricsOnly, got %v", c.Mode)
	}
	return c, nil
}
