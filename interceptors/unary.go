package interceptors

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/retry"
)

// unaryState is the pooled per-call state of a retrying unary call: the
// header and trailer of the current attempt and the call options of every
// attempt (the caller's, minus the suite's, plus Header and Trailer options
// pointing at hdr and tlr). Pooling it keeps the success path free of
// allocations.
type unaryState struct {
	hdr, tlr       metadata.MD
	hdrOpt, tlrOpt grpc.CallOption
	opts           []grpc.CallOption
}

var unaryPool = sync.Pool{New: func() any {
	st := new(unaryState)
	st.hdrOpt = grpc.Header(&st.hdr)
	st.tlrOpt = grpc.Trailer(&st.tlr)
	return st
}}

func (st *unaryState) release() {
	clear(st.opts)
	if cap(st.opts) > 64 {
		st.opts = nil
	}
	st.opts = st.opts[:0]
	st.hdr, st.tlr = nil, nil
	unaryPool.Put(st)
}

// newCall starts the retry state machine of one call allowed maxAttempts
// attempts (the policy's, or a call option's), charged to the entry's
// budget.
func (e *entry) newCall(maxAttempts int) retry.Call {
	p := e.pol.retry
	p.MaxAttempts = maxAttempts
	return p.NewCall(e.budget)
}

// fallback runs the policy's Fallback, if any, for a unary call that failed
// with err because the method is unhealthy; otherwise it returns err.
func (e *entry) fallback(ctx context.Context, req, reply any, err error) error {
	if f := e.pol.fallback; f != nil && ctx.Err() == nil {
		return f(ctx, e.method, req, reply, err)
	}
	return err
}

// unary is the unary client interceptor (Suite.Unary).
func (s *Suite) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	e := s.lookup(cc, method)
	if e == nil {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	p, rej := e.admit()
	if rej != nil {
		return e.fallback(ctx, req, reply, rej)
	}
	ov, opts := splitCallOptions(opts)
	maxAttempts := ov.attempts(e.pol.maxAttempts)
	if maxAttempts == 1 {
		return e.unaryOnce(ctx, p, req, reply, cc, invoker, opts)
	}
	st := unaryPool.Get().(*unaryState)
	st.opts = append(append(st.opts[:0], opts...), st.hdrOpt, st.tlrOpt)
	err := e.unaryRetry(ctx, p, st, maxAttempts, req, reply, cc, invoker)
	st.release()
	return err
}

// unaryOnce makes a call that has a single attempt, admitted with p: no
// Header or Trailer options are needed.
func (e *entry) unaryOnce(ctx context.Context, p breaker.Permit, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts []grpc.CallOption) error {
	actx, cancel := e.pol.retry.AttemptContext(ctx)
	err := invoker(actx, e.method, req, reply, cc, opts...)
	cancel()
	o := e.classify(ctx, err)
	p.Done(o)
	if err == nil {
		e.budget.Succeeded(false)
		return nil
	}
	c := e.newCall(1)
	c.Begin()
	d := e.decide(ctx, err, false, nil)
	_, stop := c.Next(ctx, err, d, time.Now())
	c.Done(err, d.Retryable())
	err = e.giveUp(ctx, stop)
	if o == breaker.Failure {
		return e.fallback(ctx, req, reply, err)
	}
	return err
}

// unaryRetry is the retry loop of a unary call whose first attempt was
// admitted with p: per attempt, admit → invoke → classify → record →
// decide, then retry.Call.Next and retry.Wait.
func (e *entry) unaryRetry(ctx context.Context, p breaker.Permit, st *unaryState, maxAttempts int, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker) error {
	var (
		c       retry.Call
		rctx    context.Context // the context of retries (nil before the first)
		lastErr error
	)
	for attempt := 1; ; attempt++ {
		actx := ctx
		if attempt > 1 {
			var rej error
			if p, rej = e.admit(); rej != nil {
				c.Done(lastErr, true)
				err := e.giveUp(ctx, &retry.Error{Err: lastErr, Attempts: c.Attempts(), Reason: retry.BreakerOpen})
				return e.fallback(ctx, req, reply, err)
			}
			c.Begin()
			rctx = e.s.retryContext(ctx, rctx, attempt)
			actx = rctx
		}
		st.hdr, st.tlr = nil, nil
		actx, cancel := e.pol.retry.AttemptContext(actx)
		err := invoker(actx, e.method, req, reply, cc, st.opts...)
		cancel()
		o := e.classify(ctx, err)
		p.Done(o)
		if err == nil {
			if attempt == 1 {
				e.budget.Succeeded(false)
			} else {
				c.Done(nil, false)
			}
			return nil
		}
		// A6 commit: a failure after response headers is never retried
		// (grpc.Header stores nil for a Trailers-Only response).
		d := e.decide(ctx, err, st.hdr != nil, st.tlr)
		if attempt == 1 {
			c = e.newCall(maxAttempts)
			c.Begin()
		}
		delay, stop := c.Next(ctx, err, d, time.Now())
		if stop != nil {
			c.Done(err, d.Retryable())
			err = e.giveUp(ctx, stop)
			if o == breaker.Failure {
				return e.fallback(ctx, req, reply, err)
			}
			return err
		}
		if e.isOpen() {
			// The breaker opened (this attempt may have tripped it): the
			// retry would be rejected, so do not wait for it.
			c.Done(err, true)
			err = e.giveUp(ctx, &retry.Error{Err: err, Attempts: c.Attempts(), Reason: retry.BreakerOpen})
			return e.fallback(ctx, req, reply, err)
		}
		e.retrying(ctx, attempt, delay, err)
		if retry.Wait(ctx, delay) != nil {
			c.Done(err, d.Retryable())
			return e.giveUp(ctx, &retry.Error{Err: err, Attempts: c.Attempts(), Reason: retry.Canceled})
		}
		lastErr = err
	}
}
