package interceptors

import (
	"context"
	"time"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/retry"
)

// The step after a failed attempt, shared by the unary loop and the stream:
//
//	d := e.decide(...)                                                 // once per failed attempt
//	delay, final, open := e.afterFailure(ctx, c, cs, err, d, now, p, o) // records p
//	if final != nil { return final }                                   // the call is over
//	p, final, open := e.nextAttempt(ctx, c, cs, err, d, delay)
//	if final != nil { return final }                                   // the call is over
//	... make the attempt, admitted with p (c.Attempts() is its number)
//
// When final is not nil, c.Done has been called and final is giveUp's error;
// open reports that the call ended because the breaker is open (the unary
// call then runs the policy's fallback whatever the last attempt's outcome).
// ctx is the caller's context, cs the call's stats (its options and
// target, the time it waited) and err the failed attempt's error. A call
// that ends here records its retry metrics (giveUp).

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
