// Package interceptors adapts the breaker and retry state machines to gRPC:
// client interceptors that give every method its own circuit breaker and
// retries with backoff, decided on gRPC status codes and configured by a
// per-method policy map. It is the only package of the module that imports
// grpc; the backoff, budget and breaker logic live in the retry and breaker
// packages, and the unary and stream interceptors run every attempt through
// the same step: admit (breaker) → invoke → classify → record → decide.
//
// # Quick start
//
//	suite, err := interceptors.New(map[string]interceptors.Policy{
//		"/pkg.Payments/*": {Retry: retry.Policy{MaxAttempts: 3}},
//		"*":               {}, // defaults: 4 attempts, 25ms full-jitter backoff, a breaker per method and target
//	})
//	if err != nil { ... }
//	cc, err := grpc.NewClient(target, append(suite.DialOptions(), creds)...)
//
// DialOptions chains the unary and stream interceptors and adds
// grpc.WithDisableRetry(): the suite owns retries, and grpc-go's own retries
// would multiply the attempts (its transparent retries, of requests that
// never left the client, stay on and are not counted as attempts).
//
// # Policies
//
// Keys are "/pkg.Svc/Method", "/pkg.Svc/*" or "*"; a call uses the most
// specific one, and a method without a policy passes through untouched
// (the next interceptor gets the caller's context and options). The "*"
// policy never covers the health check service (/grpc.health.v1.Health):
// a key naming that service or one of its methods does. New validates
// every policy and names the key and the field of the first error.
//
// # Classification
//
// One function decides what an attempt's status means, for the breaker and
// the budget, with the policy's code lists as overrides:
//
//   - Failure: UNAVAILABLE, INTERNAL, UNKNOWN, DATA_LOSS,
//     RESOURCE_EXHAUSTED, and DEADLINE_EXCEEDED before the caller's
//     deadline (an attempt timeout or the server's deadline);
//   - Ignored: CANCELED, DEADLINE_EXCEEDED once the caller's context is
//     done or its deadline has passed (even before the context's timer
//     fired), local rejections, a stream the caller abandoned;
//   - Success: every other code (NOT_FOUND, INVALID_ARGUMENT, ...): the
//     server answered.
//
// # Retries
//
// Only RetryableCodes are retried (UNAVAILABLE by default).
// RESOURCE_EXHAUSTED is retried only when the server gave a delay hint,
// listed or not; DEADLINE_EXCEEDED only if listed and before the caller's
// deadline. Nothing is retried after the caller's context is done.
//
// Server hints: the grpc-retry-pushback-ms trailer, exactly as gRFC A6
// (one value >= 0: retry after exactly that delay, and the exponential
// backoff starts over; a negative or unparsable value, or several values:
// do not retry, which the A6 token bucket counts as a failed attempt, as
// grpc-go does), else a google.rpc.RetryInfo detail. Both are capped by
// Retry.MaxPushback.
//
// Deadlines: the caller's deadline covers all attempts and is never
// extended; Retry.AttemptTimeout bounds each attempt within it; a retry
// that could not start before the deadline (delay + Retry.MinAttemptTime)
// is not made, and the call returns the last attempt's status at once.
//
// Budget: each target (cc.Target()) has one retry budget, shared by every
// method, unary calls and streams: by default retries stay within 20% of
// calls plus one per second over 10s, and a retry that succeeds refunds its
// cost (WithBudget, WithTokenBucket for gRFC A6 throttling, WithoutBudget).
//
// Retries carry grpc-previous-rpc-attempts (the number of earlier attempts,
// one value set over any the caller set; WithAttemptHeader renames or turns
// it off), and interceptors chained after the suite, which run once per
// attempt, can read Attempt(ctx).
//
// # Commit
//
// A unary call is not retried once response headers arrived (gRFC A6: the
// server may have acted on it). The suite sees this through grpc.Header and
// grpc.Trailer options it adds to each attempt (a Trailers-Only failure
// leaves the header nil); the caller's own Header and Trailer options keep
// working. Streams follow the rules documented on Suite.Stream.
//
// # Circuit breaker
//
// Every attempt, first or retry, passes the method's breaker (one per target
// and method by default, WithBreakerKey to change that), and every outcome
// is recorded.
// A call's first attempt is admitted with Breaker.AllowContext: while the
// breaker is half-open with its probes in flight, the caller waits for
// their verdict (at most the breaker's HalfOpenMaxWait, never past its
// deadline less Retry.MinAttemptTime), then proceeds or is rejected; in the
// closed state the adaptive throttle may shed it. Retries are admitted with
// Breaker.AllowRetry (never throttled, never waiting). After a failed
// attempt the retry decision comes first, then the record: the attempt is
// the call's final outcome (Permit.DoneAt) when the call stops, and counts
// only as an attempt (Permit.RetryAt) when it retries, so a call rescued by
// a retry is a success; a call then ended by the breaker or by the caller
// during the backoff records nothing more. An open breaker ends the retries
// at once.
//
// A call rejected before any attempt fails with codes.Unavailable, an
// errdetails.ErrorInfo (reason CIRCUIT_OPEN, domain "khive.grpc-resilience",
// metadata {"method": m}, plus "breaker": its key when WithBreakerKey names
// it otherwise) and an errdetails.RetryInfo (the time until the breaker
// admits a probe, as of the period's first rejection), and errors.Is(err,
// breaker.ErrOpen) holds. A call the throttle shed fails the same way with
// reason THROTTLED and no RetryInfo, and errors.Is(err,
// breaker.ErrThrottled) holds (not ErrOpen). Both are local rejections:
// never a breaker failure, never retried, and a unary call's Fallback gets
// them. The error is built once per open period (and once for the
// throttle): a rejection allocates nothing.
//
// # Errors
//
// A call that failed once with a non-retryable error (or with retries off)
// returns the invoker's error unchanged. When retrying stops for another
// reason, the call returns the last attempt's status with its code and
// details, the message annotated ("gave up after 3 attempts (exhausted):
// ...") and an ErrorInfo detail whose reason is RETRIES_EXHAUSTED,
// RETRY_BUDGET_EXHAUSTED, DEADLINE_TOO_SHORT, CIRCUIT_OPEN, NOT_RETRYABLE
// or CANCELED_WHILE_RETRYING (then with the caller's context's code).
// errors.As finds the *retry.Error (attempts, reason), and through it the
// last attempt's error.
//
// # Per call
//
// DisableRetry and MaxAttempts override a call's attempts; the suite removes
// them before the next interceptor.
//
// grpc's call options that act after a call (grpc.Header, grpc.Trailer,
// grpc.Peer, grpc.OnFinish) act once per call, as with grpc-go's own retry:
// a call (or stream) that may retry keeps them from its attempts and
// applies them once when it ends, with the final attempt's header, trailer
// and peer, and calls OnFinish once with the call's error (nil on success;
// the error the call returns, before any Fallback). A call the breaker
// rejects calls OnFinish once with the rejection and leaves Header, Trailer
// and Peer alone. A stream ends for them when its end is read (RecvMsg), or
// when the caller's context ends. A policy's Fallback can answer a unary
// call the breaker rejected or whose last attempt failed (a cached reply,
// for instance).
//
// # Hooks
//
// WithOnRetry, WithOnGiveUp, WithOnReject and WithOnStateChange (or
// WithOnStateChangeEvent) observe retries, give-ups, attempts the suite
// refused (an open, half-open or throttling breaker, the retry budget) and
// breaker transitions; WithLogger logs them to a go-grpc-middleware v2
// logging.Logger with that module's field conventions. The events of a
// call carry its context (trace ids, exemplars) and target. Unset hooks
// cost nothing.
//
// Hooks run synchronously, on the goroutine of the event, and should return
// quickly: the time a hook takes is not bounded by any context.
//
//   - OnRetry, OnGiveUp and OnReject run on the call's goroutine: the caller's for a
//     unary call (OnRetry before the backoff), and for a stream the
//     goroutine whose RecvMsg, SendMsg or Header found the failed attempt;
//     the stream's other callers wait for it, until their context ends.
//   - OnStateChange runs on the goroutine that caused the transition: the
//     caller whose attempt's outcome opened, closed or re-opened the
//     breaker (so a blocking hook stalls that caller, past its deadline if
//     need be), the breaker's timer goroutine for open → half-open, or the
//     goroutine of Suite.Update or of a manual transition. The breaker
//     delivers transitions in order, never concurrently for one breaker.
//   - A policy's Fallback runs on the caller's goroutine.
//
// A hook that panics: the panic goes on, on that goroutine, and the suite
// stays usable (a stream ends with its last attempt's error; a breaker
// delivers the remaining transitions later).
//
// # Metrics
//
// The suite records OpenTelemetry metrics through the OTel API (the
// application picks the SDK and exporter): gRFC A96's per-call retry
// metrics, grpc.client.call.retries and grpc.client.call.retry_delay, for
// the calls that retried, and breaker and budget instruments under
// MetricPrefix ("khive.resilience."). See WithMeterProvider for the list.
// The breaker and budget gauges are read when the reader collects; a call
// that succeeds at its first attempt records nothing, and a rejection adds
// to an atomic counter.
//
// # Chain order
//
// Interceptors chained before the suite (outer) see one call; interceptors
// chained after it (inner) run once per attempt: put call-level logging and
// metrics first, per-attempt ones after. grpc's OpenTelemetry plugin
// (stats/opentelemetry.DialOption) belongs before the suite's DialOptions:
// after them, its grpc.client.call.* metrics count every attempt as a call.
//
// # Cost
//
// The first-attempt success path allocates nothing in the suite: a cached
// policy lookup, one breaker admit and record, one budget deposit, and a
// pooled per-call state for the Header and Trailer options. grpc itself
// then copies the response's header and trailer metadata into them, a few
// allocations per call (four over bufconn) that calls of a single attempt
// (DisableRetry, MaxAttempts(1)) do not pay. The path reads no clock and
// takes no lock, except that the breaker and the budget fold their counts
// into their time windows on every 64th count of one of their stripes. A
// rejection by an
// open breaker is an atomic load and a prebuilt error. A failed attempt
// reads the clock once, for both the breaker (which stamps every failure,
// through Permit.DoneAt) and the retry decision.
package interceptors
