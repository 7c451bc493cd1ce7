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
// # Streak
//
// ConsecutiveFailures (default 12) failed attempts in a row open the
// breaker, provided that the streak holds a failed retry or a failed call:
// first attempts whose retries are still to come never open it alone (a
// rolling restart, where every first attempt meets a closing connection and
// every retry works, never opens it). A success resets the streak; Ignored
// does not.
//
// The streak needed grows with the failure rate f of the window's attempts
// before the streak: n = 12 while f <= 0.3 or the window holds fewer than
// MinimumCalls such attempts, else ceil(12 ln 0.3 / ln f), capped at 48. A streak is then as rare under f as 12 under 30% (a new run
// of 12 starts about once per 2.7 million attempts at 30%): 21 at 50%, 41 at
// 70%. So a partial failure is left to the throttle, and a healthy dependency
// that goes down is cut after 12 failed attempts: at 200 calls/s with 4
// attempts and the retry package's default backoff, in about 30 ms; at 5
// calls/s in about 0.5 s.
//
// # Throttle
//
// In Closed, Allow rejects a new call with probability
//
//	max(0, (calls - K*accepts) / (calls + 1))
//
// over the rolling Window (default 10 s), calls being the admitted calls
// that ended with an outcome and accepts those that succeeded, once the
// window holds MinimumCalls (default 20) calls. K is ThrottleK (default 2):
// nothing is shed while at least 1/K of the calls succeed; p = 1 - K*s when
// a share s < 1/K succeeds; nearly everything when none does. Unlike the SRE
// book's client-side throttling, throttled calls are not counted as
// requests: counted, every throttle level sustains itself when exactly 1/K
// of the calls succeed (50% failing calls, measured: 37% success against 50%
// without a breaker), and the throttle reopens only by a factor K per window
// once the dependency is healthy. When the admitted calls succeed
// ceil(ln 1e5 / ln K) times in a row (17 for K = 2; at 1/K success that run
// happens about once in 100,000 calls) the window is emptied and the
// throttle stops at once. Retries (AllowRetry) are never throttled: a retry
// budget bounds them.
//
// The binary FailureRate rule (failed calls / calls over the window) is
// off by default and opt-in.
//
// # Open time
//
// The first open period is RecoveryTime (default 1 s). A re-open from
// HalfOpen opens for a third of the time since the breaker opened, if that
// is longer, up to MaxRecoveryTime (default 60 s): 1, 1, 1, 1, 1.3, 1.8,
// 2.4, ... seconds. A short outage costs about a second after its end (after
// a 3 s outage, at most 1.2 s with the jitter); a long one costs about one
// probe per MaxRecoveryTime once it is 3 minutes old, and its end is noticed
// within a third of its length. Each period is multiplied by
// U(1-RecoveryJitter, 1+RecoveryJitter) (default ±20%).
//
// # Cost
//
// In Closed, Allow is one atomic load of the generation's record and one of
// the throttle word (plus a random draw while it sheds); Done(Success) adds
// one to a counter on one of several cache-line-sized stripes chosen at
// random, so that callers on different cores rarely write the same line,
// and resets the streak only if it is not zero. Neither takes a lock, reads
// the clock or allocates. Every 64th count of a stripe is folded into the
// time-bucketed window under the mutex, which also happens on every failure
// and every Counts call; a success is therefore stamped into a bucket up to
// 63 successes late. An Open rejection and a throttled one are one atomic
// load and one striped add and return a prebuilt *OpenError. A failure takes
// the mutex and reads the clock (DoneAt and RetryAt take a reading the
// caller already has). While the throttle sheds, successes take the mutex
// too.
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
//   - failure_threshold: Config.ConsecutiveFailures. Khive counts failed
//     calls; the streak counts failed attempts, and calls of one attempt are
//     the same. With retries, a threshold of 5 failed calls of 4 attempts is
//     20 failed attempts: ConsecutiveFailures 20 keeps Khive's meaning, and
//     the default 12 (3 failed calls) cuts an outage sooner while never
//     opening on 30% noise.
//   - recovery_time: Config.RecoveryTime (growing with the outage, capped by
//     MaxRecoveryTime)
//   - half_open_max_calls: Config.HalfOpenMaxCalls
//   - excluded_exceptions: the Ignored outcome, returned by the classifier
//     given to Do (or chosen by the interceptor's status-code classification)
//   - CircuitBreakerOpenError: ErrOpen, matched by every open rejection;
//     ErrThrottled for the throttle's
//   - metrics: Counts, and OnStateChange for events
package breaker
