package interceptors

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	"github.com/khive/grpc-resilience/breaker"
)

// unaryState is the pooled state of a unary call that may retry: its
// attempts' options, with Header and Trailer options through which grpc
// tells what the latest attempt received (headers: committed, gRFC A6; the
// trailer: the server's pushback). The caller's after-call options
// (isAfterOption) are kept apart and applied once, at the end (finish).
// Pooling relies on the invariant the README's "Chain order" states.
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

// newUnaryState returns a pooled state for the call options opts, of which
// after act after the call.
func newUnaryState(opts []grpc.CallOption, after int) *unaryState {
	st := unaryPool.Get().(*unaryState)
	if after == 0 {
		// Element by element: faster than append(st.opts, opts...) for a
		// few options.
		//lint:ignore S1011 measured faster for the one to three options of a call
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

// unary is the unary client interceptor (Suite.Unary). The first attempt is
// made here and a failure goes on in unaryCall.retry, so the success path
// does only what it needs: lookup, admit, invoke, record, deposit.
func (s *Suite) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	e := s.route(ctx, cc, method, 0)
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
	if e.pol.hedge != nil {
		if r, ok := reply.(proto.Message); ok {
			if n := e.hedges(ctx, ov); n > 1 {
				err, unhealthy := e.hedgeUnary(ctx, req, r, cc, invoker, opts, p, n, ov.after)
				if unhealthy {
					return e.fallback(ctx, req, reply, err)
				}
				return err
			}
		}
		maxAttempts = 1 // not hedged: a single attempt
	}
	var st *unaryState
	attemptOpts := opts
	if maxAttempts > 1 {
		st = newUnaryState(opts, ov.after)
		attemptOpts = st.opts
	}
	o, now, err := e.attempt(ctx, ctx, p, req, reply, cc, invoker, attemptOpts)
	unhealthy := false
	switch {
	case err != nil:
		u := unaryCall{e: e, ctx: ctx, req: req, reply: reply, cc: cc, invoker: invoker, opts: opts, st: st}
		err, unhealthy = u.retry(maxAttempts, p, err, o, now)
	case e.budget != nil:
		e.budget.Succeeded(false) // no retry.Call was needed
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

// unaryCall is what the retries of one unary call need.
type unaryCall struct {
	e          *entry
	ctx        context.Context // the caller's
	req, reply any
	cc         *grpc.ClientConn
	invoker    grpc.UnaryInvoker
	opts       []grpc.CallOption // the caller's, minus the suite's
	st         *unaryState       // nil: a call of one attempt (grpc applies every option once)
}

// attempt makes one attempt of a unary call under ctx (the caller's
// context), admitted with p, under parent (ctx, or a retry's context) and
// the attempt timeout. A success is recorded here (the call's final
// outcome); a failure is classified (o), reads the clock once (now, for the
// breaker and the retry decision), and is recorded by afterFailure. The
// first attempt takes its arguments directly, so that the success path
// builds no unaryCall.
func (e *entry) attempt(ctx, parent context.Context, p breaker.Permit, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts []grpc.CallOption) (o breaker.Outcome, now time.Time, err error) {
	actx, cancel := e.pol.retry.AttemptContext(parent)
	err = invoker(actx, e.method, req, reply, cc, opts...)
	cancel()
	if err == nil {
		p.Done(breaker.Success)
		return breaker.Success, now, nil
	}
	return e.classify(ctx, err), time.Now(), err
}

// retry goes on after the first attempt, admitted with p, failed with err
// (outcome o, at now), until an attempt succeeds or retrying stops.
// unhealthy reports a call that the breaker ended or whose last attempt
// failed with a failure code: it goes to the policy's fallback.
func (u *unaryCall) retry(maxAttempts int, p breaker.Permit, err error, o breaker.Outcome, now time.Time) (_ error, unhealthy bool) {
	e, ctx := u.e, u.ctx
	c := e.newCall(maxAttempts)
	c.Begin()
	cs := callStats{opts: u.opts, target: targetName(u.cc)}
	var spare []retryCtx // the retries' contexts (retryContext)
	for {
		d := e.decide(ctx, err, u.st.committed(), u.st.trailer())
		delay, final, open := e.afterFailure(ctx, &c, &cs, err, d, now, p, o)
		if final != nil {
			return final, open || o == breaker.Failure
		}
		if p, final, open = e.nextAttempt(ctx, &c, &cs, err, d, delay); final != nil {
			return final, open
		}
		u.st.hdr, u.st.tlr, u.st.peer = nil, nil, peer.Peer{} // forget the previous attempt's
		rctx := e.s.retryContext(ctx, c.Attempts(), maxAttempts, &spare)
		if o, now, err = e.attempt(ctx, rctx, p, u.req, u.reply, u.cc, u.invoker, u.st.opts); err == nil {
			c.Done(nil, false)
			e.callEnded(ctx, &cs, c.Attempts())
			return nil, false
		}
	}
}
