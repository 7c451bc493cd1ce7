package interceptors

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/retry"
)

// Stream returns the stream client interceptor of the suite. It serves the
// three streaming kinds (server-, client- and bidi-streaming) with the same
// per-attempt step as Unary: every attempt passes the method's breaker,
// every failed attempt is classified and decided on, and retry.Call applies
// MaxAttempts, the retry budget and the deadline. A method without a policy
// passes through untouched.
//
// # Commit
//
// A stream is retried only until it commits (gRFC A6). It commits when
//
//   - a response message arrives, or the attempt turns out to have received
//     response headers (a failure after headers is never retried, even if
//     no message came: the server may have acted on the request);
//   - the caller calls Header (once headers arrive), Trailer or Context;
//   - the messages sent so far exceed the replay buffer (WithReplayBuffer,
//     256 KiB by default; a grpc.MaxRetryRPCBufferSize call option wins).
//     A message counts its encoded size (at least one byte); a message
//     that is not a protobuf message cannot be kept and commits the stream.
//
// Before the commit, the stream keeps every sent message as it was sent:
// its encoding, taken in SendMsg, so a caller may reuse one message value
// for every send (the replay decodes a new message from it, once per
// replayed message). When an attempt
// fails before committing and the failure is retryable, the stream opens a
// new attempt and replays the messages in order, then CloseSend if the
// caller had called it, and carries on: the caller sees neither the failed
// attempt nor a duplicate. A server stream therefore resends its request
// only until the first response header or message. After the commit the
// buffer is dropped and the stream is a thin wrapper.
//
// Context commits, as the grpc.ClientStream contract says ("Once called,
// subsequent client-side retries are disabled") and as grpc-go's own retry
// does: the context it returns is the current attempt's (it carries the
// attempt's peer and ends with it), so it must not change afterwards. gRFC
// A6 does not require this; code that wants retries should call Context
// only after Header or RecvMsg, as the contract asks.
//
// # Attempt timeout
//
// Retry.AttemptTimeout bounds each attempt until it commits, not the whole
// stream: a long-lived stream is not cut once it is answering. The time
// counts from the attempt's start, so for client and bidi streams it
// includes the caller's own sending up to the first response (as a unary
// attempt includes its request); give slow uploads a policy without it.
// An attempt that has not committed within AttemptTimeout is cancelled and
// fails with DEADLINE_EXCEEDED (a failure for the breaker; retried only if
// the policy lists DEADLINE_EXCEEDED); one that had already failed by then
// keeps its own status. The server is not told about it (no grpc-timeout
// from it), and it never extends the caller's deadline: when the caller's
// deadline comes first the timer is not armed. Response headers stop the
// timer too: while it is armed, one goroutine per attempt waits for the
// attempt's headers (ClientStream.Header) and disarms it when they arrive,
// so a healthy stream that answered with headers and has no message to
// send yet (a watch) is not cut. A failure after headers is not retried.
//
// # Outcomes
//
// Each attempt's outcome is recorded in the breaker once. An attempt that
// answers (its first response message, or its response headers: seen by
// Header, at its end, or, while its AttemptTimeout is armed or it is a
// half-open probe, as soon as they arrive) commits the stream and is a
// success at that moment; the end of a committed stream records nothing
// more, so a healthy long-lived stream cut later (a server restart) never
// counts against the breaker, and a half-open breaker gets its verdict
// without waiting for the stream's end. An attempt that ends without
// answering is recorded at its end, after the retry decision, as for unary
// calls: io.EOF (or a client-streaming response) is a success, a failure
// is classified (Permit.RetryAt when the stream retries, Permit.DoneAt when
// it stops), a stream the caller canceled is ignored, and so is an error
// SendMsg generated locally (such as a message too large). When the
// caller's context ends while an attempt holds a half-open probe, that
// attempt is recorded as ignored at once (what a cancelled end counts as),
// so the breaker gets its probe back even if nobody reads the stream's end.
// The first attempt is admitted as a unary call's (it may wait for a
// half-open verdict, or be throttled: the stream is then not created),
// later attempts with Breaker.AllowRetry.
//
// # Concurrency
//
// SendMsg, RecvMsg and Header may run concurrently (bidi streaming). The
// stream starts no goroutine of its own, except the header watch of an
// attempt whose AttemptTimeout timer is armed (see above), and callbacks
// run elsewhere: the caller's-context callback (the abandoned probe, the
// waiters' wake-up) on context.AfterFunc's goroutine, and the attempt
// timer's cancellation on time.AfterFunc's. The retry runs on the
// goroutine that observes the failure (RecvMsg's, or SendMsg's or Header's
// when no RecvMsg is in progress: it then reads the attempt's status
// itself), and so do
// the OnRetry and OnGiveUp hooks, which must not call the stream; the
// other callers wait for the new attempt, or until the caller's context
// ends, whichever comes first (they then return as for an ended stream:
// SendMsg io.EOF, RecvMsg the context's status). If a hook, the logger or
// an inner interceptor panics during a retry, the stream ends with the last
// attempt's error before the panic goes on, on the goroutine that ran it:
// no other caller is left waiting. The replay runs while no receive
// is in progress, as grpc-go's own retry, so a bidi server that echoes more
// than the flow-control windows hold (about 64 KiB each way) before the
// replay ends can stall it until the deadline; keep the replay buffer
// below that for such servers.
func (s *Suite) Stream() grpc.StreamClientInterceptor { return s.stream }

