package interceptors

import (
	"context"
	"errors"
	"reflect"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/retry"
)

// pushbackKey is the gRFC A6 trailer with the server's retry delay.
const pushbackKey = "grpc-retry-pushback-ms"

// grpcStatus is implemented by grpc's status errors and by the suite's.
type grpcStatus interface{ GRPCStatus() *status.Status }

// statusOf returns the status of err (non-nil). A status error is read
// without allocating; a wrapped one is found with status.FromError. Any
// other error is UNKNOWN, except a context error (an interceptor chained
// after the suite may return ctx.Err() as it is), which gets the code grpc
// itself would give it: CANCELED or DEADLINE_EXCEEDED. So the caller's
// cancellation is never counted as the server's failure. The code may lie
// outside the 17 codes gRPC defines (a server sending grpc-status: 99);
// codeOf maps it.
func statusOf(err error) *status.Status {
	if gs, ok := err.(grpcStatus); ok {
		if st := gs.GRPCStatus(); st != nil {
			return st
		}
	}
	if st, ok := status.FromError(err); ok {
		return st
	}
	return status.FromContextError(err) // UNKNOWN for other errors
}

// codeOf returns the code of st for classification: a code outside the 17
// codes gRPC defines (0 to 16; a broken server may send grpc-status: 99 or
// -1, which grpc passes on as it is) is UNKNOWN, so it counts as a failure,
// never as a success.
func codeOf(st *status.Status) codes.Code {
	if c := st.Code(); c <= codes.Unauthenticated {
		return c
	}
	return codes.Unknown
}

// isLocalRejection reports whether err is a circuit-breaker rejection or a
// throttled call (ours, or of another suite inside this one).
func isLocalRejection(err error) bool {
	if _, ok := err.(*rejectError); ok {
		return true
	}
	if reflect.TypeOf(err) == statusErrorType {
		return false // grpc's own status error wraps nothing: skip errors.Is
	}
	return errors.Is(err, breaker.ErrOpen) || errors.Is(err, breaker.ErrThrottled)
}

// statusErrorType is the dynamic type of grpc's status errors.
var statusErrorType = reflect.TypeOf(status.Error(codes.Unknown, ""))

