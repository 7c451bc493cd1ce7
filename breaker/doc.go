// Package breaker is a circuit breaker: a state machine that stops calling
// a failing dependency, lets a few probes through after a recovery time, and
// closes again when they succeed. It imports nothing from gRPC; the
// interceptors package keeps one Breaker per method in a Group.
//
// It is the Go form of the Khive @circuit_breaker: a Config whose zero value
// means the documented defaults, a concrete *Breaker, a two-step API for
// interceptors (Allow, then Permit.Done) and Do for plain functions.
//
//	b, err := breaker.New(breaker.Config{Name: "payments"})
//	...
//	p, err := b.Allow()
//	if err != nil {
//		return err // *OpenError; errors.Is(err, breaker.ErrOpen)
//	}
//	err = call()
//	p.Done(classify(err)) // Success, Failure or Ignored
//
// # States
//
// Closed admits every call and evaluates the trip rules after each failure.
// When a rule fires the breaker opens.
//
// Open rejects every call with the period's *OpenError. A timer armed at the
// transition (time.AfterFunc) moves it to HalfOpen when the open period ends;
// a rejection therefore reads no clock.
//
// HalfOpen admits up to HalfOpenMaxCalls probes at once and rejects the
// other callers (OpenError.State() == HalfOpen). It closes after
// HalfOpenMaxCalls successes; the first failure re-opens it. A probe that
// has not reported within the open period frees its permit, so a lost probe
// cannot wedge the breaker (its late outcome then decides nothing). An
// Ignored probe frees its permit too and decides nothing.
//
// Manual control: Isolate moves to ForcedOpen, which rejects everything until
// Reset; Disable moves to Disabled, which admits everything and records
// nothing (not even Counts); MetricsOnly admits everything, records and
// evaluates the trip rules, and counts Counts.ShadowTrips where it would have
// opened (the evaluation then starts afresh), for tuning thresholds on live
// traffic. Reset returns to Closed from any state. Config.Mode starts a
// breaker in Disabled or MetricsOnly.
//
// Every transition (and every Reset) starts a new generation. A Permit
// remembers its generation; an outcome reported for an older generation is
// counted in Counts but never changes the window, the streak or the state.
//
// # Trip rules
//
// Either rule opens the breaker:
//
//   - streak: ConsecutiveFailures failed attempts in a row (default 12). A
//     Success resets the streak; Ignored does not.
//   - rate: failures/(successes+failures) >= FailureRate (default 0.5) over
//     the rolling Window (default 10 s, 10 buckets), once the window holds
//     MinimumCalls (default 20) successes and failures.
//
// Both rules count attempts: every recorded outcome, retries included (an
// interceptor reports each attempt). The default streak of 12 is chosen with
// that in view. With 30% independent attempt failures (one bad replica of
// three) a given attempt completes a run of 12 failures with probability
// 0.3^12 ≈ 5.3e-7, and a new run of 12 starts (0.7 × 0.3^12) about once per
// 2.7 million attempts, while a run of 5 starts about once per 590. In a
// full outage every attempt fails and the 12th failed attempt opens the
// breaker. With 4 attempts per call, at 200 calls/s that is after 17 ms with
// small backoffs (2, 4, 8 ms), and with the retry package's default
// full-jitter backoff from 25 ms after 30 ms on average (36 ms at the 99th
// percentile, simulated); at 5 calls/s, after 0.41 s with small backoffs
// and 0.49 s on average (0.56 s at the 99th percentile) with the default
// backoff. The tests pin the default backoff's mean delays: 32.5 ms and
// 487.5 ms. The rate rule catches partial outages at
// higher volume, where the window holds MinimumCalls within Window.
//
// Rare trips remain rare, not impossible: at 30% attempt failures and 200
// calls/s (about 284 attempts/s) the streak rule fires about every 2.6
// hours, and more often at higher volume. At low volume the rate rule can
// fire too, because the window only reaches MinimumCalls when many retries
// failed: with 4 attempts per call and 30% attempt failures, measured in
// MetricsOnly mode, about 13 times per hour at 1 call/s, 5 at 2 calls/s,
// 0.3 at 5 calls/s and never at 10 calls/s or more. At 3% failures neither
// rule fires at any volume.
//
// # Open time
//
// The first open period is RecoveryTime (default 5 s). It doubles on each
// re-open from HalfOpen, up to MaxRecoveryTime (default 60 s): 5, 10, 20,
// 40, 60, 60, ... seconds. The exponent resets when the breaker closes (and
// on Reset). The cap applies before the jitter: each period is multiplied by
// U(1-RecoveryJitter, 1+RecoveryJitter) (default ±20%) so that a fleet of
// clients does not probe in step. OpenError.RetryAfter reports the time left.
//
// # Cost
//
// The closed state's hot path takes no mutex, reads no clock and allocates
// nothing. Allow is one atomic load of the current generation's record.
// Done(Success) compares the permit's generation/state word with it, adds one
// to a monotonic success counter and resets the streak only if it is not
// already zero (a load before the store, so that concurrent successes do not
// bounce the cache line). Done(Ignored) is one atomic add. A failure takes
// the mutex and reads the clock (Permit.DoneAt takes a reading the caller
// already has). An Open or ForcedOpen rejection is one
// atomic load plus one atomic add (the rejection counter) and returns the
// prebuilt *OpenError. HalfOpen is a slow path: mutex and clock.
//
// # Lazy success stamping
//
// The rate window is bucketed by time, but successes are stamped lazily:
// every 64th success (counter&63 == 0), every failure and every Counts call
// take the mutex, read the clock and fold the successes counted since the
// last fold into the current bucket. When the rate rule is evaluated (after
// a failure) every success is therefore counted; only its bucket can be
// late: a success is stamped at the next fold, which comes at most 63
// successes later. At high volume that is a fraction of a bucket; at low
// volume with no failures the next fold can come long after the success,
// which then counts as recent for up to Window after that fold.
// Counts.WindowCalls and Counts.WindowFailures are approximate in the same
// way. A Success racing a transition by nanoseconds may land in the new
// generation's window (and reset its streak); it can never cause a
// transition.
//
// # Callbacks
//
// Config.OnStateChange is queued under the lock and called after it is
// released, in transition order, by one goroutine at a time (a later
// transition's goroutine hands its events to the one already delivering).
// The callback may call the breaker's methods, including manual control.
//
// # Khive names
//
// The Khive circuit breaker's settings map as follows:
//
//   - failure_threshold: Config.ConsecutiveFailures (counting attempts)
//   - recovery_time: Config.RecoveryTime (growing with MaxRecoveryTime)
//   - half_open_max_calls: Config.HalfOpenMaxCalls
//   - excluded_exceptions: the Ignored outcome, returned by the classifier
//     given to Do (or chosen by the interceptor's status-code classification)
//   - CircuitBreakerOpenError: ErrOpen, matched by every *OpenError
//   - metrics: Counts, and OnStateChange for events
package breaker
