package breaker

import (
	"errors"
	"time"
)

// ErrOpen is the sentinel matched (with errors.Is) by every rejection of a
// Breaker: open, half-open with all probe slots taken, or forced open.
var ErrOpen = errors.New("breaker: open")

// ErrThrottled is the sentinel matched (with errors.Is) by a call the
// throttle rejected in the Closed state (see Config.ThrottleK). It is not
// ErrOpen: the breaker is closed and admits most calls.
var ErrThrottled = errors.New("breaker: throttled")

// OpenError is the error Allow returns when it rejects a call. It is built
// once per open period and the same pointer is returned for every rejection
// of that period, so a rejection allocates nothing. In HalfOpen it is reused
// for as long as the earliest probe deadline (see RetryAfter) is unchanged.
type OpenError struct {
	name  string
	state State
	until time.Time // zero for ForcedOpen
}

// Error returns a message such as "breaker: open (payments), retry in 3.2s".
func (e *OpenError) Error() string {
	msg := "breaker: " + e.state.String()
	if e.state == Closed {
		msg = "breaker: throttled"
	}
	if e.name != "" {
		msg += " (" + e.name + ")"
	}
	if e.state == HalfOpen {
		msg += ", probe slots full"
	}
	if !e.until.IsZero() {
		msg += ", retry in " + e.RetryAfter().Round(100*time.Millisecond).String()
	}
	return msg
}

// Is reports whether target is ErrThrottled (a throttled call) or ErrOpen
// (any other rejection).
func (e *OpenError) Is(target error) bool {
	if e.state == Closed {
		return target == ErrThrottled
	}
	return target == ErrOpen
}

// Throttled reports whether the throttle rejected the call (State is
// Closed).
func (e *OpenError) Throttled() bool { return e.state == Closed }

// Name returns the name of the breaker that rejected the call.
func (e *OpenError) Name() string { return e.name }

// State returns the state that caused the rejection: Open, HalfOpen (all
// probe slots taken), ForcedOpen, or Closed for a throttled call.
func (e *OpenError) State() State { return e.state }

// RetryAfter returns the time until the breaker will admit a probe, computed
// when called; it is never negative. For ForcedOpen it returns 0, meaning
// unknown, and so it does for a throttled call. For HalfOpen it is the time
// until the oldest outstanding probe permit is reclaimed (at the latest).
func (e *OpenError) RetryAfter() time.Duration {
	if e.until.IsZero() {
		return 0
	}
	d := time.Until(e.until)
	if d < 0 {
		return 0
	}
	return d
}
