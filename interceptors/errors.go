package interceptors

import (
	"context"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/retry"
)

// ErrorInfo domain and reasons of the suite's errors.
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

// rejectError is the error of a call the breaker rejected before any
// attempt: codes.Unavailable with an ErrorInfo (reason CIRCUIT_OPEN, or
// THROTTLED for a call the breaker's adaptive throttle shed; domain
// ErrorDomain, metadata {"method": m}) and, for an open breaker, a
// RetryInfo detail. It unwraps to the breaker's *breaker.OpenError, so
// errors.Is(err, breaker.ErrOpen) holds, or errors.Is(err,
// breaker.ErrThrottled) for a throttled call. One is built per
// *breaker.OpenError (per open period; the breaker has one for its
// throttle) and returned for every rejection of that period, so a
// rejection allocates nothing; its RetryInfo is the time left when it was
// built, an upper bound later on.
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

// admit asks the entry's breaker for a permit for a call's first attempt:
// Breaker.AllowContext, so that when the breaker is half-open with its
// probe slots taken the caller waits (bounded by the breaker's
// HalfOpenMaxWait and by ctx's deadline less the policy's MinAttemptTime)
// for the probe's verdict instead of being rejected at once. On rejection
// (open, half-open, forced open, or throttled) it returns the prebuilt
// rejection error (see rejectError; zero allocations after the first
// rejection of a period) and a zero Permit, whose records are no-ops. Every
// first attempt, unary or stream, passes admit, and every later attempt
// admitRetry. Record the attempt with p.Done(Success) when it succeeds (or,
// for a stream, commits); after a failed attempt decide first, then record:
// p.DoneAt(o, now) when the call stops, p.RetryAt(o, now) when it retries
// (see afterFailure).
func (e *entry) admit(ctx context.Context) (breaker.Permit, error) {
	var p breaker.Permit
	var err error
	if e.brk.State() == breaker.HalfOpen {
		// Only half-open waits; elsewhere Allow is AllowContext, one call
		// less. (A transition to half-open between the two loads rejects
		// this caller at once, as Allow does.)
		reserve := e.pol.retry.MinAttemptTime
		if reserve <= 0 {
			reserve = retry.DefaultMinAttemptTime
		}
		p, err = e.brk.AllowContext(ctx, reserve)
	} else {
		p, err = e.brk.Allow()
	}
	if err == nil {
		return p, nil
	}
	if r := e.rej.Load(); r != nil && error(r.oe) == err {
		return p, r
	}
	return p, e.rejection(err)
}

// admitRetry asks the entry's breaker for a permit for a later attempt of
// a call admit admitted: Breaker.AllowRetry (never throttled, never waits).
func (e *entry) admitRetry() (breaker.Permit, error) {
	p, err := e.brk.AllowRetry()
	if err == nil {
		return p, nil
	}
	return p, e.rejection(err)
}

// rejection returns the prebuilt rejection error for err, the breaker's.
func (e *entry) rejection(err error) error {
	oe, ok := err.(*breaker.OpenError)
	if !ok {
		return err
	}
	if r := e.rej.Load(); r != nil && r.oe == oe {
		return r
	}
	r := newRejectError(e.method, oe)
	e.rej.Store(r)
	return r
}

// isOpen reports whether the entry's breaker rejects every attempt now
// (open or forced open): one atomic load. Call it after retry.Call.Next
// granted a retry and before retry.Wait; if true, end the call as
// admit would after the wait: c.Done(err, true) and e.giveUp with
// BreakerOpen, without waiting.
func (e *entry) isOpen() bool {
	switch e.brk.State() {
	case breaker.Open, breaker.ForcedOpen:
		return true
	}
	return false
}

