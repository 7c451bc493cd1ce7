package interceptors

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/retry"
)

// unaryState is the per-call state of a unary call that may retry: the call
// options of every attempt (the caller's, minus the suite's, followed by
// Header and Trailer options pointing at hdr and tlr), through which grpc
// tells what the latest attempt received. A retry needs it: headers mean the
// attempt was committed (gRFC A6), the trailer carries the server's
// pushback. The options must be given before the first attempt, so every
// call that may retry takes one; it is pooled, so that the success path
// allocates nothing. Pooling relies on the invoker being done with the
// options when it returns, as grpc's is: an inner interceptor that kept
// them for later would write into another call's state.
//
// The caller's options that act after the call (isAfterOption: Header,
// Trailer, Peer, OnFinish) are kept apart in after and applied once, at the
// end of the call, with the final attempt's header, trailer and peer
// (finish); grpc would apply them once per attempt.
type unaryState struct {
	hdr, tlr metadata.MD
	peer     peer.Peer         // the latest attempt's peer, when the caller asked for it
	opts     []grpc.CallOption // opts[:2] are the Header and Trailer options
	after    []grpc.CallOption // the caller's after-call options
	peerOpt  grpc.CallOption   // grpc.Peer(&peer)
}

var unaryPool = sync.Pool{New: func() any {
	st := new(unaryState)
	st.opts = append(make([]grpc.CallOption, 0, 8), grpc.Header(&st.hdr), grpc.Trailer(&st.tlr))
	st.peerOpt = grpc.Peer(&st.peer)
	return st
}}

// newUnaryState returns a pooled state whose opts are the Header and
// Trailer options followed by opts, minus the after-call options if after
// (how many opts holds) is not 0: those go to st.after, and a Peer option
// of the suite's own is added if one of them is a Peer option.
func newUnaryState(opts []grpc.CallOption, after int) *unaryState {
	st := unaryPool.Get().(*unaryState)
	if after == 0 {
		// Element by element: for the one to three options of a typical
		// call this is several times faster than append(st.opts, opts...),
		// which goes through the runtime's typed copy.
		for _, o := range opts {
			st.opts = append(st.opts, o)
		}
		return st
	}
	for _, o := range opts {
		if isAfterOption(o) {
			st.after = append(st.after, o)
		} else {
			st.opts = append(st.opts, o)
		}
	}
	if wantsPeer(st.after) {
		st.opts = append(st.opts, st.peerOpt)
	}
	return st
}

// newAttempt forgets what the previous attempt received.
func (st *unaryState) newAttempt() {
	st.hdr, st.tlr = nil, nil
	st.peer = peer.Peer{}
}

// finish applies the caller's after-call options once, for a call that
// ended with err: the final attempt's header, trailer and peer, then
// OnFinish.
func (st *unaryState) finish(err error) {
	var p *peer.Peer
	if st.peer.Addr != nil {
		p = &st.peer
	}
	applyAfter(st.after, st.hdr, st.tlr, p, err)
}

// release clears the state (it must not keep the caller's options or
// metadata alive) and returns it to the pool.
func (st *unaryState) release() {
	for i := 2; i < len(st.opts); i++ {
		st.opts[i] = nil // a loop, not clear(): see newUnaryState
	}
	st.opts = st.opts[:2]
	if cap(st.opts) > 64 {
		st.opts = append(make([]grpc.CallOption, 0, 8), st.opts...)
	}
	st.hdr, st.tlr = nil, nil
	if st.after != nil {
		clear(st.after)
		st.after = st.after[:0]
		if cap(st.after) > 64 {
			st.after = nil
		}
		st.peer = peer.Peer{} // only a call with after-call options sets it
	}
	unaryPool.Put(st)
}

// committed reports that the latest attempt received response headers (grpc
// stores nil for a Trailers-Only response). A nil state (a call of one
// attempt) knows nothing.
func (st *unaryState) committed() bool { return st != nil && st.hdr != nil }

