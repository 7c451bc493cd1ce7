package retry

import (
	"strconv"
	"time"
)

type decisionKind uint8

const (
	kindStop decisionKind = iota
	kindBackoff
	kindAfter
)

// Decision is a classifier's answer about a failed attempt: Stop, Backoff or After(d).
// The zero Decision is Stop.
type Decision struct {
	kind  decisionKind
	after time.Duration
}

var (
	// Stop means the error is not retryable.
	Stop = Decision{kind: kindStop}
	// Backoff means retry after the policy's backoff delay.
	Backoff = Decision{kind: kindBackoff}
)

// After means retry after exactly d (a server pushback or google.rpc.RetryInfo): the delay is
// capped at Policy.MaxPushback, gets no jitter, and resets the exponent, so the next Backoff
// decision starts from retry n = 0 again. A negative d counts as 0; a caller that follows
// gRFC A6 maps a negative pushback to Stop itself.
func After(d time.Duration) Decision {
	if d < 0 {
		d = 0
	}
	return Decision{kind: kindAfter, after: d}
}

// Retryable reports whether d asks for another attempt (Backoff or After).
func (d Decision) Retryable() bool { return d.kind != kindStop }

// Pushback returns the server-given delay of an After decision (uncapped) and true, or 0 and
// false for Stop and Backoff.
func (d Decision) Pushback() (time.Duration, bool) {
	return d.after, d.kind == kindAfter
}

// String returns "stop", "backoff" or "after(1.5s)".
func (d Decision) String() string {
	switch d.kind {
	case kindStop:
		return "stop"
	case kindBackoff:
		return "backoff"
	}
	return "after(" + d.after.String() + ")"
}

// Reason says why retrying stopped.
type Reason uint8

const (
	// Exhausted: MaxAttempts attempts were made.
	Exhausted Reason = iota + 1
	// NotRetryable: the classifier said Stop.
	NotRetryable
	// Deadline: the caller's remaining deadline cannot fit the delay plus MinAttemptTime.
	Deadline
	// BudgetExhausted: the retry budget refused the retry.
	BudgetExhausted
	// Canceled: the caller's context ended (before or during the wait), whatever its cause.
	Canceled
	// BreakerOpen: set by callers (the interceptors) when a circuit breaker ended the loop.
	BreakerOpen
)

// String returns "exhausted", "not retryable", "deadline", "budget", "canceled" or
// "breaker open".
func (r Reason) String() string {
	switch r {
	case Exhausted:
		return "exhausted"
	case NotRetryable:
		return "not retryable"
	case Deadline:
		return "deadline"
	case BudgetExhausted:
		return "budget"
	case Canceled:
		return "canceled"
	case BreakerOpen:
		return "breaker open"
	}
	return "Reason(" + strconv.Itoa(int(r)) + ")"
}

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
