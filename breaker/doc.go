// Package breaker is a circuit breaker with adaptive throttling: a state
// machine that sheds calls to a dependency that fails, stops calling one
// that is down, lets a probe through after a recovery time, and closes again
// when it succeeds. It imports nothing from gRPC; the interceptors package
// keeps one Breaker per method and target.
//
// It is the Go form of the Khive @circuit_breaker: a Config whose zero value
// means the documented defaults, a concrete *Breaker, a two-step API for
// retry loops (Allow, then Permit.Done) and Do for plain functions.
//
//	p, err := b.Allow() // a new call
//	if err != nil {
//		return err // *OpenError: errors.Is(err, breaker.ErrOpen) or breaker.ErrThrottled
//	}
//	err = call()
//	p.Done(classify(err)) // Success, Failure or Ignored
//
// A retry loop asks AllowRetry for each later attempt of the call, reports
// each failed attempt that it retries with RetryAt and the last attempt with
// Done (or DoneAt), so that the breaker knows attempts and calls apart.
//
// # Principle
//
// A breaker must never cost availability that a plain client would have
// had. It acts on two signals of two granularities:
//
//   - attempts, for fast outage detection: a streak of failed attempts opens
//     the breaker;
//   - calls, for overload and partial failure: the throttle sheds a share of
//     the calls, in proportion to how many fail. A call rescued by a retry
//     is a success; a call the breaker or the throttle rejected, or that its
//     caller canceled, is no outcome.
//
// # States
//
// Closed admits calls, minus those the throttle sheds. Open rejects every
// call with the period's *OpenError until a timer moves it to HalfOpen.
// HalfOpen admits HalfOpenMaxCalls probes at once; it closes after that many
// successes, and the first failure re-opens it. AllowContext makes the
// callers that find every probe slot taken wait for the verdict instead of
// failing (no goroutine per waiter; bounded by HalfOpenMaxWait and the
// caller's deadline). A probe that does not report within the open period,
// or reports Ignored, frees its slot for a waiter. Closing empties the
// window: the throttle and the streak start afresh.
//
// Manual control: ForceOpen (ForcedOpen, rejects until Reset), Disable (admits
// everything, records nothing), MetricsOnly (records and evaluates, never
// rejects: it counts Counts.ShadowTrips and reports the throttle's
// probability), Reset (Closed from any state). Reconfigure applies new
// settings and keeps the state. Every transition starts a new generation; an
// outcome of an older generation is counted and decides nothing.
//
// # Trip rules
//
// Streak: ConsecutiveFailures failed attempts in a row open the breaker,
// provided the streak holds a failed retry or a failed call (first attempts
// alone never open it). A success resets the streak; Ignored does not. The
// streak needed grows with the failure rate f of the window's earlier
// attempts: ConsecutiveFailures while f <= 0.3 (or the window holds fewer
// than MinimumCalls of them), else ConsecutiveFailures × ln 0.3 / ln f,
// rounded up, at most 4 × ConsecutiveFailures.
//
// Throttle: in Closed, Allow rejects a new call with probability
//
//	max(0, (calls - K*accepts) / (calls + 1))
//
// over Window, once it holds MinimumCalls calls: calls are the admitted
// calls that ended with an outcome, accepts those that succeeded, K is
// ThrottleK. Throttled calls are not counted. A run of ceil(ln 1e5 / ln K)
// successes in a row empties the window. Retries (AllowRetry) are never
// throttled.
//
// FailureRate, off by default, opens the breaker when failed calls / calls
// over Window reach it.
//
// # Open time
//
// The first open period is RecoveryTime; a re-open from HalfOpen lasts a
// third of the time since the breaker opened if that is longer, at most
// MaxRecoveryTime. Each period is multiplied by U(1-RecoveryJitter,
// 1+RecoveryJitter) when RecoveryJitter is positive.
//
// # Cost
//
// In Closed, Allow and Done(Success) take no lock, read no clock and
// allocate nothing; an open or throttled rejection returns a prebuilt
// *OpenError. A failure takes the mutex and reads the clock (DoneAt and
// RetryAt take a reading the caller has). docs/breaker.md derives the
// defaults and gives the figures.
//
// # Callbacks
//
// Config.OnStateChange is queued under the lock and called after it is
// released, in transition order, by one goroutine at a time: the goroutine
// whose call caused the transition (the timer's goroutine for Open to
// HalfOpen). A slow callback delays that caller. The callback may call the
// breaker's methods. After Retire it is never called again.
//
// # Khive names
//
// failure_threshold: Config.ConsecutiveFailures (attempts, not calls; see
// docs/breaker.md); recovery_time: Config.RecoveryTime; half_open_max_calls:
// Config.HalfOpenMaxCalls; excluded_exceptions: the Ignored outcome;
// CircuitBreakerOpenError: ErrOpen (ErrThrottled for the throttle);
// metrics: Counts and OnStateChange.
package breaker
