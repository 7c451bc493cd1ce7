package interceptors

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/retry"
)

// An entry runs every attempt of a unary call or a stream through one step:
//
//	p, rej := e.admit(ctx)                                     // or admitRetry for a retry
//	... the attempt; on success p.Done(breaker.Success)
//	o := e.classify(ctx, err)
//	d := e.decide(ctx, err, committed, trailer)                // once per failed attempt
//	delay, final, open := e.afterFailure(ctx, c, cs, err, d, now, p, o) // records p
//	if final != nil { return final }                           // the call is over
//	p, final, open = e.nextAttempt(ctx, c, cs, err, d, delay)
//	if final != nil { return final }
//
// When final is not nil, c.Done has been called and final is giveUp's error;
// open reports that the breaker ended the call (a unary call then runs the
// policy's fallback).

// entry is what one method on one target resolves to under one table: the
// policy, the method's breaker and the target's budget.
type entry struct {
	s      *Suite
	method string
	tab    *table  // the table it was resolved under (stale once the suite's table is replaced)
	pol    *policy // nil: the method has no policy (a cached pass-through)
	rec    *record // the breaker's record (nil for a pass-through)
	brk    *breaker.Breaker
	budget retry.Budget // nil: no budget

	rej atomic.Pointer[rejectError] // the rejection of the current open period
}

// newCall starts the retry state machine of a call of maxAttempts attempts
// (the policy's, or a call option's), charged to the entry's budget.
func (e *entry) newCall(maxAttempts int) retry.Call {
	p := e.pol.retry
	p.MaxAttempts = maxAttempts
	return p.NewCall(e.budget)
}

