package interceptors

import (
	"context"
	"errors"
	"reflect"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/khive/grpc-resilience/breaker"
)

// pushbackKey is the gRFC A6 trailer with the server's retry delay.
const pushbackKey = "grpc-retry-pushback-ms"

// statusOf returns the status of err: a status error's (read without
// allocating), a wrapped one's, or that of a context error as grpc gives it
// (CANCELED, DEADLINE_EXCEEDED), so that an inner interceptor's ctx.Err() is
// never the server's failure; UNKNOWN for any other error.
func statusOf(err error) *status.Status {
	if gs, ok := err.(interface{ GRPCStatus() *status.Status }); ok { // grpc's own: no errors.As
		if st := gs.GRPCStatus(); st != nil {
			return st
		}
	}
	if st, ok := status.FromError(err); ok {
		return st
	}
	return status.FromContextError(err) // UNKNOWN for other errors
}

// codeOf returns st's code, or UNKNOWN for a code outside the 17 gRPC
// defines (a broken server may send grpc-status: 99): a failure, never a
// success.
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
// its deadline (the server may answer DEADLINE_EXCEEDED before ctx's timer
// fires: still the caller's deadline). It reads the clock only when ctx has
// a live deadline.
func pastDeadline(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// pushback parses grpc-retry-pushback-ms as gRFC A6 and grpc-go: exactly
// one non-negative integer is a delay in ms; anything else is "do not
// retry" (ok false).
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
// with a valid, non-negative delay.
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