// pastDeadline reports whether ctx, the caller's context, is done or past
// its deadline. The server gets the caller's deadline (grpc-timeout) and may
// answer DEADLINE_EXCEEDED before ctx's own timer has fired: that is still
// the caller's deadline, not a failure of the server. The clock is read only
// when ctx has a deadline and is not done yet.
func pastDeadline(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// classify maps the result of one attempt to the breaker outcome. ctx is the
// caller's context (not the attempt's). The rules:
//
//   - nil: Success;
//   - a code outside 0 to 16 counts as UNKNOWN (codeOf);
//   - CANCELED, DEADLINE_EXCEEDED once ctx is done or past its deadline
//     (pastDeadline), and local rejections: Ignored;
//   - a code in the policy's FailureCodes: Failure (DEADLINE_EXCEEDED only
//     before the caller's deadline: an attempt timeout or the server's own);
//   - any other code: Success (the server answered).
//
// Streams call it with the stream's final error (io.EOF counts as nil) and
// record Ignored themselves for a stream the caller abandoned.
func (e *entry) classify(ctx context.Context, err error) breaker.Outcome {
	if err == nil {
		return breaker.Success
	}
	c := codeOf(statusOf(err))
	switch {
	case c == codes.Canceled:
		return breaker.Ignored
	case c == codes.DeadlineExceeded && pastDeadline(ctx):
		return breaker.Ignored
	case c == codes.Unavailable && isLocalRejection(err):
		return breaker.Ignored
	case e.pol.failure.has(c):
		return breaker.Failure
	}
	return breaker.Success
}

// decide says whether a failed attempt may be retried and after what delay
// (the retry.Call then applies MaxAttempts, the budget and the deadline).
// ctx is the caller's context; committed reports that the attempt received
// response headers or a message (gRFC A6: never retried); trailer is the
// attempt's trailer metadata (nil if none). The rules, in order:
//
//  1. committed, ctx done, or a local rejection: Stop;
//  2. the code (a code outside 0 to 16 counts as UNKNOWN) must be
//     retryable: in RetryableCodes (default UNAVAILABLE),
//     or RESOURCE_EXHAUSTED with a server delay hint (listed or not);
//     DEADLINE_EXCEEDED only if listed and before the caller's deadline
//     (pastDeadline: an attempt timeout or the server's own); otherwise
//     Stop;
//  3. grpc-retry-pushback-ms as gRFC A6: one value >= 0 means
//     retry.After(that many ms); a negative or unparsable value, or more
//     than one value, means Stop, and counts as a failed attempt for the
//     budget (Budget.Failed: the A6 token bucket's -1, as grpc-go);
//  4. else a google.rpc.RetryInfo detail with a valid, non-negative delay
//     means retry.After(that delay) (an invalid or negative delay is no
//     hint: the detail is skipped);
//  5. else retry.Backoff.
//
// retry.After is capped by Retry.MaxPushback (and by the deadline) in
// retry.Call.Next. Call decide once per failed attempt, as its answer goes
// to Next: rule 3 reports to the budget.
func (e *entry) decide(ctx context.Context, err error, committed bool, trailer metadata.MD) retry.Decision {
	if committed || ctx.Err() != nil {
		return retry.Stop
	}
	st := statusOf(err)
	c := codeOf(st)
	listed := c != codes.ResourceExhausted && e.pol.retryable.has(c)
	if !listed && c != codes.ResourceExhausted {
		return retry.Stop
	}
	if c == codes.Unavailable && isLocalRejection(err) || c == codes.DeadlineExceeded && pastDeadline(ctx) {
		return retry.Stop
	}
	if vals := trailer[pushbackKey]; len(vals) > 0 {
		ms, ok := pushback(vals)
		if !ok {
			// gRFC A6 (grpc-go's throttle()): the server's "do not retry"
			// still counts as a failed attempt for the token bucket. Next
			// reports only retryable decisions to the budget, so report
			// this one here.
			e.budget.Failed(time.Now())
			return retry.Stop
		}
		return retry.After(msDuration(ms))
	}
	if d, ok := retryInfo(st); ok {
		return retry.After(d)
	}
	if !listed { // RESOURCE_EXHAUSTED without a hint
		return retry.Stop
	}
	return retry.Backoff
}

// pushback parses the values of grpc-retry-pushback-ms as gRFC A6 and
// grpc-go do: exactly one value, a non-negative integer (strconv.Atoi), is a
// delay in milliseconds; a negative or unparsable value, or several values,
// mean "do not retry" (ok false).
func pushback(vals []string) (ms int, ok bool) {
	if len(vals) != 1 {
		return 0, false
	}
	ms, err := strconv.Atoi(vals[0])
	return ms, err == nil && ms >= 0
}

// msDuration converts milliseconds to a Duration, saturating.
func msDuration(ms int) time.Duration {
	const maxMs = int(^uint64(0)>>1) / int(time.Millisecond)
	if ms > maxMs {
		return time.Duration(^uint64(0) >> 1)
	}
	return time.Duration(ms) * time.Millisecond
}

// retryInfo returns the delay of the first google.rpc.RetryInfo detail of st
// that holds a valid, non-negative delay. A missing, invalid or negative
// delay is no hint (a server cannot ask for "retry at once, whatever the
// backoff" with a negative delay).
func retryInfo(st *status.Status) (time.Duration, bool) {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			if rd := ri.GetRetryDelay(); rd != nil && rd.IsValid() {
				if delay := rd.AsDuration(); delay >= 0 {
					return delay, true
				}
			}
		}
	}
	return 0, false
}