// trailer returns the latest attempt's trailer (nil for a nil state).
func (st *unaryState) trailer() metadata.MD {
	if st == nil {
		return nil
	}
	return st.tlr
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

// unary is the unary client interceptor (Suite.Unary). The first attempt is
// made here; a failure goes on in unaryRetry, so the success path does only
// what it needs: lookup, admit, invoke, record, deposit.
func (s *Suite) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	e := s.lookup(cc, method)
	if e == nil {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	p, rej := e.admit(ctx)
	if rej != nil {
		e.rejected(ctx, opts, targetName(cc), reasonOfRejection(rej), 1, rej)
		if len(opts) > 0 {
			finishOptions(opts, rej) // no attempt: grpc will not call OnFinish
		}
		return e.fallback(ctx, req, reply, rej)
	}
	ov, opts := splitCallOptions(opts)
	maxAttempts := ov.attempts(e.pol.maxAttempts)
	callOpts := opts
	var st *unaryState // nil: a single attempt, nothing to learn from it (grpc applies every option once)
	if maxAttempts > 1 {
		st = newUnaryState(opts, ov.after)
		opts = st.opts
	}
	o, now, err := e.unaryAttempt(ctx, ctx, p, req, reply, cc, invoker, opts)
	unhealthy := false
	if err == nil {
		e.budget.Succeeded(false) // no retry.Call was needed
	} else {
		err, unhealthy = e.unaryRetry(ctx, st, callOpts, maxAttempts, p, err, o, now, req, reply, cc, invoker)
	}
	if st != nil {
		if len(st.after) > 0 {
			st.finish(err)
		}
		st.release()
	}
	if unhealthy {
		return e.fallback(ctx, req, reply, err)
	}
	return err
}

// unaryAttempt makes one attempt, admitted with p, under actx (ctx, the
// caller's context, for the first attempt; the retry context for the
// others) and the policy's attempt timeout. A successful attempt is
// recorded in the breaker here (the call's final outcome); a failed one is
// classified (o) and recorded after the retry decision (afterFailure). A
// failed attempt reads the clock once, here, for the breaker and for the
// retry decision (now); a successful one reads none.
func (e *entry) unaryAttempt(ctx, actx context.Context, p breaker.Permit, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts []grpc.CallOption) (o breaker.Outcome, now time.Time, err error) {
	actx, cancel := e.pol.retry.AttemptContext(actx)
	err = invoker(actx, e.method, req, reply, cc, opts...)
	cancel()
	if err == nil {
		p.Done(breaker.Success)
		return breaker.Success, now, nil
	}
	return e.classify(ctx, err), time.Now(), err
}

// unaryRetry goes on with a unary call whose first attempt, admitted with
// p, failed with err (breaker outcome o, at now): decide → afterFailure
// (which records the failed attempt) → nextAttempt → attempt,
// until an attempt succeeds or retrying stops. st is the call's state, nil
// for a call of a single attempt (which Next never retries), opts the
// caller's options (for the metrics' grpc.method). unhealthy
// reports a call that ended because the method is unhealthy (the breaker is
// open, or the last attempt failed with a failure code): it goes to the
// policy's fallback.
func (e *entry) unaryRetry(ctx context.Context, st *unaryState, opts []grpc.CallOption, maxAttempts int, p breaker.Permit, err error, o breaker.Outcome, now time.Time, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker) (_ error, unhealthy bool) {
	c := e.newCall(maxAttempts)
	c.Begin()
	cs := callStats{opts: opts, target: targetName(cc)}
	var spare []retryCtx // the retries' contexts (retryContext)
	for {
		d := e.decide(ctx, err, st.committed(), st.trailer())
		delay, final, open := e.afterFailure(ctx, &c, &cs, err, d, now, p, o)
		if final != nil {
			return final, open || o == breaker.Failure
		}
		p, final, open = e.nextAttempt(ctx, &c, &cs, err, d, delay)
		if final != nil {
			return final, open
		}
		rctx := e.s.retryContext(ctx, c.Attempts(), &spare)
		st.newAttempt()
		if o, now, err = e.unaryAttempt(ctx, rctx, p, req, reply, cc, invoker, st.opts); err == nil {
			c.Done(nil, false)
			e.callEnded(ctx, &cs, c.Attempts())
			return nil, false
		}
	}
}