// stream is the stream client interceptor (Suite.Stream).
func (s *Suite) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	e := s.lookup(cc, method)
	if e == nil {
		return streamer(ctx, desc, cc, method, opts...)
	}
	ov, opts := splitCallOptions(opts)
	p, rej := e.admit(ctx)
	if rej != nil {
		e.rejected(ctx, opts, targetName(cc), reasonOfRejection(rej), 1, rej)
		if len(opts) > 0 {
			finishOptions(opts, rej) // no attempt: grpc will not call OnFinish
		}
		return nil, rej
	}
	maxAttempts := ov.attempts(e.pol.maxAttempts)
	var after []grpc.CallOption
	if ov.after > 0 && maxAttempts > 1 {
		after, opts = splitAfter(opts, ov.after)
	}
	r := &retryStream{
		e:        e,
		ctx:      ctx,
		desc:     desc,
		cc:       cc,
		streamer: streamer,
		opts:     opts,
		after:    after,
		limit:    ov.replay(s.o.replayBytes),
		nobuf:    maxAttempts == 1,
		call:     e.newCall(maxAttempts),
		stats:    callStats{opts: opts, target: targetName(cc)},
	}
	r.cond.L = &r.mu
	r.buf = r.one[:0]
	a := &r.first
	a.permit, a.probe = p, e.brk.State() == breaker.HalfOpen
	r.cur = a
	r.call.Begin()
	if after != nil {
		r.watchLocked() // see ctxDone
	}
	cs, err := streamer(r.attemptContext(a, 1), desc, cc, method, r.attemptOpts(a)...)
	if err != nil {
		// Nobody else sees r yet: resolve the failure as the receiver would.
		if err := r.end(a, err); err != nil {
			return nil, err
		}
	} else {
		a.cs = cs
		r.watchHeaders(a)
	}
	r.watch()
	return r, nil
}

// errAttemptTimeout is the cancellation cause of a stream attempt whose
// AttemptTimeout elapsed before it committed.
var errAttemptTimeout = errors.New("interceptors: stream attempt timeout")

// errAttemptTimedOut is the error such an attempt counts as.
var errAttemptTimedOut = status.Error(codes.DeadlineExceeded, "interceptors: stream attempt timed out before it committed (Retry.AttemptTimeout)")

// attempt is one attempt of a retrying stream.
type attempt struct {
	cs       grpc.ClientStream // nil if opening the stream failed
	permit   breaker.Permit
	ctx      context.Context         // with an AttemptTimeout timer: the attempt's context
	cancel   context.CancelCauseFunc // and its cancel
	timer    *time.Timer
	recorded bool // the permit was recorded (or is about to be)
	probe    bool // admitted while the breaker was half-open: likely a probe
	finished bool // grpc finished the attempt's stream (only noted when the caller has after-call options); guarded by the stream's mu
}

// claim reports whether the caller is the one to record a's outcome (once
// per permit). Called with the stream's mu held.
func (a *attempt) claim() bool {
	if a.recorded {
		return false
	}
	a.recorded = true
	return true
}

// stopTimer disarms the AttemptTimeout timer: the attempt committed.
func (a *attempt) stopTimer() {
	if a.timer != nil {
		a.timer.Stop()
	}
}

// release frees the attempt's context once its stream is over.
func (a *attempt) release() {
	a.stopTimer()
	if a.cancel != nil {
		a.cancel(nil)
	}
}

// timedOut reports whether AttemptTimeout cancelled the attempt.
func (a *attempt) timedOut() bool {
	return a.ctx != nil && context.Cause(a.ctx) == errAttemptTimeout
}

