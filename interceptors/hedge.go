package interceptors

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/retry"
)

// HedgePolicy configures hedging (gRFC A6 hedgingPolicy) of unary and
// server-streaming calls: the suite sends the request up to MaxAttempts
// times, a new attempt (a hedge) every Delay, and keeps the first attempt
// that commits. The zero value means no hedging.
//
// The rules:
//   - the first attempt that commits wins: for a unary call, a response or
//     a status not in NonFatalCodes; for a server stream, headers, a message
//     or its end. Every other attempt is then canceled; the call ends with
//     the winner's result, or with the last attempt's error when every
//     attempt failed with a non-fatal code;
//   - a grpc-retry-pushback-ms trailer on a non-fatal failure delays the
//     next hedge by its value (>= 0) or stops hedging (any other value);
//   - each hedge spends the target's retry budget and is admitted by the
//     breaker as a retry is ([breaker.Breaker.AllowRetry]); a hedge either
//     refuses is not sent, and hedging stops;
//   - each hedge carries the attempt header ([WithAttemptHeader]) and
//     [Attempt] numbers it, as for retries;
//   - each attempt of a unary call decodes into its own new message of the
//     reply's type; the caller's reply receives the winner's only. A reply
//     that is not a proto.Message makes the call a single attempt.
//
// Client-streaming and bidi methods are not hedged: New rejects a hedged
// key naming one, and a call of one under a service or "*" key is a single
// attempt.
type HedgePolicy struct {
	// MaxAttempts is the number of attempts, the first included: 0 means
	// no hedging, otherwise at least 2. Unlike the config loader, it is not
	// capped.
	MaxAttempts int
	// Delay is the time between hedges, at least 0 (0: every attempt at
	// once).
	Delay time.Duration
	// NonFatalCodes are the codes that do not end the call but start the
	// next hedge at once; every other code is fatal (gRFC A6).
	NonFatalCodes []codes.Code
	// RequireIdempotent makes New reject a method key whose proto
	// descriptor (protoregistry.GlobalFiles) does not declare
	// idempotency_level IDEMPOTENT or NO_SIDE_EFFECTS, and makes calls of
	// such methods under a service or "*" key single attempts. Without it
	// such a method is hedged, with one warning per method through the
	// suite's logger.
	RequireIdempotent bool
}

// hedgePolicy is a validated HedgePolicy.
type hedgePolicy struct {
	HedgePolicy
	nonFatal   codeSet
	idempotent sync.Map // method -> methodInfo's idempotent (the first call warns)
}

// resolveHedge validates p.Hedge for pol (under key).
func resolveHedge(key string, p Policy, pol *policy) error {
	h := p.Hedge
	if h.MaxAttempts == 0 && h.Delay == 0 && h.NonFatalCodes == nil && !h.RequireIdempotent {
		return nil
	}
	switch {
	case h.MaxAttempts < 2:
		return policyError(key, fmt.Sprintf("Hedge.MaxAttempts: must be at least 2 (0: no hedging), got %d", h.MaxAttempts), nil)
	case h.Delay < 0:
		return policyError(key, fmt.Sprintf("Hedge.Delay: must be at least 0, got %v", h.Delay), nil)
	case p.Retry.MaxAttempts > 1:
		return policyError(key, fmt.Sprintf("Hedge: a policy hedges or retries, not both (Retry.MaxAttempts is %d; set it to 0 or 1)", p.Retry.MaxAttempts), nil)
	}
	nonFatal, err := codeList(key, "Hedge.NonFatalCodes", h.NonFatalCodes, 0)
	if err != nil {
		return err
	}
	if key != "*" && !strings.HasSuffix(key, "/*") {
		switch stream, idempotent := methodInfo(key); {
		case stream:
			return policyError(key, "Hedge: the method is client-streaming or bidi; only unary and server-streaming methods are hedged", nil)
		case h.RequireIdempotent && !idempotent:
			return policyError(key, "Hedge.RequireIdempotent: the method's proto descriptor does not declare idempotency_level IDEMPOTENT or NO_SIDE_EFFECTS", nil)
		}
	}
	pol.hedge = &hedgePolicy{HedgePolicy: h, nonFatal: nonFatal}
	pol.maxAttempts, pol.retry.MaxAttempts = 1, 1
	return nil
}

