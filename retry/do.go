package retry

import (
	"context"
	"time"
)

// Option configures Do and DoValue.
type Option interface{ apply(*options) }

type options struct {
	budget  Budget
	onRetry func(attempt int, delay time.Duration, err error)
}

// The budget options: one pointer-shaped type per Budget type, so that WithBudget allocates
// nothing (Budget is sealed: these are all its types).
type (
	ratioOption struct{ b *RatioBudget }
	tokenOption struct{ b *TokenBucket }
	noBudgetOpt struct{}
)

func (o ratioOption) apply(opts *options) { opts.budget = o.b }
func (o tokenOption) apply(opts *options) { opts.budget = o.b }
func (noBudgetOpt) apply(opts *options)   { opts.budget = nil }

type onRetryOption struct {
	f func(attempt int, delay time.Duration, err error)
}

func (o onRetryOption) apply(opts *options) { opts.onRetry = o.f }

// WithBudget makes every retry ask b first and reports each call's outcome to it. A nil b
// means no budget.
func WithBudget(b Budget) Option {
	switch b := b.(type) {
	case *RatioBudget:
		if b != nil {
			return ratioOption{b}
		}
	case *TokenBucket:
		if b != nil {
			return tokenOption{b}
		}
	}
	return noBudgetOpt{} // a nil b, typed or not
}

// WithOnRetry calls f before each wait: attempt is the number of the attempt that just failed
// (1 for the first), delay the wait before the next one, err its error. f runs on the caller's
// goroutine.
func WithOnRetry(f func(attempt int, delay time.Duration, err error)) Option {
	return onRetryOption{f}
}

// collect applies opts. The package's own options are applied by a type switch so that the
// options value does not escape to the heap.
func collect(opts []Option) options {
	var o options
	for _, opt := range opts {
		switch x := opt.(type) {
		case ratioOption:
			o.budget = x.b
		case tokenOption:
			o.budget = x.b
		case noBudgetOpt:
			o.budget = nil
		case onRetryOption:
			o.onRetry = x.f
		case nil:
		default: // a type embedding an Option: apply it to a heap copy
			h := new(options)
			*h = o
			x.apply(h)
			o = *h
		}
	}
	return o
}

// Do is the Khive @with_retry / retry_with_backoff: it runs op until it succeeds or a stop
// reason ends the loop, and then returns nil or an *Error wrapping op's last error.
//
// classify maps op's error to a Decision; nil classify retries every error with Backoff.
// Each attempt gets ctx bounded by p.AttemptTimeout (Policy.AttemptContext). An invalid p
// returns the validation error without calling op. The first attempt is made even if ctx is
// already done (op sees ctx); retries never are. Do allocates nothing and reads no clock when op
// succeeds at once and AttemptTimeout is 0 (an attempt timeout needs a context.WithTimeout).
func Do(ctx context.Context, p Policy, op func(ctx context.Context) error, classify func(error) Decision, opts ...Option) error {
	if !p.valid() { // NewCall applies the defaults, if a retry comes
		return p.explain()
	}
	// The first attempt, without a Call: the common case stays cheap.
	actx, cancel := p.AttemptContext(ctx)
	err := op(actx)
	cancel()
	if err == nil {
		if len(opts) == 1 {
			if o, ok := opts[0].(ratioOption); ok { // the common case, without the interface call
				o.b.Succeeded(false)
				return nil
			}
		}
		if len(opts) > 0 {
			if b := collect(opts).budget; b != nil {
				b.Succeeded(false)
			}
		}
		return nil
	}
	return retryLoop(ctx, &p, op, classify, opts, err)
}

// retryLoop continues Do after a failed first attempt.
func retryLoop(ctx context.Context, p *Policy, op func(ctx context.Context) error, classify func(error) Decision, opts []Option, err error) error {
	var o options
	if len(opts) > 0 {
		o = collect(opts)
	}
	c := p.NewCall(o.budget)
	c.Begin()
	for {
		d := Backoff
		if classify != nil {
			d = classify(err)
		}
		delay, stop := c.Next(ctx, err, d, time.Now())
		if stop != nil {
			c.Done(err, d.Retryable())
			return stop
		}
		if o.onRetry != nil {
			o.onRetry(c.attempts, delay, err)
		}
		if Wait(ctx, delay) != nil {
			c.Done(err, d.Retryable())
			return c.stop(err, Canceled)
		}
		c.Begin()
		actx, cancel := c.p.AttemptContext(ctx)
		err = op(actx)
		cancel()
		if err == nil {
			c.Done(nil, false)
			return nil
		}
	}
}

// DoValue is Do for an op that returns a value: it returns op's value from the successful
// attempt, or the zero T and Do's error.
func DoValue[T any](ctx context.Context, p Policy, op func(ctx context.Context) (T, error), classify func(error) Decision, opts ...Option) (T, error) {
	var v T
	err := Do(ctx, p, func(ctx context.Context) error {
		var err error
		v, err = op(ctx)
		return err
	}, classify, opts...)
	if err != nil {
		var zero T
		return zero, err
	}
	return v, nil
}
