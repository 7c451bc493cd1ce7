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
// policy, the method's breaker and the target's budget. Both the unary and
// the stream interceptor run every attempt through the same entry methods
// (admit, classify, decide, newCall, retrying, giveUp).
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

// newCall starts the retry state machine of one call allowed maxAttempts
// attempts (the policy's, or a call option's), charged to the entry's
// budget.
func (e *entry) newCall(maxAttempts int) retry.Call {
	p := e.pol.retry
	p.MaxAttempts = maxAttempts
	return p.NewCall(e.budget)
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

// afterFailure runs retry.Call.Next for the failed attempt (decision d, its
// end read at now), then records the attempt's breaker outcome o with its
// permit p as the decision says: p.DoneAt when the call stops (the call's
// final outcome), p.RetryAt when it retries (the attempt counts, the call
// has no outcome yet; if the breaker or the caller's context then ends the
// call, nothing more is recorded), and p.RetryAt too when the retry budget
// refused the retry (a local limit, as a breaker rejection: the call ends
// without an outcome). A zero p (already recorded) records
// nothing. If retrying stops, or the breaker is open (the retry would be
// rejected: do not wait for it), it ends c and returns the error for the
// caller. Otherwise it reports the retry (OnRetry, log) and returns the
// delay to wait before the next attempt.
func (e *entry) afterFailure(ctx context.Context, c *retry.Call, cs *callStats, err error, d retry.Decision, now time.Time, p breaker.Permit, o breaker.Outcome) (delay time.Duration, final error, open bool) {
	delay, stop := c.Next(ctx, err, d, now)
	if stop != nil {
		budget := stop.Reason == retry.BudgetExhausted
		if budget {
			// The retry budget, a local limit, refused a retry the server's
			// answer allowed: like a retry the breaker rejects, the call
			// ends without an outcome; the attempt still counts. (Counted
			// as failed calls, a crowd of first attempts cut short by the
			// budget at a cold start made the throttle shed calls that
			// would have succeeded: worse than no breaker. The cost: while
			// the budget refuses every retry, the throttle does not see
			// failures of retryable codes.)
			p.RetryAt(o, now)
		} else {
			p.DoneAt(o, now)
		}
		c.Done(err, d.Retryable())
		final = e.giveUp(ctx, cs, stop)
		if budget {
			e.rejected(ctx, cs.options(), cs.targetName(), RejectBudget, stop.Attempts+1, final)
		}
		return 0, final, false
	}
	p.RetryAt(o, now)
	if e.isOpen() {
		// The breaker opened (maybe at this attempt): the retry would be
		// rejected, so do not wait for it.
		return 0, e.breakerEnded(ctx, c, cs, err, RejectOpen), true
	}
	e.retrying(ctx, cs, c.Attempts(), delay, err)
	return delay, nil, false
}

// nextAttempt waits delay, as afterFailure granted, and admits the next
// attempt: it returns its permit, with c.Begin called (after admit, so that a
// retry the breaker rejects is refunded by Done). If the caller's context
// ends during the wait or the breaker rejects the attempt, it ends c and
// returns the error for the caller. The wait is added to cs.waited.
func (e *entry) nextAttempt(ctx context.Context, c *retry.Call, cs *callStats, err error, d retry.Decision, delay time.Duration) (p breaker.Permit, final error, open bool) {
	start := time.Now()
	werr := retry.Wait(ctx, delay)
	if cs != nil {
		cs.waited += time.Since(start)
	}
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

// breakerEnded ends c, whose retry Next granted but the breaker rules out
// (for reason); err is the last attempt's error.
func (e *entry) breakerEnded(ctx context.Context, c *retry.Call, cs *callStats, err error, reason RejectReason) error {
	c.Done(err, true)
	final := e.giveUp(ctx, cs, &retry.Error{Err: err, Attempts: c.Attempts(), Reason: BreakerOpen})
	e.rejected(ctx, cs.options(), cs.targetName(), reason, c.Attempts()+1, final)
	return final
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

// callEnded records the retry metrics of a call of attempts attempts
// (nothing for a call of one attempt).
func (e *entry) callEnded(ctx context.Context, cs *callStats, attempts int) {
	if attempts <= 1 || cs == nil {
		return
	}
	m := e.s.o.metrics
	a := m.callAttrs(m.methodAttr(e.method, cs.opts), cs.target, "")
	m.retries.Record(ctx, int64(attempts-1), a.rec...)
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
