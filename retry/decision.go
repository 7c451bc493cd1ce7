package retry

import (
	"math"
	"strconv"
	"time"
)

// Decision is a classifier's answer about a failed attempt: [Stop], [Backoff] or [After](d).
// The zero Decision is Stop.
type Decision int64

const (
	// Stop means the error is not retryable.
	Stop Decision = 0
	// Backoff means retry after the policy's delay ([Policy.Delay]).
	Backoff Decision = 1
)

// After means retry after exactly d (a server pushback or google.rpc.RetryInfo): the delay is
// capped at [Policy.MaxPushback], gets no jitter, and resets the exponent, so the next Backoff
// decision starts from retry n = 0 again. A negative d counts as 0.
func After(d time.Duration) Decision {
	return Decision(min(max(d, 0), math.MaxInt64-2) + 2)
}

// Retryable reports whether d asks for another attempt (Backoff or After).
func (d Decision) Retryable() bool { return d != Stop }

// Pushback returns the delay of an After decision (uncapped) and true, or 0 and false for
// Stop and Backoff.
func (d Decision) Pushback() (time.Duration, bool) {
	if d < 2 {
		return 0, false
	}
	return time.Duration(d - 2), true
}

// String returns "stop", "backoff" or "after(1.5s)".
func (d Decision) String() string {
	switch d {
	case Stop:
		return "stop"
	case Backoff:
		return "backoff"
	}
	after, _ := d.Pushback()
	return "after(" + after.String() + ")"
}

// Reason says why retrying stopped. Its value is its text; callers of [Call] may define
// reasons of their own.
type Reason string

const (
	// Exhausted: MaxAttempts attempts were made.
	Exhausted Reason = "exhausted"
	// NotRetryable: the classifier said Stop.
	NotRetryable Reason = "not retryable"
	// Deadline: the caller's remaining deadline cannot fit the delay plus MinAttemptTime.
	Deadline Reason = "deadline"
	// BudgetExhausted: the retry budget refused the retry.
	BudgetExhausted Reason = "budget"
	// Canceled: the caller's context ended (before or during the wait), whatever its cause.
	Canceled Reason = "canceled"
)

// String returns the reason's text.
func (r Reason) String() string { return string(r) }

// Error annotates the last attempt's error with the number of attempts made and the reason
// retrying stopped. errors.Is and errors.As see through it (Unwrap); gRPC's status.FromError
// also finds a wrapped status, so the code survives.
type Error struct {
	Err      error  // the last attempt's error
	Attempts int    // attempts started, the first included
	Reason   Reason // why retrying stopped
}

// Error returns "retry: gave up after 3 attempts (exhausted): <err>".
func (e *Error) Error() string {
	s := "retry: gave up after " + strconv.Itoa(e.Attempts) + " attempt"
	if e.Attempts != 1 {
		s += "s"
	}
	s += " (" + e.Reason.String() + ")"
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the last attempt's error.
func (e *Error) Unwrap() error { return e.Err }