// retryStream is the grpc.ClientStream of a stream that has a policy: the
// current attempt's stream, replaced by a new attempt with the buffered
// messages replayed when an attempt fails before the stream commits.
//
// Locking: mu guards every field below it. No inner stream method is called
// with mu held. Two flags coordinate the callers through mu and cond:
//
//   - the receive token (recvBusy) is held by whoever calls the current
//     attempt's RecvMsg: RecvMsg, or SendMsg or Header when they find the
//     attempt over and nobody receiving (they then read its status);
//   - the token holder that finds the attempt failed sets resolving while
//     it decides, waits, opens the next attempt and replays; everyone else
//     waits for resolving to clear, and nobody commits or buffers meanwhile.
//
// The sender buffers a message in the same critical section in which it
// checks that no resolution is in progress, before sending it: a message is
// therefore either sent on an attempt that is replaced later, and then in
// the replay's snapshot of the buffer, or sent after the replay, on the new
// attempt; never both, never neither. The same holds for CloseSend.
//
// A swap happens only while the stream is uncommitted and only after the
// old attempt's stream is over, so the old attempt's pending calls (a send
// still in flight on it) return promptly and harmlessly.
type retryStream struct {
	e        *entry
	ctx      context.Context // the caller's
	desc     *grpc.StreamDesc
	cc       *grpc.ClientConn
	streamer grpc.Streamer
	opts     []grpc.CallOption
	limit    int  // replay-buffer bytes
	nobuf    bool // a single attempt: nothing to replay, nothing to buffer
	// after holds the caller's after-call options (Header, Trailer, Peer,
	// OnFinish), kept out of the attempts' options and applied once, when
	// the stream ends (reportFinish), or nil.
	after []grpc.CallOption

	spare   []retryCtx  // the retries' contexts (retryContext)
	unwatch func() bool // stops the abandonment callback (see watch); guarded by mu once r is shared
	first   attempt     // the first attempt, allocated with the stream
	one     [1]sentMsg  // the first buffered message's slot (a server stream's request)
	// call is the retry state machine. While resolving is set only the
	// resolving goroutine touches it, without mu (the shared step,
	// afterFailure and nextAttempt); otherwise it is used with mu held
	// (finishAtLocked).
	call retry.Call
	// stats is the call's metrics state; touched as call is.
	stats callStats

	mu        sync.Mutex
	cond      sync.Cond // on mu: broadcast when recvBusy or resolving clears, or final is set
	cur       *attempt  // the current attempt (after a failure: the last one)
	committed bool
	buf       []sentMsg // sent messages, while uncommitted: their types, their encodings in raw
	raw       []byte    // the encodings of buf, back to back
	bufSize   int
	closeSent bool
	recvBusy  bool
	resolving bool
	final     error // once set, the stream is over, RecvMsg returns it, and recvBusy no longer matters
	reported  bool  // the after-call options were applied
}

// attemptOpts returns the call options of attempt a: the caller's, and,
// when the caller gave after-call options, an OnFinish of the suite's that
// tells when grpc finished a's stream (attemptFinished).
func (r *retryStream) attemptOpts(a *attempt) []grpc.CallOption {
	if r.after == nil {
		return r.opts
	}
	return append(r.opts[:len(r.opts):len(r.opts)], grpc.OnFinish(func(err error) { r.attemptFinished(a, err) }))
}

// reportFinish applies the caller's after-call options once the stream has
// ended (final is set), once, with the final attempt's header, trailer and
// peer and the stream's final error. Called without mu.
func (r *retryStream) reportFinish() {
	if r.after == nil {
		return
	}
	r.mu.Lock()
	if r.reported || r.final == nil {
		r.mu.Unlock()
		return
	}
	r.reported = true
	a, err := r.cur, r.final
	r.mu.Unlock()
	r.applyAfter(a, err)
}

// attemptFinished runs when grpc finished attempt a's stream with err. If
// the caller's context has ended, nobody may ever read the stream's end and
// no retry can follow: the stream ends here for the after-call options.
// Otherwise the end is decided when it is read (reportFinish).
func (r *retryStream) attemptFinished(a *attempt, err error) {
	r.mu.Lock()
	a.finished = true
	now := r.final == nil && !r.reported && !r.resolving && r.cur == a && r.ctx.Err() != nil
	if now {
		r.reported = true
	}
	r.mu.Unlock()
	if now {
		r.applyAfter(a, err)
	}
}