// methodInfo reports whether method ("/pkg.Svc/Method") is client-streaming
// (or bidi) and whether it is declared idempotent (IDEMPOTENT or
// NO_SIDE_EFFECTS), as its descriptor in protoregistry.GlobalFiles says.
func methodInfo(method string) (stream, idempotent bool) {
	name := strings.ReplaceAll(strings.TrimPrefix(method, "/"), "/", ".")
	d, _ := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name))
	md, ok := d.(protoreflect.MethodDescriptor)
	if !ok {
		return false, false
	}
	o, _ := md.Options().(*descriptorpb.MethodOptions)
	level := o.GetIdempotencyLevel()
	return md.IsStreamingClient(), level == descriptorpb.MethodOptions_IDEMPOTENT || level == descriptorpb.MethodOptions_NO_SIDE_EFFECTS
}

// hedges returns the number of attempts a call of e may hedge with (0: a
// single attempt): the policy's, or a MaxAttempts call option's, unless
// [HedgePolicy.RequireIdempotent] excludes the method.
func (e *entry) hedges(ctx context.Context, ov overrides) int {
	h := e.pol.hedge
	n := ov.attempts(h.MaxAttempts)
	if n < 2 {
		return 0
	}
	v, ok := h.idempotent.Load(e.method)
	if !ok {
		_, idempotent := methodInfo(e.method)
		if v, ok = h.idempotent.LoadOrStore(e.method, idempotent); !ok && !idempotent && !h.RequireIdempotent {
			if l := e.s.o.logger; l != nil {
				l.Log(ctx, logging.LevelWarn, "hedging a method not declared idempotent",
					"grpc.method", e.method, "policy", e.pol.key)
			}
		}
	}
	if h.RequireIdempotent && !v.(bool) {
		return 0
	}
	return n
}

// hedgeAttempt is one attempt of a hedged call.
type hedgeAttempt struct {
	permit   breaker.Permit
	ctx      context.Context
	cancel   context.CancelFunc
	opts     []grpc.CallOption
	hdr, tlr metadata.MD
	peer     peer.Peer
	reply    proto.Message     // a unary call's own reply
	cs       grpc.ClientStream // a server stream's
	end      error             // a server stream that ended before headers: its end (io.EOF: OK)
	err      error             // the attempt's result: nil if it committed
}

// hedger races the attempts of one hedged call.
type hedger struct {
	e     *entry
	ctx   context.Context   // the caller's
	n     int               // attempts allowed
	after []grpc.CallOption // the caller's after-call options, applied once (end)
	cs    callStats         // cs.opts: every attempt's options
	spare []retryCtx
	atts  []*hedgeAttempt
	res   chan *hedgeAttempt // attempts that ended
}

// newHedger returns the hedger of a call with opts, of which after act after
// the call.
func newHedger(e *entry, ctx context.Context, n int, opts []grpc.CallOption, after int, target string) *hedger {
	h := &hedger{e: e, ctx: ctx, n: n, cs: callStats{opts: opts, target: target, hedged: true},
		res: make(chan *hedgeAttempt, n)}
	if after > 0 {
		h.after, h.cs.opts = splitAfter(opts, after)
	}
	return h
}

// end releases the attempts and applies the caller's after-call options
// with win's header, trailer and peer (a stream's from its stream).
func (h *hedger) end(win *hedgeAttempt, err error) {
	for _, a := range h.atts {
		a.cancel()
	}
	if len(h.after) == 0 {
		return
	}
	var hdr, tlr metadata.MD
	var pr *peer.Peer
	if win != nil {
		hdr, tlr = win.hdr, win.tlr
		if win.cs != nil {
			hdr, _ = win.cs.Header()
			tlr = win.cs.Trailer()
		}
		if win.peer.Addr != nil {
			pr = &win.peer
		}
	}
	applyAfter(h.after, hdr, tlr, pr, err)
}

// start starts attempt len(h.atts)+1, admitted with p, running run.
func (h *hedger) start(p breaker.Permit, reply proto.Message, run func(*hedgeAttempt) error) {
	a := &hedgeAttempt{permit: p}
	actx, cancel := h.e.s.retryContext(h.ctx, len(h.atts)+1, h.n, &h.spare), context.CancelFunc(func() {})
	if reply != nil { // a unary call's: its own reply, and AttemptTimeout (a stream's winner lives on)
		a.reply = reply.ProtoReflect().New().Interface()
		actx, cancel = h.e.pol.retry.AttemptContext(actx)
	}
	actx, stop := context.WithCancel(actx)
	a.ctx, a.cancel = actx, func() { stop(); cancel() }
	a.opts = append(append(make([]grpc.CallOption, 0, len(h.cs.opts)+3), h.cs.opts...), grpc.Header(&a.hdr), grpc.Trailer(&a.tlr))
	if wantsPeer(h.after) {
		a.opts = append(a.opts, grpc.Peer(&a.peer))
	}
	h.atts = append(h.atts, a)
	go func() { a.err = run(a); h.res <- a }()
}

