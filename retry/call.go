package retry

import (
	"context"
	"math"
	"math/rand/v2"
	"time"
)

// Call tracks the retries of one logical call. It is the single state machine behind Do and
// behind the gRPC interceptors' unary loop and stream retries. Call is a value type: create it
// with Policy.NewCall, keep it in a local variable, and use it from one goroutine.
//
// The protocol, exactly once per step:
//
//	c := p.NewCall(budget)
//	for {
//		c.Begin()                       // an attempt starts
//		err := attempt()
//		if err == nil {
//			c.Done(nil, false)
//			return nil
//		}
//		d := classify(err)
//		delay, stop := c.Next(ctx, err, d, time.Now())
//		if stop != nil {
//			c.Done(err, d.Retryable())
//			return stop
//		}
//		if Wait(ctx, delay) != nil {
//			c.Done(err, d.Retryable())
//			return &Error{Err: err, Attempts: c.Attempts(), Reason: Canceled}
//		}
//	}
//
// Begin is explicit (not folded into Next) so that Attempts counts attempts actually started:
// a retry granted by Next but abandoned during the wait is not counted, and Done gives its
// budget withdrawal back.
type Call struct {
	p        Policy // normalized
	budget   Budget // nil: none
	attempts int
	n        int  // exponent of the next Backoff delay (reset by After)
	charged  bool // Next withdrew a retry from the budget and its attempt has not begun
	inflight bool // Next granted a retry that the budget counts in flight until its attempt ends
}

// NewCall starts tracking one logical call under p, normalized (Normalize). b may be nil: no
// budget. p must be valid; NewCall does not report the error.
func (p *Policy) NewCall(b Budget) Call {
	c := Call{p: *p, budget: b}
	c.p.applyDefaults()
	return c
}

// Policy returns the call's normalized policy.
func (c *Call) Policy() Policy { return c.p }

// Begin marks that an attempt starts; it increments Attempts. Call it before every attempt,
// the first included.
func (c *Call) Begin() {
	c.attempts++
	c.charged = false
}

// Attempts returns the number of attempts started so far (1 after the first Begin).
func (c *Call) Attempts() int { return c.attempts }

// AttemptContext derives the context for the next attempt; see Policy.AttemptContext.
func (c *Call) AttemptContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return c.p.AttemptContext(ctx)
}

// Next is called after a failed attempt with its error and the classifier's decision. It
// returns the delay to wait before the next attempt, or a non-nil *Error (Err = err, the
// attempts so far, the reason) to return to the caller.
//
// A retryable decision first reports the failed attempt to the budget (Budget.FailedAt).
// Then the checks, in order:
//
//  1. ctx done: Canceled
//  2. d is Stop: NotRetryable
//  3. Attempts() >= MaxAttempts: Exhausted
//  4. the budget refuses: BudgetExhausted
//  5. the caller's deadline leaves less than delay + MinAttemptTime after now: Deadline
//
// The delay is Policy.Delay(n, u) for Backoff (n counts Backoff retries since the last
// After; u from math/rand/v2) and min(d, MaxPushback) for After, which also resets n to 0.
// Next charges the budget (as Budget.AllowAt, but counting the other retries in flight at
// their expected refund) only when it returns a delay: a retry that the deadline rules
// out costs nothing, and is reported as BudgetExhausted only if the budget would also have
// refused it. The granted retry stays in flight for the budget until its attempt ends (the
// next Next, or Done). If Begin was never called, the failed attempt counts as the first;
// a retry granted by an earlier Next that never began is given back to the budget.
func (c *Call) Next(ctx context.Context, err error, d Decision, now time.Time) (time.Duration, *Error) {
	if c.attempts < 1 {
		c.attempts = 1
	}
	c.release()
	c.settle()
	if d.Retryable() && c.budget != nil {
		c.budget.FailedAt(now)
	}
	switch {
	case ctx.Err() != nil:
		return 0, c.stop(err, Canceled)
	case !d.Retryable():
		return 0, c.stop(err, NotRetryable)
	case c.attempts >= c.p.MaxAttempts:
		return 0, c.stop(err, Exhausted)
	}
	var delay time.Duration
	if after, ok := d.Pushback(); ok {
		delay = min(after, c.p.MaxPushback)
	} else {
		var u float64
		if c.p.Jitter != NoJitter {
			u = rand.Float64()
		}
		delay = c.p.Delay(c.n, u)
	}
	fits := true
	if dl, ok := ctx.Deadline(); ok {
		fits = dl.Sub(now) >= satAdd(delay, c.p.MinAttemptTime)
	}
	if !fits {
		if c.budget != nil && !c.budget.wouldAllow(now) {
			return 0, c.stop(err, BudgetExhausted)
		}
		return 0, c.stop(err, Deadline)
	}
	if c.budget != nil && !c.budget.allowRetry(now) {
		return 0, c.stop(err, BudgetExhausted)
	}
	c.charged = c.budget != nil
	c.inflight = c.charged
	if d != Backoff {
		c.n = 0
	} else if c.n < math.MaxInt32 {
		c.n++
	}
	return delay, nil
}

func (c *Call) stop(err error, r Reason) *Error {
	return &Error{Err: err, Attempts: c.attempts, Reason: r}
}

// Done ends the call and informs the budget, once: err == nil is a success (a deposit, plus a
// refund of one withdrawal if the call was retried); a non-nil err that is not retryable is a
// deposit; a retryable err (exhausted, budget, deadline, canceled while retrying) deposits
// nothing. A retry that Next granted but that never began (the wait was canceled) is refunded.
func (c *Call) Done(err error, retryable bool) {
	b := c.budget
	if b == nil {
		return
	}
	c.release()
	switch {
	case err == nil:
		b.Succeeded(c.attempts > 1)
	case !retryable:
		b.NotRetryable()
	}
	c.settle()
}

// settle tells the budget that the retry Next granted is no longer in flight (its attempt
// ended, or never began).
func (c *Call) settle() {
	if c.inflight {
		c.inflight = false
		c.budget.settle()
	}
}

// release gives back the withdrawal of a retry that Next granted and that never began.
func (c *Call) release() {
	if c.charged {
		c.charged = false
		c.budget.refund()
	}
}

// satAdd returns a+b for non-negative durations, saturating at the largest Duration.
func satAdd(a, b time.Duration) time.Duration {
	if s := a + b; s >= a {
		return s
	}
	return math.MaxInt64
}

// Wait sleeps for d or until ctx ends, whichever comes first, and returns ctx.Err() in the
// second case. It uses time.NewTimer and select, and stops the timer on every path. For
// d <= 0 it returns at once: nil, or ctx.Err() if ctx is already done.
func Wait(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	t := time.NewTimer(d)
	if waitTimerHook != nil {
		defer waitTimerHook(t)
	}
	select {
	case <-ctx.Done():
		t.Stop()
		return ctx.Err()
	case <-t.C:
		t.Stop()
		return nil
	}
}

// waitTimerHook, when set by a test, sees every timer Wait created once Wait is done with it.
var waitTimerHook func(*time.Timer)
