// Package interceptors adapts the [breaker] and [retry] state machines to gRPC:
// client interceptors that give every method its own circuit breaker and
// retries with backoff, decided on gRPC status codes and configured by a
// per-method policy map. The state machines themselves never import grpc.
//
//	suite, err := interceptors.New(map[string]interceptors.Policy{
//		"/pkg.Payments/*": {Retry: retry.Policy{MaxAttempts: 3}},
//		"*":               {}, // the defaults
//	})
//	if err != nil { ... }
//	cc, err := grpc.NewClient(target, append(suite.DialOptions(), creds)...)
//
// A call uses the most specific policy ([New]); a method without one passes
// through untouched. Every attempt, first or retry, runs the same step:
// admit (the method's breaker) → invoke → classify → record → decide. The
// policy's codes classify each attempt for the breaker and the budget
// ([Policy.FailureCodes]; local rejections and abandoned streams are
// ignored) and choose what is retried ([Policy.RetryableCodes]): never
// after response headers (gRFC A6 commit; streams: see [Suite.Stream]),
// never after the caller's context is done, never past its deadline. Each
// target has one retry budget ([WithBudget], [WithTokenBucket],
// [WithoutBudget]). Retries carry grpc-previous-rpc-attempts
// ([WithAttemptHeader]); interceptors chained after the suite run once per
// attempt and read [Attempt].
//
// Errors: a call the breaker rejects fails with UNAVAILABLE, an ErrorInfo
// (reason [ReasonCircuitOpen] or [ReasonThrottled]) and, for an open breaker,
// a RetryInfo; errors.Is(err, breaker.ErrOpen) (or breaker.ErrThrottled)
// holds. A call whose retries stopped returns the last attempt's status,
// annotated ("gave up after 3 attempts (exhausted): ..."), with an ErrorInfo
// whose reason names why, and errors.As finds the *[retry.Error]. A single
// attempt that failed with a non-retryable error returns it unchanged.
//
// Per call: [DisableRetry] and [MaxAttempts]. grpc.Header, grpc.Trailer,
// grpc.Peer and grpc.OnFinish act once per call, with the final attempt's
// values, as with grpc-go's own retry.
//
// Hooks ([WithOnRetry], [WithOnGiveUp], [WithOnReject], [WithOnStateChange],
// [WithLogger]) run synchronously on the goroutine of the event (the
// caller's, the breaker's timer's for open → half-open, or that of
// [Suite.Update] or [Suite.SetMode]) and should return quickly; unset hooks
// cost nothing. A hook that panics panics on that goroutine, and the suite
// stays usable. Metrics: see [WithMeterProvider].
//
// The first-attempt success path allocates nothing in the suite, reads no
// clock and takes no lock; a rejection by an open breaker is an atomic load
// and a prebuilt error. See the README for the chain order and the
// figures.
package interceptors
