// Package retry retries a failed operation with capped exponential backoff and jitter, within
// the caller's deadline and a retry budget. It imports nothing from gRPC: the interceptors
// package adapts it to gRPC status codes, pushback trailers and the circuit breaker, using the
// same state machine ([Call]) as [Do].
//
//	err := retry.Do(ctx, retry.Policy{}, func(ctx context.Context) error {
//		return client.Ping(ctx)
//	}, classify, retry.WithBudget(budget))
//
// # Policy and backoff
//
// A [Policy]'s zero value is usable; [Policy.Normalize] applies the defaults and names an
// invalid field. The delay before retry n (n = 0 for the first retry) is
//
//	d = min(MaxBackoff, InitialBackoff × Multiplier^n)      the cap comes first, then jitter:
//	FullJitter (default)  U(0, d)
//	ProportionalJitter    min(MaxBackoff, d × U(1-JitterFactor, 1+JitterFactor))   (gRFC A6, Khive)
//	NoJitter              d
//
// # Decisions and stop reasons
//
// A classifier turns an attempt's error into a [Decision]: [Stop], [Backoff] or [After](d) (a
// server's delay: capped at MaxPushback, no jitter, and the exponent starts again from n = 0).
// When retrying stops, the caller gets an *[Error] that wraps the last attempt's error with the
// attempt count and a [Reason].
//
// # Deadline discipline
//
// Retrying never extends the caller's deadline. [Policy.AttemptContext] bounds each attempt by
// AttemptTimeout within it. A retry is not started unless the remaining deadline is at least
// delay + MinAttemptTime; a server delay that does not fit ends the loop the same way. [Wait] is
// a time.NewTimer and a select on ctx.Done(), stopped on every path. Nothing is retried once ctx
// is done.
//
// # Retry budget
//
// A [Budget] limits retries per target, so that retries cannot multiply the load on a
// dependency that is down. [RatioBudget] (NewBudget) follows Finagle's RetryBudget and tower's
// TpsBudget, with Linkerd's deposit rule and a refund:
//
//   - a call whose final outcome is not retryable (a success or a non-retryable failure)
//     deposits 1; a call that ends retryable deposits nothing;
//   - each retry withdraws 1/Ratio;
//   - a retry that succeeds refunds its withdrawal, so only failed retries cost;
//   - deposits and withdrawals expire after Window (10 slots);
//   - a standing reserve allows MinRetriesPerSecond × Window seconds retries per Window;
//   - [Call.Next] counts the other retries in flight at their expected refund (at most the
//     reserve in all).
//
// [TokenBucket] (NewTokenBucket) is gRFC A6 retryThrottling, as in grpc-go. docs/retry.md
// derives the defaults and the bounds, and gives the figures.
//
// # Khive names
//
//	RetryConfig                              Policy
//	max_retries                              MaxAttempts - 1 (MaxAttempts counts the first call)
//	base_delay, max_delay, backoff_factor    InitialBackoff, MaxBackoff, Multiplier
//	jitter, jitter_factor                    Jitter (ProportionalJitter for Khive's ±factor), JitterFactor
//	retry_exceptions, exclude_exceptions     the classify function (Stop for excluded errors)
//	@with_retry, retry_with_backoff          Do, DoValue
package retry