// race runs the call's attempts, the first admitted with p, until one
// commits (run returns nil) or fails fatally, or every attempt failed. It
// cancels and waits for every other attempt, and returns the attempt whose
// result is the call's (nil if none is) and the caller's error; unhealthy
// as for unaryCall.retry.
func (h *hedger) race(p breaker.Permit, reply proto.Message, run func(*hedgeAttempt) error) (win *hedgeAttempt, err error, unhealthy bool) {
	e, ctx, pol := h.e, h.ctx, h.e.pol.hedge
	h.start(p, reply, run)
	inflight, hedging := 1, true
	timer := time.NewTimer(pol.Delay)
	defer timer.Stop()
	var last *hedgeAttempt // the latest that failed
	var reason retry.Reason
	var idleSince time.Time
	for win == nil {
		hedging = hedging && len(h.atts) < h.n && ctx.Err() == nil
		if inflight == 0 && !hedging {
			break
		}
		var tc <-chan time.Time
		if hedging {
			tc = timer.C
		}
		var done <-chan struct{}
		if inflight == 0 {
			done = ctx.Done()
		}
		select {
		case <-done:
			hedging, reason = false, retry.Canceled
		case now := <-tc:
			if !idleSince.IsZero() {
				h.cs.waited += now.Sub(idleSince)
				idleSince = time.Time{}
			}
			if e.budget != nil && !e.budget.AllowAt(now) {
				hedging, reason = false, retry.BudgetExhausted
				continue
			}
			hp, rej := e.admitRetry()
			if rej != nil {
				hedging, reason = false, BreakerOpen
				continue
			}
			h.start(hp, reply, run)
			inflight++
			timer.Reset(pol.Delay)
		case a := <-h.res:
			inflight--
			if a.err == nil {
				win = a
				a.permit.Done(breaker.Success)
				break
			}
			now, o := time.Now(), e.classify(ctx, a.err)
			last = a
			if !pol.nonFatal.has(codeOf(statusOf(a.err))) || ctx.Err() != nil {
				win, reason = a, retry.NotRetryable
				a.permit.DoneAt(o, now)
				break
			}
			// Non-fatal: the next hedge at once, or after the pushback.
			reason = retry.Exhausted
			delay := time.Duration(0)
			if vals := a.tlr[pushbackKey]; len(vals) > 0 {
				ms, ok := pushback(vals)
				if !ok {
					hedging, reason = false, retry.NotRetryable
				}
				delay = msDuration(ms)
			}
			if inflight > 0 || hedging && len(h.atts) < h.n && ctx.Err() == nil {
				a.permit.RetryAt(o, now)
			} else {
				a.permit.DoneAt(o, now) // the call's last attempt
			}
			if e.budget != nil {
				e.budget.FailedAt(now)
			}
			timer.Reset(delay)
			if inflight == 0 {
				idleSince = now
			}
		}
	}
	// Cancel the others and wait for them: none outlives the call.
	for _, a := range h.atts {
		if a != win {
			a.cancel()
		}
	}
	for ; inflight > 0; inflight-- {
		a := <-h.res
		a.permit.RetryAt(e.classify(ctx, a.err), time.Now())
		if a.cs != nil && a.err == nil {
			_, _ = drain(a.cs) // canceled: its end comes at once
		}
	}
	attempts := len(h.atts)
	if win != nil && win.err == nil { // committed
		if e.budget != nil {
			e.budget.Succeeded(attempts > 1)
		}
		e.callEnded(ctx, &h.cs, attempts)
		return win, nil, false
	}
	if e.budget != nil && reason == retry.NotRetryable {
		e.budget.NotRetryable()
	}
	if ctx.Err() != nil {
		reason = retry.Canceled
	}
	err = e.giveUp(ctx, &h.cs, &retry.Error{Err: last.err, Attempts: attempts, Reason: reason})
	return last, err, e.classify(ctx, last.err) == breaker.Failure
}

