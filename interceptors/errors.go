package interceptors

import (
	"math"
	"slices"
	"strconv"
	"sync/atomic"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/khive/grpc-resilience/breaker"
	resiliencev1 "github.com/khive/grpc-resilience/proto/khive/resilience/v1"
	"github.com/khive/grpc-resilience/retry"
)

// ErrorInfo domain and reasons of the suite's errors (also those of a
// resiliencev1.ResilienceInfo, which replaces the suite's ErrorInfo in a
// status that has the server's).
const (
	ErrorDomain = "khive.grpc-resilience"

	ReasonCircuitOpen           = "CIRCUIT_OPEN"
	ReasonThrottled             = "THROTTLED"
	ReasonRetriesExhausted      = "RETRIES_EXHAUSTED"
	ReasonBudgetExhausted       = "RETRY_BUDGET_EXHAUSTED"
	ReasonDeadlineTooShort      = "DEADLINE_TOO_SHORT"
	ReasonNotRetryable          = "NOT_RETRYABLE"
	ReasonCanceledWhileRetrying = "CANCELED_WHILE_RETRYING"
)

// BreakerOpen is the [retry.Reason] of a call whose retries an open breaker ended.
const BreakerOpen retry.Reason = "breaker open"

// suiteError is an error of New, Update, SetMode or Ready: its message and
// the error it wraps, if any (a breaker or retry validation error, or
// [ErrUnknownBreaker] or [ErrNotReady]).
type suiteError struct {
	msg string
	err error
}

func (e *suiteError) Error() string { return e.msg }
func (e *suiteError) Unwrap() error { return e.err }

// rejectError is the error of a call the breaker rejected before any attempt
// (see the package doc), its RetryInfo the time left when it was built. One
// is built per *breaker.OpenError (per open period, and one for the
// throttle), so a rejection allocates nothing.
type rejectError struct {
	oe  *breaker.OpenError
	st  *status.Status
	msg string
	ma  atomic.Pointer[rejectAttrs] // the rejection's metric attributes (see attrs)
}

// Error returns the status error's text.
func (e *rejectError) Error() string { return e.msg }

// GRPCStatus returns the prebuilt UNAVAILABLE status with its details.
func (e *rejectError) GRPCStatus() *status.Status { return e.st }

// Unwrap returns the breaker's *OpenError, so errors.Is(err, breaker.ErrOpen).
func (e *rejectError) Unwrap() error { return e.oe }

func newRejectError(method string, oe *breaker.OpenError) *rejectError {
	st := status.New(codes.Unavailable, oe.Error())
	info := &errdetails.ErrorInfo{Reason: ReasonCircuitOpen, Domain: ErrorDomain, Metadata: map[string]string{"method": method}}
	if name := oe.Name(); name != method {
		info.Metadata["breaker"] = name
	}
	details := []protoadapt.MessageV1{info}
	if oe.Throttled() {
		info.Reason = ReasonThrottled // no RetryInfo: the next call may well be admitted
	} else {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(oe.RetryAfter())})
	}
	if withDetails, err := st.WithDetails(details...); err == nil {
		st = withDetails
	}
	return &rejectError{oe: oe, st: st, msg: "rpc error: code = Unavailable desc = " + st.Message()}
}

// giveUpError is the error of a call whose retries stopped: the last
// attempt's status (code and details) with an annotated message and the
// suite's ErrorInfo, or a resiliencev1.ResilienceInfo if the status has an
// ErrorInfo already (one per status, AIP-193), built on first use. It
// unwraps to the *retry.Error.
type giveUpError struct {
	re   *retry.Error
	code codes.Code // the code the caller sees
	st   atomic.Pointer[status.Status]
}

// Unwrap returns the *retry.Error, and through it the last attempt's error.
func (e *giveUpError) Unwrap() error { return e.re }

// Is reports breaker.ErrOpen for a call the open breaker ended.
func (e *giveUpError) Is(target error) bool {
	return target == breaker.ErrOpen && e.re.Reason == BreakerOpen
}

// Error formats the annotated status as grpc's status errors do.
func (e *giveUpError) Error() string {
	return "rpc error: code = " + e.code.String() + " desc = " + e.GRPCStatus().Message()
}

// GRPCStatus returns the annotated status.
func (e *giveUpError) GRPCStatus() *status.Status {
	if st := e.st.Load(); st != nil {
		return st
	}
	last := statusOf(e.re.Err)
	p := last.Proto()
	p.Code = int32(e.code)
	attempts := strconv.Itoa(e.re.Attempts) + " attempts"
	if e.re.Attempts == 1 {
		attempts = "1 attempt"
	}
	p.Message = "gave up after " + attempts + " (" + e.re.Reason.String() + "): " + p.GetMessage()
	var d proto.Message = &errdetails.ErrorInfo{
		Reason:   reasonOf(e.re.Reason),
		Domain:   ErrorDomain,
		Metadata: map[string]string{"attempts": strconv.Itoa(e.re.Attempts), "reason": e.re.Reason.String()},
	}
	if slices.ContainsFunc(p.Details, func(a *anypb.Any) bool { return a.MessageIs((*errdetails.ErrorInfo)(nil)) }) {
		d = &resiliencev1.ResilienceInfo{Reason: reasonOf(e.re.Reason), Domain: ErrorDomain,
			Attempts: int32(min(e.re.Attempts, math.MaxInt32)), RetryReason: e.re.Reason.String()}
	}
	if a, err := anypb.New(d); err == nil {
		p.Details = append(p.Details, a)
	}
	st := status.FromProto(p)
	e.st.CompareAndSwap(nil, st)
	return e.st.Load()
}

func reasonOf(r retry.Reason) string {
	switch r {
	case retry.Exhausted:
		return ReasonRetriesExhausted
	case retry.BudgetExhausted:
		return ReasonBudgetExhausted
	case retry.Deadline:
		return ReasonDeadlineTooShort
	case BreakerOpen:
		return ReasonCircuitOpen
	case retry.Canceled:
		return ReasonCanceledWhileRetrying
	}
	return ReasonNotRetryable
}