// admit asks the breaker for a permit for a call's first attempt. A
// half-open breaker with its probe slots taken makes the caller wait for
// the probes' verdict (Breaker.AllowContext, bounded by HalfOpenMaxWait and
// by ctx's deadline less MinAttemptTime). A rejection returns a zero Permit
// and the period's prebuilt rejectError.
func (e *entry) admit(ctx context.Context) (breaker.Permit, error) {
	var p breaker.Permit
	var err error
	if e.brk.State() == breaker.HalfOpen {
		// Only half-open waits; elsewhere Allow is AllowContext, one call
		// less. (A transition to half-open between the two loads rejects
		// this caller at once, as Allow does.)
		p, err = e.brk.AllowContext(ctx, e.pol.retry.MinAttemptTime)
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

// admitRetry asks the breaker for a permit for a retry
// (Breaker.AllowRetry: never throttled, never waits).
func (e *entry) admitRetry() (breaker.Permit, error) {
	p, err := e.brk.AllowRetry()
	return p, e.rejection(err)
}

// rejection returns the prebuilt rejection error for err, the breaker's (nil
// for nil).
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

// classify maps the result of one attempt to its breaker outcome as
// [Policy.FailureCodes] says (ctx is the caller's); a local rejection is
// Ignored, a code outside 0..16 UNKNOWN.
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

// decide says whether a failed attempt may be retried and after what delay;
// retry.Call.Next then applies MaxAttempts, MaxPushback, the budget and the
// deadline. In order:
//
//  1. committed (headers or a message arrived), ctx done, or a local
//     rejection: Stop;
//  2. a code not retryable by [Policy.RetryableCodes]: Stop;
//  3. grpc-retry-pushback-ms, as gRFC A6: one value >= 0 is After(ms); any
//     other is Stop and a failed attempt for the budget (FailedAt);
//  4. a valid, non-negative google.rpc.RetryInfo delay: After(delay);
//  5. Backoff.
//
// Call it once per failed attempt (rule 3 reports to the budget).
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
		if !ok { // Next reports only retryable decisions to the budget
			if e.budget != nil {
				e.budget.FailedAt(time.Now())
			}
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

// afterFailure runs c.Next for the failed attempt and records its outcome o
// with p: DoneAt when the call stops, RetryAt when it retries or the budget
// refused the retry (a local limit, as a breaker rejection). If the call
// stops, or the breaker is open, it ends c and returns the caller's error;
// otherwise it reports the retry and returns the delay.
func (e *entry) afterFailure(ctx context.Context, c *retry.Call, cs *callStats, err error, d retry.Decision, now time.Time, p breaker.Permit, o breaker.Outcome) (delay time.Duration, final error, open bool) {
	delay, stop := c.Next(ctx, err, d, now)
	if stop != nil {
		budget := stop.Reason == retry.BudgetExhausted
		if budget { // not a failed call: at a cold start the throttle would shed good calls
			p.RetryAt(o, now)
		} else {
			p.DoneAt(o, now)
		}
		c.Done(err, d.Retryable())
		final = e.giveUp(ctx, cs, stop)
		if budget {
			e.rejected(ctx, cs.opts, cs.target, RejectBudget, stop.Attempts+1, final)
		}
		return 0, final, false
	}
	p.RetryAt(o, now)
	if st := e.brk.State(); st == breaker.Open || st == breaker.ForcedOpen { // the retry would be rejected
		return 0, e.breakerEnded(ctx, c, cs, err, RejectOpen), true
	}
	e.retrying(ctx, cs, c.Attempts(), delay, err)
	return delay, nil, false
}

// nextAttempt waits delay and admits the next attempt, calling c.Begin after
// admit (so that Done refunds a retry the breaker rejects). If ctx ends
// during the wait or the breaker rejects the attempt, it ends c and returns
// the caller's error. The wait is added to cs.waited.
func (e *entry) nextAttempt(ctx context.Context, c *retry.Call, cs *callStats, err error, d retry.Decision, delay time.Duration) (p breaker.Permit, final error, open bool) {
	start := time.Now()
	werr := retry.Wait(ctx, delay)
	cs.waited += time.Since(start)
	if werr != nil {
		c.Done(err, d.Retryable())
		return p, e.giveUp(ctx, cs, &retry.Error{Err: err, Attempts: c.Attempts(), Reason: retry.Canceled}), false
	}
	p, rej := e.admitRetry()
	if rej != nil {
		return p, e.breakerEnded(ctx, c, cs, err, reasonOfRejection(rej)), true
	}
	c.Begin()
	return p, nil, false
}

// breakerEnded ends c, whose retry the breaker rules out for reason.
func (e *entry) breakerEnded(ctx context.Context, c *retry.Call, cs *callStats, err error, reason RejectReason) error {
	c.Done(err, true)
	final := e.giveUp(ctx, cs, &retry.Error{Err: err, Attempts: c.Attempts(), Reason: BreakerOpen})
	e.rejected(ctx, cs.opts, cs.target, reason, c.Attempts()+1, final)
	return final
}

// giveUp turns the retry.Error that ended a call into the caller's error and
// reports it (WithOnGiveUp, WithLogger, the retry metrics). A single attempt
// that stopped as NotRetryable or Exhausted, or that itself ended with the
// caller's context, returns re.Err unchanged and reports nothing. Otherwise
// it is a *giveUpError whose code is the last status's (for Canceled,
// ctx's).
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
	if o.onGiveUp != nil {
		o.onGiveUp(GiveUpEvent{Context: ctx, Method: e.method, Target: cs.target, Attempts: re.Attempts, Reason: re.Reason, Err: err})
	}
	if o.logger != nil {
		o.logger.Log(ctx, logging.LevelWarn, "retries gave up", append(callFields(ctx, e.method, cs.target),
			"grpc.attempt", re.Attempts, "retry.reason", re.Reason.String(), "grpc.code", code.String(), "grpc.error", re.Err.Error())...)
	}
	return err
}

// retrying reports a retry about to wait delay after attempt (1-based)
// failed with err (WithOnRetry, WithLogger).
func (e *entry) retrying(ctx context.Context, cs *callStats, attempt int, delay time.Duration, err error) {
	o := &e.s.o
	if o.onRetry != nil {
		o.onRetry(RetryEvent{Context: ctx, Method: e.method, Target: cs.target, Attempt: attempt, Delay: delay, Err: err})
	}
	if o.logger != nil {
		o.logger.Log(ctx, logging.LevelDebug, "retrying", append(callFields(ctx, e.method, cs.target),
			"grpc.attempt", attempt, "retry.delay_ms", millis(delay), "grpc.code", statusOf(err).Code().String(), "grpc.error", err.Error())...)
	}
}

// callEnded records the retry metrics of a call of attempts attempts
// (nothing for a call of one attempt).
func (e *entry) callEnded(ctx context.Context, cs *callStats, attempts int) {
	if attempts <= 1 {
		return
	}
	m := e.s.o.metrics
	a := m.callAttrs(m.methodAttr(e.method, cs.opts), cs.target, "")
	if cs.hedged {
		m.hedges.Record(ctx, int64(attempts-1), a.rec...)
	} else {
		m.retries.Record(ctx, int64(attempts-1), a.rec...)
	}
	m.retryDelay.Record(ctx, cs.waited.Seconds(), a.rec...)
}

// rejected reports an attempt (attempt, 1-based) the suite refused for
// reason: the rejections counter, WithOnReject. err is the caller's error.
func (e *entry) rejected(ctx context.Context, opts []grpc.CallOption, target string, reason RejectReason, attempt int, err error) {
	o := &e.s.o
	m := o.metrics
	var a *attrSet
	if r, ok := err.(*rejectError); ok && attempt == 1 {
		a = r.attrs(m, e.method, target, reason, opts)
	} else {
		a = m.callAttrs(m.methodAttr(e.method, opts), target, string(reason))
	}
	a.rejected.Add(1)
	if o.onReject != nil {
		o.onReject(RejectEvent{Context: ctx, Method: e.method, Target: target, Reason: reason, Attempt: attempt, Err: err})
	}
}

// fallback runs the policy's Fallback, if any, for a unary call that failed
// with err because the method is unhealthy; otherwise it returns err.
func (e *entry) fallback(ctx context.Context, req, reply any, err error) error {
	if f := e.pol.fallback; f != nil && ctx.Err() == nil {
		return f(ctx, e.method, req, reply, err)
	}
	return err
}
