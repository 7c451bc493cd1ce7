package breaker

import (
	"fmt"
	"math"
	"time"
)

// Defaults applied to zero Config fields.
const (
	DefaultConsecutiveFailures = 12
	DefaultMinimumCalls        = 20
	DefaultWindow              = 10 * time.Second
	DefaultRecoveryTime        = time.Second
	DefaultMaxRecoveryTime     = 60 * time.Second
	DefaultRecoveryJitter      = 0.2
	DefaultHalfOpenMaxCalls    = 1
	DefaultThrottleK           = 2.0
	DefaultHalfOpenMaxWait     = time.Second
)

// Constants of the trip and recovery rules (see the package documentation).
const (
	// noiseFailureRate is the attempt failure rate a streak of
	// ConsecutiveFailures is sized for: above it the streak needed to open
	// grows so that a partial failure throttles instead of opening.
	noiseFailureRate = 0.3
	// maxStreakFactor caps the streak needed to open at this multiple of
	// ConsecutiveFailures.
	maxStreakFactor = 4
	// openAgeDivisor: an open period is at most the outage's age so far
	// divided by this (and at least RecoveryTime).
	openAgeDivisor = 3
)

// windowBuckets is the number of buckets of the rolling window.
const windowBuckets = 10

// Config configures a Breaker. The zero value is usable: every zero field
// means the documented default.
type Config struct {
	// Name is reported in errors and callbacks (Group sets it to the key).
	Name string

	// Closed-state rules (see the package documentation for the arithmetic).

	// ConsecutiveFailures is the streak of failed attempts that opens the
	// breaker when the window's earlier attempts failed at most 30% of the
	// time (over at least MinimumCalls attempts); above that the streak
	// needed grows (up to 4 times this), so that
	// a partial failure is left to the throttle. A streak opens only once it
	// holds a failed retry or a failed call, never first attempts alone. 0
	// means the default 12; a negative value turns the rule off.
	ConsecutiveFailures int
	// ThrottleK is the K of adaptive throttling: in the Closed state a call
	// is rejected locally with probability max(0, (calls -
	// K*accepts)/(calls+1)) over Window, calls counting the admitted calls
	// that ended (a call rescued by a retry is one accepted call) and
	// accepts those that succeeded. Nothing is shed while at least 1/K of
	// the calls succeed, and nearly everything once none does. Throttled
	// calls are not counted (unlike the SRE book's formula), so a throttle
	// never sustains itself: when the admitted calls succeed again it stops.
	// 0 means the default 2; a negative value turns throttling off;
	// otherwise it must be at least 1.
	ThrottleK float64
	// FailureRate, if positive, opens the breaker when failed calls/(failed
	// + successful calls) >= FailureRate over Window (at least MinimumCalls
	// calls). 0, the default, turns this rule off; it must be in [0, 1].
	FailureRate float64
	// MinimumCalls is the number of calls the window must hold before the
	// throttle or the FailureRate rule acts. 0 means the default 20; a
	// negative value is an error.
	MinimumCalls int
	// Window is the rolling window of the throttle and the FailureRate
	// rule, in 10 buckets. 0 means the default 10s; a negative value is an
	// error.
	Window time.Duration

	// Open time.

	// RecoveryTime is the first open period (Khive recovery_time). On each
	// re-open the period grows with the outage: it is a third of the time
	// since the breaker opened, and never less than RecoveryTime. 0 means
	// the default 1s.
	RecoveryTime time.Duration
	// MaxRecoveryTime caps the open period. 0 means the default 60s; it
	// must be >= RecoveryTime.
	MaxRecoveryTime time.Duration
	// RecoveryJitter multiplies each open period by U(1-j, 1+j). 0 means the
	// default 0.2; a negative value means no jitter; it must be < 1.
	RecoveryJitter float64

	// HalfOpenMaxCalls is the number of probes admitted at once in the
	// half-open state; the breaker closes after that many successes and the
	// first failure re-opens it. 0 means the default 1 (as Khive).
	HalfOpenMaxCalls int
	// HalfOpenMaxWait bounds how long AllowContext waits for the probes'
	// verdict when every probe slot is taken. 0 means the default 1s; a
	// negative value means never wait.
	HalfOpenMaxWait time.Duration

	// Mode is the starting mode: Closed (the zero value), Disabled or
	// MetricsOnly.
	Mode State

	// OnStateChange, if set, is called on every state change. It runs after
	// the breaker's lock is released, in transition order, and never
	// concurrently for one breaker, so it may call the breaker's methods.
	OnStateChange func(name string, from, to State)
}

// Validate reports the first invalid field, as Normalize does.
func (c Config) Validate() error {
	_, err := c.Normalize()
	return err
}

func fieldError(field, format string, args ...any) error {
	return fmt.Errorf("breaker: Config.%s: "+format, append([]any{field}, args...)...)
}

// Normalize validates c and returns it with each zero field replaced by its
// default and each rule turned off by a negative value set to -1. It reports
// the first invalid field, naming it, such as
// "breaker: Config.FailureRate: must be in [0, 1], got 1.5". A normalized
// Config normalizes to itself. Normalize never panics.
func (c Config) Normalize() (Config, error) {
	switch {
	case c.ConsecutiveFailures == 0:
		c.ConsecutiveFailures = DefaultConsecutiveFailures
	case c.ConsecutiveFailures < 0:
		c.ConsecutiveFailures = -1
	}
	switch {
	case math.IsNaN(c.ThrottleK) || math.IsInf(c.ThrottleK, 1) || (c.ThrottleK > 0 && c.ThrottleK < 1):
		return c, fieldError("ThrottleK", "must be at least 1 (or negative: off), got %v", c.ThrottleK)
	case c.ThrottleK == 0:
		c.ThrottleK = DefaultThrottleK
	case c.ThrottleK < 0:
		c.ThrottleK = -1
	}
	if math.IsNaN(c.FailureRate) || c.FailureRate < 0 || c.FailureRate > 1 {
		return c, fieldError("FailureRate", "must be in [0, 1], got %v", c.FailureRate)
	}
	switch {
	case c.MinimumCalls < 0:
		return c, fieldError("MinimumCalls", "must not be negative, got %d", c.MinimumCalls)
	case c.MinimumCalls == 0:
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
		c.RecoveryJitter = -1
	}
	switch {
	case c.HalfOpenMaxCalls < 0:
		return c, fieldError("HalfOpenMaxCalls", "must not be negative, got %d", c.HalfOpenMaxCalls)
	case c.HalfOpenMaxCalls == 0:
		c.HalfOpenMaxCalls = DefaultHalfOpenMaxCalls
	}
	switch {
	case c.HalfOpenMaxWait == 0:
		c.HalfOpenMaxWait = DefaultHalfOpenMaxWait
	case c.HalfOpenMaxWait < 0:
		c.HalfOpenMaxWait = -1
	}
	switch c.Mode {
	case Closed, Disabled, MetricsOnly:
	default:
		return c, fieldError("Mode", "must be Closed, Disabled or MetricsOnly, got %v", c.Mode)
	}
	return c, nil
}
