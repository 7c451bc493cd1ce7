package breaker

import "strconv"

// State is the state of a Breaker.
type State int32

// The states of a Breaker. Closed, Open and HalfOpen are driven by outcomes and
// time; ForcedOpen, Disabled and MetricsOnly are entered only by manual control
// (or, for Disabled and MetricsOnly, by Config.Mode).
const (
	// Closed admits every call and evaluates the trip rules on each failure.
	Closed State = iota
	// Open rejects every call until the open period ends.
	Open
	// HalfOpen admits up to Config.HalfOpenMaxCalls probes at once.
	HalfOpen
	// ForcedOpen rejects everything until Reset (manual isolate).
	ForcedOpen
	// Disabled admits everything, records nothing and never transitions.
	Disabled
	// MetricsOnly admits everything, records and evaluates the trip rules,
	// and never rejects: a rule that fires counts a shadow trip instead.
	MetricsOnly
)

// String returns the lower-case name of s: "closed", "open", "half-open",
// "forced-open", "disabled" or "metrics-only".
func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	case ForcedOpen:
		return "forced-open"
	case Disabled:
		return "disabled"
	case MetricsOnly:
		return "metrics-only"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// Outcome is the result of one attempt, as recorded by Permit.Done.
type Outcome uint8

// The outcomes of an attempt.
const (
	// Success means the downstream worked (this includes application errors
	// such as "not found").
	Success Outcome = iota
	// Failure means the downstream failed; failures trip the breaker.
	Failure
	// Ignored changes no state: it never decides a verdict and releases a
	// half-open probe permit (cancellations, local rejections).
	Ignored
)

// String returns "success", "failure" or "ignored".
func (o Outcome) String() string {
	switch o {
	case Success:
		return "success"
	case Failure:
		return "failure"
	case Ignored:
		return "ignored"
	}
	return "Outcome(" + strconv.Itoa(int(o)) + ")"
}