// applyAfter applies the caller's after-call options for a stream that
// ended at attempt a with err.
func (r *retryStream) applyAfter(a *attempt, err error) {
	var hdr, tlr metadata.MD
	var p *peer.Peer
	if a.cs != nil { // a is over: these do not block
		hdr, _ = a.cs.Header()
		tlr = a.cs.Trailer()
		if wantsPeer(r.after) {
			p, _ = peer.FromContext(a.cs.Context())
		}
	}
	applyAfter(r.after, hdr, tlr, p, err)
}

// splitAfter returns the after-call options among opts (n of them) and
// the others, in a new slice.
func splitAfter(opts []grpc.CallOption, n int) (after, rest []grpc.CallOption) {
	after = make([]grpc.CallOption, 0, n)
	rest = make([]grpc.CallOption, 0, len(opts)-n+1) // +1: attemptOpts appends one
	for _, o := range opts {
		if isAfterOption(o) {
			after = append(after, o)
		} else {
			rest = append(rest, o)
		}
	}
	return after, rest
}

// attemptContext returns the context of attempt n (1-based) of the stream:
// the caller's context, with the attempt header on retries, and cancelled
// by AttemptTimeout unless the attempt commits first.
func (r *retryStream) attemptContext(a *attempt, n int) context.Context {
	ctx := r.ctx
	if n > 1 {
		ctx = r.e.s.retryContext(r.ctx, n, &r.spare)
	}
	t := r.e.pol.retry.AttemptTimeout
	if t <= 0 {
		return ctx
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= t {
		return ctx // the caller's deadline comes first
	}
	actx, cancel := context.WithCancelCause(ctx)
	a.ctx, a.cancel = actx, cancel
	a.timer = time.AfterFunc(t, func() { cancel(errAttemptTimeout) })
	return actx
}

// watchHeaders, when a's AttemptTimeout timer is armed or a is likely a
// half-open probe, starts a goroutine that waits for a's response headers
// (or for a's end, which comes at the latest when the timer cancels a or
// the stream ends): when they arrive, the server is answering, so it
// disarms the timer and records a as a success (answered), without waiting
// for a message or for the caller to call Header: a half-open breaker gets
// its verdict from a watch stream that has nothing to say yet.
func (r *retryStream) watchHeaders(a *attempt) {
	if a.timer == nil && !a.probe {
		return
	}
	go func() {
		if md, _ := a.cs.Header(); md != nil {
			a.stopTimer()
			r.answered(a)
		}
	}()
}

// commitLocked commits the stream: no more retries, no more buffering.
func (r *retryStream) commitLocked() {
	if r.committed {
		return
	}
	r.committed = true
	r.dropBufferLocked()
	r.cur.stopTimer()
}

// sentMsg is a message kept for replay: what was sent, not a reference to
// the caller's message (which the caller may reuse for the next send), as
// the message's type and its encoding, raw[start:end] of the stream.
type sentMsg struct {
	typ        protoreflect.MessageType
	start, end int
}

// bufferLocked keeps m for replay, encoded as it is now, or commits the
// stream if the buffer would exceed its limit. A message counts its encoded
// size, at least 1 so that empty messages are bounded too; a message that
// is not a protobuf message cannot be kept and commits the stream.
func (r *retryStream) bufferLocked(m any) {
	pm := protoOf(m)
	if pm == nil {
		r.commitLocked()
		return
	}
	n := proto.Size(pm)
	if r.bufSize+max(n, 1) > r.limit {
		r.commitLocked()
		return
	}
	start := len(r.raw)
	raw, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(r.raw, pm)
	if err != nil {
		r.commitLocked() // SendMsg will report the error
		return
	}
	r.raw = raw
	r.buf = append(r.buf, sentMsg{typ: pm.ProtoReflect().Type(), start: start, end: len(raw)})
	r.bufSize += max(n, 1)
}

// protoOf returns m as a protobuf message, or nil.
func protoOf(m any) proto.Message {
	switch m := m.(type) {
	case proto.Message:
		return m
	case protoadapt.MessageV1:
		return protoadapt.MessageV2Of(m)
	}
	return nil
}

// dropBufferLocked drops the replay buffer.
func (r *retryStream) dropBufferLocked() {
	clear(r.buf)
	r.buf, r.raw, r.bufSize = nil, nil, 0
}

// message returns a new message equal to what m was when it was sent.
func (r *retryStream) message(raw []byte, m sentMsg) (any, error) {
	msg := m.typ.New().Interface()
	if err := proto.Unmarshal(raw[m.start:m.end], msg); err != nil {
		return nil, status.Errorf(codes.Internal, "interceptors: replaying a sent message: %v", err)
	}
	return msg, nil
}

// finishLocked ends the stream with err (io.EOF: success).
func (r *retryStream) finishLocked(err error) {
	r.final = err
	r.resolving = false
	r.dropBufferLocked()
	r.cur.release()
	if r.unwatch != nil {
		r.unwatch()
	}
	r.cond.Broadcast()
}

// finish is finishLocked for a caller not holding mu; it returns err.
func (r *retryStream) finish(err error) error {
	r.mu.Lock()
	r.finishLocked(err)
	r.mu.Unlock()
	r.reportFinish()
	return err
}

// finishAtLocked ends the stream at attempt a, without a retry: with err
// (io.EOF: success) for the caller and the budget, and with o for a's
// permit. Called with mu held; releases it.
func (r *retryStream) finishAtLocked(a *attempt, err error, o breaker.Outcome) {
	r.cur = a
	rec := a.claim()
	if err == io.EOF {
		r.call.Done(nil, false)
	} else {
		r.call.Done(err, false)
	}
	r.finishLocked(err)
	r.mu.Unlock()
	if rec {
		a.permit.Done(o)
	}
	r.e.callEnded(r.ctx, &r.stats, r.call.Attempts())
	r.reportFinish()
}

// watch arranges for ctxDone to run if the caller's context ends while
// the current attempt holds a half-open probe permit: a probe nobody reports
// would keep its slot until the breaker reclaims it. Other permits hold
// nothing, so the common case costs no allocation. Called with mu held (or
// before r is shared).
func (r *retryStream) watch() {
	if r.e.brk.State() == breaker.HalfOpen {
		r.watchLocked()
	}
}

// watchLocked arranges for ctxDone to run when the caller's context ends
// (once per stream; a context that never ends needs nothing). Called with
// mu held (or before r is shared).
func (r *retryStream) watchLocked() {
	if r.unwatch == nil && r.final == nil && r.ctx.Done() != nil {
		r.unwatch = context.AfterFunc(r.ctx, r.ctxDone)
	}
}

// ctxDone runs when the caller's context ends. It wakes every caller
// waiting for a retry in progress (waitLocked: they return at once, even if
// the retry is stuck in a hook), and, since nobody may ever read the current
// attempt's end, records that attempt as ignored now (what classify says of
// an attempt whose caller's context is done): a half-open breaker gets its
// probe back at once. A RecvMsg that reads the end later records nothing
// more. An attempt that a retry in progress opens is covered when it is
// installed (see install).
func (r *retryStream) ctxDone() {
	r.mu.Lock()
	a := r.cur
	rec := r.final == nil && a.claim()
	// An attempt grpc finished before the context ended, whose end nobody
	// read: the stream ends now for the after-call options.
	report := r.after != nil && r.final == nil && !r.reported && !r.resolving && a.finished
	if report {
		r.reported = true
	}
	r.cond.Broadcast()
	r.mu.Unlock()
	if rec {
		a.permit.Done(breaker.Ignored)
	}
	if report {
		r.applyAfter(a, r.ctxErr())
	}
}

// waitLocked waits for cond (a retry in progress, or the receive token), or
// for the caller's context to end; it returns false, without waiting, once
// the context has ended. Every wait of the stream goes through it, so no
// caller of the stream blocks past its context, whatever the goroutine
// resolving a retry is stuck in. Called with mu held.
func (r *retryStream) waitLocked() bool {
	r.watchLocked()
	if r.ctx.Err() != nil {
		return false
	}
	r.cond.Wait()
	return true
}

// ctxErr is the status error of the caller's ended context, for a caller
// that stopped waiting (waitLocked).
func (r *retryStream) ctxErr() error {
	return status.FromContextError(r.ctx.Err()).Err()
}

// end resolves the end of attempt a, the current one, which ended with err
// (io.EOF: success). The caller holds the receive token, not mu. end
// returns nil when a new attempt replaced a (the caller then retries its
// operation on r.cur), or the stream's final error, which RecvMsg returns
// from then on.
func (r *retryStream) end(a *attempt, err error) (final error) {
	// While resolving is set, everyone else waits for this goroutine, which
	// runs user code: the OnRetry and OnGiveUp hooks, the logger, inner
	// interceptors (the streamer, the replay's sends). If any of it panics,
	// end the stream before the panic goes on, so that nobody waits for a
	// resolution that will never come.
	var b *attempt // the attempt being opened and replayed, until installed
	resolved := false
	defer func() {
		if !resolved {
			r.abort(a, b, err)
		}
	}()
	for {
		b = nil
		r.mu.Lock()
		if r.final != nil {
			f := r.final
			r.mu.Unlock()
			resolved = true
			return f
		}
		if err == io.EOF {
			r.finishAtLocked(a, io.EOF, breaker.Success)
			resolved = true
			return io.EOF
		}
		// a may be a new attempt that ended before it was installed.
		r.cur = a
		committed := r.committed // stays as it is while resolving
		r.resolving = true
		rec := a.claim()
		r.mu.Unlock()

		var tlr metadata.MD
		answered := false // a received response headers: the server answered
		if a.cs != nil && (rec || !committed) {
			// A failure after response headers is committed (A6). Header
			// does not block: a's stream is over.
			md, _ := a.cs.Header()
			answered = md != nil
			committed = committed || answered
			if !committed {
				tlr = a.cs.Trailer()
			}
		}
		if a.timedOut() && statusOf(err).Code() == codes.Canceled && r.ctx.Err() == nil {
			// Our timer cancelled a (an attempt that had already failed
			// keeps its own status).
			err = errAttemptTimedOut
		}
		now := time.Now() // one clock read for the breaker and the retry decision
		// The attempt's outcome, recorded by afterFailure once the decision
		// is made; nothing if it was recorded already (at its commit, or
		// as abandoned). An attempt that answered with headers committed
		// the stream: a success for the breaker, whatever its end.
		var p breaker.Permit
		o := breaker.Success
		if rec {
			p = a.permit
			if !answered {
				o = r.e.classify(r.ctx, err)
			}
		}
		// Until resolving clears, only this goroutine touches r.call (the
		// others wait for it), so the shared step runs without mu.
		d := r.e.decide(r.ctx, err, committed, tlr)
		delay, final, _ := r.e.afterFailure(r.ctx, &r.call, &r.stats, err, d, now, p, o)
		if final != nil {
			resolved = true
			return r.finish(final)
		}
		a.release()
		p, final, _ = r.e.nextAttempt(r.ctx, &r.call, &r.stats, err, d, delay)
		if final != nil {
			resolved = true
			return r.finish(final)
		}
		n := r.call.Attempts()
		r.mu.Lock()
		r.watch()
		r.mu.Unlock()

		b = &attempt{permit: p, probe: r.e.brk.State() == breaker.HalfOpen}
		cs, cerr := r.streamer(r.attemptContext(b, n), r.desc, r.cc, r.e.method, r.attemptOpts(b)...)
		if cerr != nil {
			a, err = b, cerr
			continue
		}
		b.cs = cs
		r.watchHeaders(b)
		var done bool
		if done, err = r.replay(b); done {
			resolved = true
			return err
		}
		a = b // b ended during the replay, with err
	}
}

// abort ends the stream when the goroutine resolving the failure of attempt
// a (with err) panics: the stream ends with err (the last attempt's error),
// which every caller gets from then on, and the panic goes on. b is the
// attempt being opened, if any: its permit is recorded as ignored (it says
// nothing about the server) and its context released.
func (r *retryStream) abort(a, b *attempt, err error) {
	r.mu.Lock()
	if r.final != nil {
		r.mu.Unlock()
		return
	}
	recA := a.claim()
	recB := b != nil && b.claim()
	r.call.Done(err, true) // refunds a retry granted but never begun
	if b != nil && r.cur != b {
		b.release()
	}
	r.finishLocked(err)
	r.mu.Unlock()
	if recA {
		a.permit.Done(breaker.Ignored)
	}
	if recB {
		b.permit.Done(breaker.Ignored)
	}
	r.reportFinish()
}

// replay sends the buffered messages, then CloseSend if the caller called
// it, on b, a new attempt, and makes b the current attempt. done reports
// that the resolution is over, with err nil (b is current) or the final
// error; otherwise b ended during the replay with err, not committed.
func (r *retryStream) replay(b *attempt) (done bool, err error) {
	r.mu.Lock()
	msgs, raw, closeSent := r.buf, r.raw, r.closeSent
	r.mu.Unlock()
	for _, sm := range msgs {
		m, serr := r.message(raw, sm)
		if serr == nil {
			serr = b.cs.SendMsg(m)
		}
		if serr == nil {
			continue
		}
		if serr != io.EOF {
			// A local error (as in SendMsg): the message cannot be sent.
			r.mu.Lock()
			r.finishAtLocked(b, serr, breaker.Ignored)
			return true, serr
		}
		headers, st := drain(b.cs)
		if !headers {
			return false, st
		}
		// Committed by headers: its messages and status are for RecvMsg.
		r.install(b, true)
		return true, nil
	}
	if closeSent {
		_ = b.cs.CloseSend()
	}
	r.install(b, false)
	return true, nil
}

// install makes b, whose replay is over, the current attempt, committed or
// not, and ends the resolution.
func (r *retryStream) install(b *attempt, committed bool) {
	r.mu.Lock()
	r.cur = b
	o := breaker.Ignored // abandoned while b opened: see ctxDone
	if committed {
		r.commitLocked()
		o = breaker.Success // b answered with headers
	}
	r.resolving = false
	rec := (committed || r.ctx.Err() != nil) && b.claim()
	r.cond.Broadcast()
	r.mu.Unlock()
	if rec {
		b.permit.Done(o)
	}
}

// answered records attempt a's permit as a success, once: a received
// response headers or a message, so the stream committed and the server is
// answering. The end of a committed stream records nothing more: a healthy
// long-lived stream cut later (a server restart) does not count against the
// breaker, and a half-open breaker gets its verdict at once.
func (r *retryStream) answered(a *attempt) {
	r.mu.Lock()
	rec := a.claim()
	r.mu.Unlock()
	if rec {
		a.permit.Done(breaker.Success)
	}
}

// drain finds out how a stream that is over (its SendMsg returned io.EOF,
// or its Header nothing) ended. headers reports that response headers
// arrived: the attempt is committed, and its messages and status are left
// for RecvMsg. Otherwise err is the stream's status, read with RecvMsg
// (which cannot consume a message: no message comes without headers).
func drain(cs grpc.ClientStream) (headers bool, err error) {
	if md, _ := cs.Header(); md != nil {
		return true, nil
	}
	if err = cs.RecvMsg(new(emptypb.Empty)); err == nil {
		return true, nil // unreachable (a message without headers)
	}
	return false, err
}

// SendMsg sends m on the current attempt and, until the stream commits,
// keeps it for replay. If the attempt turns out to have failed and is
// retried, SendMsg waits for the new attempt (m included in the replay) and
// returns nil; otherwise it returns io.EOF as grpc does, and RecvMsg
// returns the status. As grpc, a stream that is not client-streaming
// returns nil instead of io.EOF (generated code treats any error of its
// single send as the call's).
func (r *retryStream) SendMsg(m any) error {
	err := r.sendMsg(m)
	if err == io.EOF && !r.desc.ClientStreams {
		return nil
	}
	return err
}

func (r *retryStream) sendMsg(m any) error {
	r.mu.Lock()
	for r.resolving {
		if !r.waitLocked() {
			r.mu.Unlock()
			return io.EOF // RecvMsg returns the context's status
		}
	}
	if r.final != nil {
		r.mu.Unlock()
		return io.EOF
	}
	if !r.committed && !r.nobuf {
		r.bufferLocked(m)
	}
	a := r.cur
	r.mu.Unlock()

	err := a.cs.SendMsg(m)
	if err == nil {
		return nil
	}
	r.mu.Lock()
	if err != io.EOF {
		return r.sendFailedLocked(a, err)
	}
	replaced := r.settle(a)
	r.mu.Unlock()
	if replaced {
		return nil // m was buffered before the send, and replayed
	}
	return io.EOF
}

// settle sees to the end of attempt a, which SendMsg or Header found over
// (io.EOF, no headers): it waits for whoever reads a's status, or reads it
// itself with the receive token and resolves it (see end). It reports
// whether a new attempt replaced a; otherwise the stream is over, or a is
// committed and its status is left for RecvMsg. Called with mu held; it
// may release and reacquire it.
func (r *retryStream) settle(a *attempt) (replaced bool) {
	for {
		switch {
		case r.final != nil:
			return false
		case r.resolving:
			if !r.waitLocked() {
				return false
			}
			continue
		case r.cur != a:
			return true
		case r.committed:
			return false
		case r.recvBusy:
			if !r.waitLocked() { // the receiver will see the end
				return false
			}
			continue
		}
		break
	}
	r.recvBusy = true
	r.mu.Unlock()
	headers, st := drain(a.cs)
	if !headers {
		replaced = r.end(a, st) == nil
	}
	r.mu.Lock()
	if headers {
		r.commitLocked() // a's messages and status are for RecvMsg
		if a.claim() {
			r.mu.Unlock()
			a.permit.Done(breaker.Success)
			r.mu.Lock()
		}
	}
	r.recvBusy = false
	r.cond.Broadcast()
	return replaced
}

// sendFailedLocked handles an error SendMsg generated locally (such as a
// message too large): grpc has aborted the attempt; the stream ends with
// err, and the attempt's outcome is ignored (it says nothing about the
// server). Called with mu held; releases it.
func (r *retryStream) sendFailedLocked(a *attempt, err error) error {
	for r.resolving {
		if !r.waitLocked() {
			r.mu.Unlock()
			return err
		}
	}
	if r.final == nil && r.cur == a {
		r.finishAtLocked(a, err, breaker.Ignored)
	} else {
		r.mu.Unlock()
	}
	return err
}

// CloseSend closes the send direction of the current attempt, and of every
// later attempt (it is replayed).
func (r *retryStream) CloseSend() error {
	r.mu.Lock()
	for r.resolving {
		if !r.waitLocked() {
			break // the stream is over for the caller: nothing to close
		}
	}
	if r.closeSent || r.final != nil || r.resolving {
		r.closeSent = true
		r.mu.Unlock()
		return nil
	}
	r.closeSent = true
	a := r.cur
	r.mu.Unlock()
	_ = a.cs.CloseSend()
	return nil
}

// RecvMsg receives the next message. When the current attempt fails before
// the stream commits and the failure is retryable, RecvMsg opens a new
// attempt, replays the sent messages and receives from it.
func (r *retryStream) RecvMsg(m any) error {
	r.mu.Lock()
	for r.final == nil && (r.recvBusy || r.resolving) {
		if !r.waitLocked() {
			r.mu.Unlock()
			return r.ctxErr()
		}
	}
	if r.final != nil {
		err := r.final
		r.mu.Unlock()
		return err
	}
	r.recvBusy = true
	a := r.cur
	r.mu.Unlock()
	for {
		err := a.cs.RecvMsg(m)
		if err == nil {
			r.received(a)
			return nil
		}
		if err = r.end(a, err); err != nil {
			return err // the stream is over: nobody waits for the token any more
		}
		r.mu.Lock()
		a = r.cur
		r.mu.Unlock()
	}
}

// received notes a message received on a (which commits the stream) and
// gives the receive token back. A stream that is not server-streaming is
// over: grpc returns its single response only with an OK status.
func (r *retryStream) received(a *attempt) {
	r.mu.Lock()
	r.commitLocked()
	r.recvBusy = false
	r.cond.Broadcast()
	if !r.desc.ServerStreams && r.final == nil {
		r.finishAtLocked(a, io.EOF, breaker.Success)
		return
	}
	rec := a.claim() // the first message: see answered
	r.mu.Unlock()
	if rec {
		a.permit.Done(breaker.Success)
	}
}

// Header returns the response headers. It waits for them as grpc does; an
// attempt that ends without headers and is retried is replaced, and Header
// waits for the new attempt's. Headers commit the stream.
func (r *retryStream) Header() (metadata.MD, error) {
	r.mu.Lock()
	for {
		for r.resolving {
			if !r.waitLocked() {
				r.mu.Unlock()
				return nil, nil // RecvMsg returns the context's status
			}
		}
		a := r.cur
		if r.final != nil || r.committed {
			r.mu.Unlock()
			if a.cs == nil {
				return nil, nil
			}
			return a.cs.Header()
		}
		r.mu.Unlock()
		md, err := a.cs.Header()
		if md != nil {
			r.answered(a)
		}
		r.mu.Lock()
		if md != nil {
			if r.cur == a && !r.resolving {
				r.commitLocked()
			}
			r.mu.Unlock()
			return md, err
		}
		if !r.settle(a) && r.final == nil && r.ctx.Err() != nil { // a ended without headers
			r.mu.Unlock()
			return nil, nil // RecvMsg returns the context's status
		}
	}
}

// Trailer returns the current attempt's trailers (after RecvMsg returned an
// error, the last attempt's). It commits the stream.
func (r *retryStream) Trailer() metadata.MD {
	a := r.commit()
	if a.cs == nil {
		return nil
	}
	return a.cs.Trailer()
}

// Context returns the current attempt's context and commits the stream (see
// Suite.Stream).
func (r *retryStream) Context() context.Context {
	a := r.commit()
	if a.cs == nil {
		return r.ctx
	}
	return a.cs.Context()
}

// commit commits the stream (once no retry is in progress) and returns the
// current attempt. When the caller's context ends during a retry, it returns
// the current attempt without committing.
func (r *retryStream) commit() *attempt {
	r.mu.Lock()
	for r.resolving {
		if !r.waitLocked() {
			a := r.cur
			r.mu.Unlock()
			return a
		}
	}
	r.commitLocked()
	a := r.cur
	r.mu.Unlock()
	return a
}