// hedgeUnary runs a hedged unary call, its first attempt admitted with p,
// with n attempts at most, after of opts acting after the call. (Not a
// method of unaryCall: that would move the success path's unaryCall to the
// heap.)
func (e *entry) hedgeUnary(ctx context.Context, req any, reply proto.Message, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts []grpc.CallOption, p breaker.Permit, n, after int) (error, bool) {
	h := newHedger(e, ctx, n, opts, after, targetName(cc))
	win, err, unhealthy := h.race(p, reply, func(a *hedgeAttempt) error {
		return invoker(a.ctx, e.method, req, a.reply, cc, a.opts...)
	})
	if err == nil {
		proto.Reset(reply)
		proto.Merge(reply, win.reply)
	}
	h.end(win, err)
	return err, unhealthy
}

// hedgeStream is the grpc.ClientStream of a hedged server stream: SendMsg
// keeps the request, CloseSend (or the first RecvMsg or Header) races the
// attempts, and every method then goes to the winner.
type hedgeStream struct {
	h        *hedger
	p        breaker.Permit
	desc     *grpc.StreamDesc
	cc       *grpc.ClientConn
	streamer grpc.Streamer

	mu     sync.Mutex
	req    any
	once   sync.Once
	win    *hedgeAttempt
	err    error // the race's error, or the winner's end
	report sync.Once
}

func newHedgeStream(e *entry, ctx context.Context, p breaker.Permit, n int, desc *grpc.StreamDesc, cc *grpc.ClientConn, streamer grpc.Streamer, opts []grpc.CallOption, after int) *hedgeStream {
	h := newHedger(e, ctx, n, opts, after, targetName(cc))
	return &hedgeStream{h: h, p: p, desc: desc, cc: cc, streamer: streamer}
}

// SendMsg keeps the request (a copy of a proto.Message) for every attempt.
func (s *hedgeStream) SendMsg(m any) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.req != nil || s.win != nil || s.err != nil {
		return errors.New("interceptors: a hedged server stream sends one message")
	}
	if pm, ok := m.(proto.Message); ok {
		m = proto.Clone(pm)
	}
	s.req = m
	return nil
}

// CloseSend races the attempts until one commits (the first call only).
func (s *hedgeStream) CloseSend() error {
	s.once.Do(func() {
		s.mu.Lock()
		req := s.req
		s.mu.Unlock()
		win, err, _ := s.h.race(s.p, nil, func(a *hedgeAttempt) error {
			cs, err := s.streamer(a.ctx, s.desc, s.cc, s.h.e.method, a.opts...)
			if err != nil {
				return err
			}
			a.cs = cs
			if req != nil {
				if err := cs.SendMsg(req); err != nil && err != io.EOF {
					return err
				}
			}
			if err := cs.CloseSend(); err != nil {
				return err
			}
			if headers, end := drain(cs); !headers {
				if end != io.EOF {
					return end
				}
				a.end = io.EOF // ended OK without headers: committed
			}
			return nil
		})
		s.mu.Lock()
		s.win, s.err = win, err
		if err == nil {
			s.err = win.end
		}
		s.mu.Unlock()
		if err != nil {
			s.finish(err)
		}
	})
	return nil
}

// finish ends the call (hedger.end) once, with err.
func (s *hedgeStream) finish(err error) { s.report.Do(func() { s.h.end(s.win, err) }) }

// winner runs the race (CloseSend) if needed and returns its winner's
// stream, or the stream's end.
func (s *hedgeStream) winner() (grpc.ClientStream, error) {
	_ = s.CloseSend()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, s.err
	}
	return s.win.cs, nil
}

// RecvMsg receives from the winner.
func (s *hedgeStream) RecvMsg(m any) error {
	cs, err := s.winner()
	if err == nil {
		if err = cs.RecvMsg(m); err == nil {
			return nil
		}
	}
	s.finish(err)
	return err
}

// Header returns the winner's headers.
func (s *hedgeStream) Header() (metadata.MD, error) {
	cs, err := s.winner()
	if err != nil {
		if err == io.EOF {
			return nil, nil
		}
		return nil, err
	}
	return cs.Header()
}

// Trailer returns the winner's trailer (after RecvMsg ended).
func (s *hedgeStream) Trailer() metadata.MD {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.win == nil {
		return nil
	}
	if s.win.cs != nil {
		return s.win.cs.Trailer()
	}
	return s.win.tlr
}

// Context returns the winner's context, or the caller's before the race.
func (s *hedgeStream) Context() context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.win != nil && s.win.cs != nil {
		return s.win.cs.Context()
	}
	return s.h.ctx
}