// giveUpError is the error of a call whose retries stopped: the last
// attempt's status (code and details kept) with the message annotated with
// the attempts and the reason, plus an ErrorInfo detail. It unwraps to the
// *retry.Error, which unwraps to the last attempt's error; errors.Is(err,
// breaker.ErrOpen) holds when an open breaker ended the retries. The status
// is built on first use (GRPCStatus, Error), not on the failure path.
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
	p.Message = annotation(e.re) + ": " + p.GetMessage()
	if a, err := anypb.New(&errdetails.ErrorInfo{
		Reason:   reasonOf(e.re.Reason),
		Domain:   ErrorDomain,
		Metadata: map[string]string{"attempts": strconv.Itoa(e.re.Attempts), "reason": e.re.Reason.String()},
	}); err == nil {
		p.Details = append(p.Details, a)
	}
	st := status.FromProto(p)
	e.st.CompareAndSwap(nil, st)
	return e.st.Load()
}

// annotation returns "gave up after 3 attempts (exhausted)".
func annotation(re *retry.Error) string {
	s := "gave up after " + strconv.Itoa(re.Attempts) + " attempt"
	if re.Attempts != 1 {
		s += "s"
	}
	return s + " (" + re.Reason.String() + ")"
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

// giveUp turns the retry.Error that ended a call (from retry.Call.Next, or
// built by the caller for BreakerOpen and retry.Canceled) into the
// error the caller gets, and reports it (WithOnGiveUp, WithLogger):
//
//   - a single attempt that stopped as NotRetryable or Exhausted (retries
//     off), or that itself ended with the caller's context (CANCELED or
//     DEADLINE_EXCEEDED, reason Canceled), returns re.Err unchanged and
//     reports nothing;
//   - otherwise a *giveUpError: the last status's code (for Canceled, the
//     code of ctx's error: CANCELED or DEADLINE_EXCEEDED), its details, the
//     message annotated, and an ErrorInfo with the reason.
//
// ctx is the caller's context and cs the call's stats (nil: no metrics, no
// target); a call that retried records its retry metrics here, as the
// call ends.
func (e *entry) giveUp(ctx context.Context, cs *callStats, re *retry.Error) error {
	e.callEnded(ctx, cs, re.Attempts)
	code := statusOf(re.Err).Code()
	if re.Attempts <= 1 {
		switch re.Reason {
		case retry.NotRetryable, retry.Exhausted:
			return re.Err
		case retry.Canceled:
			if code == codes.Canceled || code == codes.DeadlineExceeded {
				return re.Err // the attempt itself ended with the caller's context
			}
		}
	}
	if re.Reason == retry.Canceled && ctx.Err() != nil {
		code = status.FromContextError(ctx.Err()).Code()
	}
	err := &giveUpError{re: re, code: code}
	o := &e.s.o
	target := cs.targetName()
	if o.onGiveUp != nil {
		o.onGiveUp(GiveUpEvent{Context: ctx, Method: e.method, Target: target, Attempts: re.Attempts, Reason: re.Reason, Err: err})
	}
	if o.logger != nil {
		o.logger.Log(ctx, logging.LevelWarn, "retries gave up", append(callFields(ctx, e.method, target),
			"grpc.attempt", re.Attempts, "retry.reason", re.Reason.String(), "grpc.code", code.String(), "grpc.error", re.Err.Error())...)
	}
	return err
}

// retrying reports a retry about to wait delay after attempt (1-based)
// failed with err (WithOnRetry, WithLogger); cs is the call's stats. Call it after retry.Call.Next
// granted the retry and before retry.Wait. Free when no hook is set.
func (e *entry) retrying(ctx context.Context, cs *callStats, attempt int, delay time.Duration, err error) {
	o := &e.s.o
	if o.onRetry != nil {
		o.onRetry(RetryEvent{Context: ctx, Method: e.method, Target: cs.targetName(), Attempt: attempt, Delay: delay, Err: err})
	}
	if o.logger != nil {
		o.logger.Log(ctx, logging.LevelDebug, "retrying", append(callFields(ctx, e.method, cs.targetName()),
			"grpc.attempt", attempt, "retry.delay_ms", millis(delay), "grpc.code", statusOf(err).Code().String(), "grpc.error", err.Error())...)
	}
}
