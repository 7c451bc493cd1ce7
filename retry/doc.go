// Package retry retries a failed operation with capped exponential backoff and jitter, within
// the caller's deadline and a retry budget. It imports nothing from gRPC: the interceptors
// package adapts it to gRPC status codes, pushback trailers and the circuit breaker, using the
// same state machine (Call) as Do.
//
//	err := retry.Do(ctx, retry.Policy{}, func(ctx context.Context) error {
//		return client.Ping(ctx)
//	}, classify, retry.WithBudget(budget))
//
// # Policy and backoff
//
// A Policy's zero value is usable: MaxAttempts 4 (the first call included), backoff from 25ms
// doubling up to 5s, full jitter, a 1ms minimum attempt time, server delays capped at 30s.
// Validate names the offending field. The delay before retry n (n = 0 for the first retry) is
//
//	d = min(MaxBackoff, InitialBackoff × Multiplier^n)      the cap comes first, then jitter:
//	FullJitter (default)  U(0, d)
//	ProportionalJitter    min(MaxBackoff, d × U(1-JitterFactor, 1+JitterFactor))   (gRFC A6, Khive; 0.2)
//	NoJitter              d
//
// Policy.Delay computes it in float64 and clamps, so it never overflows, never goes negative
// and never exceeds MaxBackoff, for any n (fuzzed). Capping before jitter keeps full jitter
// spread over [0, MaxBackoff) once the cap is reached instead of collapsing onto it. The final
// clamp of ProportionalJitter does collapse the upper half of its range onto MaxBackoff once the
// cap is reached (gRFC A6 lets such a delay reach 1.2 × maxBackoff instead).
//
// # Decisions and stop reasons
//
// A classifier turns an attempt's error into a Decision: Stop (not retryable), Backoff (retry
// after the policy's delay) or After(d) (retry after exactly d, as told by the server: capped at
// MaxPushback, no jitter, and the exponent starts again from n = 0). When retrying stops, the
// caller gets an *Error that wraps the last attempt's error (errors.Is, errors.As and gRPC's
// status.FromError see through it) with the attempt count and a Reason: Exhausted,
// NotRetryable, Deadline, BudgetExhausted or Canceled (callers may add their own).
//
// # Deadline discipline
//
// Retrying never extends the caller's deadline. AttemptContext bounds each attempt by
// AttemptTimeout and by the caller's deadline, whichever is earlier. A retry is not started
// unless the remaining deadline is at least delay + MinAttemptTime: an attempt that cannot
// finish is not made, and the caller gets the last real error at once rather than after a
// sleep toward its deadline. A server delay that does not fit ends the loop the same way.
// Waits (Wait) are a time.NewTimer and a select on ctx.Done(), stopped on every path, so a
// canceled caller gets control back immediately. Nothing is retried once ctx is done.
//
// # Call, the state machine
//
// Call holds the state of one logical call (attempts, exponent, budget charge) in a value
// without allocation. Do uses it, and so do the gRPC interceptors for unary calls and stream
// retries: Begin before each attempt, Next after each failure (it checks, in order: ctx done,
// Stop, MaxAttempts, the budget, the deadline), Done once at the end (it tells the budget how
// the call ended). See the Call type for the loop.
//
// # Retry budget
//
// A Budget limits retries per target, so that retries cannot multiply the load on a
// dependency that is down. RatioMode (NewBudget) follows Finagle's RetryBudget and tower's
// TpsBudget, with Linkerd's deposit rule and a refund:
//
//   - a call whose final outcome is not retryable (a success or a non-retryable failure)
//     deposits 1; a call that ends retryable (exhausted, out of budget) deposits nothing;
//   - each retry withdraws 1/Ratio (Ratio default 0.2: one retry per 5 deposits);
//   - a retry that succeeds refunds its withdrawal, so only failed retries cost;
//   - deposits and withdrawals expire after Window (default 10s, 10 slots);
//   - a standing reserve allows MinRetriesPerSecond × Window seconds retries per Window
//     (default 1/s, i.e. 10 per 10s window).
//
// Why 0.2 with the refund keeps independent failures covered: let p be the chance that an
// attempt fails, with 4 attempts. Per call, 1 - p^4 calls deposit, p + p^2 + p^3 retries are
// made, and p - p^4 of them succeed and are refunded, so the retries that cost are the failed
// ones, p^2 + p^3 + p^4. The budget holds while p^2 + p^3 + p^4 <= 0.2 × (1 - p^4), that is up
// to p ≈ 36%. At p = 30% the failed retries are 0.125 per call against 0.198 allowed: the
// budget never binds, and the success rate stays at the unlimited 1 - 0.3^4 = 99.19%
// (tested: within 0.5 points, at least 98.8%). Without the refund every retry would cost
// (0.417 per call against 0.198) and the success rate would fall to about 82% (tested).
//
// During a full outage every call ends retryable: no deposits, no refunds. Retries are then
// limited to what the last Window deposited, Ratio × its calls, plus the reserve: at most
// 1.2× the call rate during the first Window (measured: 1.19× at 100 calls/s after a healthy
// Window), then 1.0× plus MinRetriesPerSecond/R (1.01× at 100 calls/s). A fixed 3 retries per
// call would be 4.0×.
//
// Bounds, tested with rapid properties: within any 0.9 Window, retries granted by Allow <=
// Ratio × calls that deposited in the last Window + MinRetriesPerSecond × Window seconds. A
// deposit is counted in the slot the budget last rotated to, never a later one, so it never
// outlives its Window. Succeeded and NotRetryable write only one of several deposit stripes
// and read the clock on every 64th deposit of a stripe.
//
// Under concurrency, retries in flight hold withdrawals that most of them will refund: 16
// callers at 30% failures keep about 16 retries in flight against a fresh budget's reserve of
// 10. Call.Next counts the other retries in flight at their expected refund, (refunds + 4) /
// (settled retries + 8) over the Window, at most the reserve in all. So the retries that fail
// may exceed Ratio × deposits + reserve by at most the reserve, and the credit shrinks as
// retries keep failing (q = 4/(8 + the retries that failed)).
//
// TokenBucketMode (NewTokenBucket) is gRFC A6 retryThrottling, as in grpc-go: tokens start at
// maxTokens, each retryable failed attempt costs 1, each successful call adds tokenRatio, the
// count stays within [0, maxTokens], and retries are allowed while tokens > maxTokens/2.
// Tokens are kept in thousandths, so the arithmetic is exact: with maxTokens 10 and tokenRatio
// 0.1, retries stop after 5 retryable failures from full and resume after 51 successes from 0.
//
// A nil *Budget allows everything. Budget methods are safe for concurrent use.
//
// # Cost
//
// Do allocates nothing and reads no clock when the operation succeeds at once and
// AttemptTimeout is 0 (with a budget: one atomic add on a striped counter, and a clock read on
// one call in 64).
// Budget.Allow takes the time as an argument and is lock-free except when a Window slot
// rotates. The failure path may read the clock and allocates the final *Error. The package's
// benchmarks measure each.
//
// # Khive names
//
// The Khive retry settings map as follows:
//
//	RetryConfig                              Policy
//	max_retries                              MaxAttempts - 1 (MaxAttempts counts the first call)
//	base_delay                               InitialBackoff
//	max_delay                                MaxBackoff
//	backoff_factor                           Multiplier
//	jitter, jitter_factor                    Jitter (ProportionalJitter for Khive's ±factor), JitterFactor
//	retry_exceptions, exclude_exceptions     the classify function (Stop for excluded errors)
//	@with_retry, retry_with_backoff          Do, DoValue
package retry
