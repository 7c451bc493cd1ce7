package interceptors

// How a retrying stream works (retryStream; docs/stream.md has the why).
//
// A stream with a policy wraps its current attempt, cur (one inner
// grpc.ClientStream per attempt). Every method goes through one funnel by
// one of two entries: send (SendMsg, CloseSend) or withRetry(recv, op,
// onSuccess); both hand all but a success to settle. Once the stream has
// committed (no retry, no replay buffer; see [Suite.Stream]), each runs its
// op on the committed attempt, fixed, without a lock. Until then, send
// keeps its op for replay under mu, then runs it on cur; withRetry's settle
// waits for its turn, runs op on cur without the lock, and settles under mu:
//   - success: onSuccess (RecvMsg and Header commit), unless a retry
//     replaced cur meanwhile: then op runs again on the new attempt (a kept
//     op does not: the replay sent it);
//   - errOver (SendMsg's io.EOF, Header without headers): cur is over, its
//     status unread: settle takes the turn and reads it (readEnd);
//   - a localError (SendMsg's own): the stream ends, cur Ignored;
//   - the attempt's end (RecvMsg's error, the first open's): handed to end.
// Phase: the turn (reading) is held by the one goroutine that may call cur's
// RecvMsg; retrying while it is in end, everyone else waiting in wait, which
// honours the caller's context. end is the one path from an attempt's end
// onwards: io.EOF goes to finish; a failure goes through decide →
// afterFailure → nextAttempt (entry.go), which finish the stream or admit a
// new attempt, which end opens and replays the kept ops on (each sent
// message from its encoding, then CloseSend), looping if it fails too.
// finish (endLocked, then ended) is the one place the stream ends.
// Breaker and budget: each attempt's permit goes out exactly once, through
// attempt.take: record (Success when it answers, Ignored when abandoned or
// at a local error) or afterFailure (a failed attempt: RetryAt or DoneAt,
// with retry.Call's budget); finish does call.Done for the ends it decides.

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
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
// three streaming kinds with the same per-attempt step as [Suite.Unary]
// (breaker, classification, [retry.Call]'s MaxAttempts, budget and
// deadline); a method without a policy passes through untouched. A policy
// with a [HedgePolicy] hedges server streams instead, and makes client and
// bidi streams single attempts.
//
// A stream is retried only until it commits (gRFC A6): when a response
// message or headers arrive, when the caller calls Header (once headers
// arrive), Trailer or Context, or when the messages sent exceed the replay
// buffer ([WithReplayBuffer], [DefaultReplayBuffer] by default; a
// [grpc.MaxRetryRPCBufferSize] call option wins), each counting its encoded
// size, at least one byte; a message that is not a protobuf message commits.
// Until then it keeps every sent message as it was sent (a caller may reuse
// one message value) and, when an attempt fails retryably, replays them in
// order on a new attempt, then CloseSend if called: the caller sees no
// failed attempt and no duplicate.
// Retry.AttemptTimeout bounds each attempt until it commits or receives
// headers, never past the caller's deadline; an attempt it cuts fails with
// DEADLINE_EXCEEDED, unless it had failed already.
//
// Each attempt is recorded in the breaker once: as a success as soon as it
// answers (a message or headers; nothing more at the end of a committed
// stream), otherwise at its end after the retry decision, as for unary
// calls; a local SendMsg error (such as a message too large) is ignored,
// and so is the current attempt as soon as the caller's context ends. The
// first attempt is admitted as a unary call's (if rejected, no stream is
// created), later ones with [breaker.Breaker.AllowRetry].
//
// SendMsg, RecvMsg and Header may run concurrently. A retry, with the
// OnRetry and OnGiveUp hooks (which must not call the stream), runs on the
// goroutine that observes the failure; the others wait for it or for the
// caller's context to end (then returning as for an ended stream). If a
// hook, the logger or an inner interceptor panics during a retry, the
// stream ends with the last attempt's error and the panic goes on. The
// replay runs while no receive is in progress: keep the replay buffer
// below the flow-control windows (about 64 KiB) for a bidi server that
// echoes before the replay ends.
func (s *Suite) Stream() grpc.StreamClientInterceptor { return s.stream }

// stream is the stream client interceptor (Suite.Stream).
func (s *Suite) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	e := s.route(ctx, cc, method, 1)
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
	if e.pol.hedge != nil {
		if n := e.hedges(ctx, ov); n > 1 && !desc.ClientStreams {
			return newHedgeStream(e, ctx, p, n, desc, cc, streamer, opts, ov.after), nil
		}
		maxAttempts = 1 // not hedged: a single attempt
	}
	var after []grpc.CallOption
	if ov.after > 0 && maxAttempts > 1 {
		after, opts = splitAfter(opts, ov.after)
	}
	r := &retryStream{e: e, ctx: ctx, desc: desc, cc: cc, streamer: streamer, opts: opts, after: after,
		limit: ov.replay(s.o.replayBytes), nobuf: maxAttempts == 1, call: e.newCall(maxAttempts),
		stats: callStats{opts: opts, target: targetName(cc)}}
	r.ops = r.one[:0]
	r.first.permit, r.first.probe = p, e.brk.State() == breaker.HalfOpen
	r.cur = &r.first
	r.call.Begin()
	r.watch()
	if err := r.open(r.cur, 1); err != nil {
		// settle hands the end to end, with the turn, which retries it
		if _, err := r.settle(true, nil, nil, r.cur, err); err != nil {
			return nil, err
		}
	}
	return r, nil
}

var (
	// errAttemptTimeout cancels an attempt whose AttemptTimeout elapsed,
	// which then counts as errAttemptTimedOut.
	errAttemptTimeout  = errors.New("interceptors: stream attempt timeout")
	errAttemptTimedOut = status.Error(codes.DeadlineExceeded, "interceptors: stream attempt timed out before it committed (Retry.AttemptTimeout)")
	// errOver is an op's report that its attempt is over, status unread.
	errOver = errors.New("interceptors: stream attempt over")
)

// localError is an op's report of an error SendMsg generated locally (such
// as a message too large): grpc aborted the attempt; the stream ends.
type localError struct{ err error }

func (l localError) Error() string { return l.err.Error() }

// attempt is one attempt of a retrying stream.
type attempt struct {
	cs       grpc.ClientStream // nil until opened, and if opening it failed
	permit   breaker.Permit
	taken    atomic.Bool             // permit went out (take)
	ctx      context.Context         // with an AttemptTimeout timer: its context,
	cancel   context.CancelCauseFunc // cancel,
	timer    *time.Timer             // and timer
	probe    bool                    // admitted while the breaker was half-open
	finished bool                    // grpc finished its stream (only with after-call options); under mu
}

// take returns a's permit (ok) the first time only: every outcome of a
// goes through it, so a is recorded exactly once.
func (a *attempt) take() (breaker.Permit, bool) {
	if a.taken.Load() || a.taken.Swap(true) {
		return breaker.Permit{}, false
	}
	return a.permit, true
}

// record records o for a, unless a was recorded already.
func (a *attempt) record(o breaker.Outcome) {
	if !a.taken.Load() {
		a.recordOnce(o)
	}
}

func (a *attempt) recordOnce(o breaker.Outcome) {
	if p, ok := a.take(); ok {
		p.Done(o)
	}
}

// stopTimer disarms the AttemptTimeout timer.
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

// phase says who may touch the current attempt's end.
type phase uint8

const (
	idle     phase = iota
	reading        // one goroutine holds the turn: only it calls cur's RecvMsg
	retrying       // the turn holder is in end, deciding or replacing cur: everyone else waits
)

// replayOp is one operation kept for replay: a sent message (its type, and
// its encoding, raw from the previous op's end to end) or, with a nil typ,
// CloseSend.
type replayOp struct {
	typ protoreflect.MessageType
	end int
}

// retryStream is the grpc.ClientStream of a stream that has a policy.
type retryStream struct {
	e        *entry
	ctx      context.Context // the caller's
	desc     *grpc.StreamDesc
	cc       *grpc.ClientConn
	streamer grpc.Streamer
	opts     []grpc.CallOption
	after    []grpc.CallOption // the caller's after-call options, applied once at the end, or nil
	limit    int               // replay-buffer bytes
	nobuf    bool              // a single attempt: nothing to keep
	spare    []retryCtx        // the retries' contexts (retryContext)
	first    attempt
	one      [2]replayOp // ops' first slots (a server stream's request and CloseSend)

	// call and stats belong to the goroutine in phase retrying; otherwise
	// only finish touches them, under mu.
	call  retry.Call
	stats callStats
	// fixed is the attempt the stream committed to, once no turn is held,
	// until the stream ends: the funnel's fast path (see changedLocked).
	fixed atomic.Pointer[attempt]

	mu        sync.Mutex // guards what follows; never held over the inner stream or user code
	phase     phase
	committed bool
	reported  bool          // the after-call options were applied
	changed   chan struct{} // closed at the next change of phase or final, or nil
	cur       *attempt      // the current attempt (once the stream is over: the last one)
	ops       []replayOp    // to replay, while uncommitted
	raw       []byte        // the encodings of ops' messages
	size      int           // the replay buffer's use
	final     error         // once set, the stream is over (io.EOF: success)
	unwatch   func() bool
}

// withRetry is the funnel's entry for every method but SendMsg and
// CloseSend. op (nil: nothing to run) runs without mu on the current
// attempt and returns nil, errOver or, if recv (the caller then holds the
// turn), the attempt's end. onSuccess (if not nil) runs under mu once op
// succeeded on an attempt still current. It returns the current attempt
// and nil, errOver (the attempt is over and committed: its status is
// RecvMsg's), the stream's final error, or the context's status if the
// caller's context ended while it waited.
func (r *retryStream) withRetry(recv bool, op func(*attempt) error, onSuccess func()) (*attempt, error) {
	if a := r.fixed.Load(); a != nil && op != nil {
		// Committed (grpc-go's fast path): nobody replaces a or reads its end.
		switch res := op(a); res {
		case nil, errOver:
			return a, res
		default:
			return a, r.end(a, res) // final
		}
	}
	return r.settle(recv, op, onSuccess, nil, nil)
}

// send is SendMsg's path (CloseSend's with closeSend) through the funnel:
// keepLocked, run under mu as the current attempt is read, puts m (or
// CloseSend) in the replay first, so that a retry replacing that attempt
// replays it and it is never sent twice. It returns what withRetry does,
// without the attempt.
func (r *retryStream) send(m any, closeSend bool) error {
	a := r.fixed.Load()
	for a == nil {
		r.mu.Lock()
		if r.phase != retrying && r.final == nil {
			a = r.cur
			r.keepLocked(m, closeSend)
			r.mu.Unlock()
			break
		}
		r.mu.Unlock()
		if _, err := r.settle(false, nil, nil, nil, nil); err != nil { // waits out the retry
			return err
		}
		a = r.fixed.Load()
	}
	if closeSend {
		_ = a.cs.CloseSend()
		return nil
	}
	res := a.cs.SendMsg(m)
	switch res {
	case nil:
		return nil
	case io.EOF: // a is over, its status unread
		res = errOver
	default:
		res = localError{res}
	}
	_, err := r.settle(false, nil, nil, a, res) // kept: settle never sends it again
	return err
}

// settle is the funnel's general path: it runs op, or goes on from op's
// result res on a (nil a: op has not run): nil, errOver, a localError or,
// with a nil op, the end of the first attempt's opening. A nil op never
// runs: once a retry replaced a, settle returns the new attempt.
func (r *retryStream) settle(recv bool, op func(*attempt) error, onSuccess func(), a *attempt, res error) (*attempt, error) {
	turn := false // this goroutine holds the turn
	defer func() {
		if turn {
			r.mu.Lock()
			r.phase = idle
			r.changedLocked()
			r.mu.Unlock()
		}
	}()
	for {
		r.mu.Lock()
		cut := false
		for !cut && r.final == nil && (r.phase == retrying || r.phase == reading && !turn &&
			(recv || res == errOver && r.cur == a && !r.committed)) {
			if r.changed == nil {
				r.changed = make(chan struct{}) // closed at the next change of phase or final
			}
			ch := r.changed
			r.mu.Unlock()
			cut = !r.wait(ch)
			r.mu.Lock()
		}
		if cut || r.final != nil {
			cur, err := r.cur, r.final
			r.mu.Unlock()
			if _, local := res.(localError); local {
				return cur, res // for SendMsg
			} else if err == nil {
				err = r.ctxErr()
			}
			return cur, err
		}
		if a != nil && r.cur != a {
			a, res = nil, nil // a retry replaced a: run op again on the new attempt
		}
		if a != nil && res == nil || a == nil && op == nil { // op succeeded on a, still current
			a = r.cur
			if onSuccess != nil {
				onSuccess()
			}
			if turn {
				r.phase, turn = idle, false
				r.changedLocked()
			}
			r.mu.Unlock()
			return a, nil
		}
		if res == errOver && r.committed {
			r.mu.Unlock()
			return a, errOver // a's status is RecvMsg's
		}
		if l, local := res.(localError); local { // a is current, and no retry is in progress
			r.endLocked(a, l.err, callDone)
			r.mu.Unlock()
			r.ended(a, breaker.Ignored, callDone)
			return a, res
		}
		a = r.cur
		if (recv || res == errOver) && !turn {
			r.phase, turn = reading, true
		}
		r.mu.Unlock()

		ended := res // a's end, for end to resolve
		switch {
		case res == errOver: // we hold the turn: read a's status
			if ended = r.readEnd(a); ended == errOver {
				return a, errOver
			}
		case op != nil: // (nil: res is the end of the first attempt's opening)
			if res = op(a); res == nil || res == errOver {
				continue // settle a under mu
			}
			ended, res = res, nil
		}
		if err := r.end(a, ended); err != nil {
			return a, err
		}
		a, res = nil, nil // replaced: run op on the new attempt
	}
}

// readEnd reads the status of a, which is over, for the turn holder:
// errOver if a received headers (committed: its status is RecvMsg's),
// otherwise a's end.
func (r *retryStream) readEnd(a *attempt) error {
	if headers, st := drain(a.cs); !headers {
		return st
	}
	r.mu.Lock()
	r.commitLocked()
	r.mu.Unlock()
	a.record(breaker.Success)
	return errOver
}

// changedLocked follows a change of phase, commit or final: it wakes every
// waiter (wait), and publishes a committed stream's attempt for the
// funnel's fast path once no turn is held (nobody else may read its end).
func (r *retryStream) changedLocked() {
	if r.committed && r.phase == idle && r.final == nil {
		r.fixed.Store(r.cur)
	}
	if r.changed != nil {
		close(r.changed)
		r.changed = nil
	}
}

// wait is the stream's only wait: for ch, or for the caller's context to
// end (false), so that nobody blocks past it, whatever a retry is stuck in.
func (r *retryStream) wait(ch <-chan struct{}) bool {
	if r.ctx.Err() != nil {
		return false
	}
	select {
	case <-ch:
		return true
	case <-r.ctx.Done():
		return false
	}
}

// ctxErr is the caller's ended context's status.
func (r *retryStream) ctxErr() error {
	return status.FromContextError(r.ctx.Err()).Err()
}

// open opens attempt a, the n-th, under the caller's context (with the
// attempt header on retries) and AttemptTimeout unless the caller's deadline
// comes first. While the timer is armed or a may be a half-open probe, a
// goroutine waits for a's response headers to stop it and record a success.
func (r *retryStream) open(a *attempt, n int) error {
	ctx := r.ctx
	if n > 1 {
		ctx = r.e.s.retryContext(r.ctx, n, r.call.Policy().MaxAttempts, &r.spare)
	}
	if t := r.e.pol.retry.AttemptTimeout; t > 0 {
		if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > t {
			var cancel context.CancelCauseFunc
			ctx, cancel = context.WithCancelCause(ctx)
			a.ctx, a.cancel = ctx, cancel
			a.timer = time.AfterFunc(t, func() { cancel(errAttemptTimeout) })
		}
	}
	cs, err := r.streamer(ctx, r.desc, r.cc, r.e.method, r.attemptOpts(a)...)
	if err != nil {
		return err
	}
	a.cs = cs
	if a.timer != nil || a.probe {
		go func() {
			if md, _ := cs.Header(); md != nil {
				a.stopTimer()
				a.record(breaker.Success)
			}
		}()
	}
	return nil
}

// end resolves the end of attempt a with err (io.EOF: success): nil when a
// new attempt replaced a, or the stream's final error. The caller holds the
// turn, or a is committed (no retry can follow).
func (r *retryStream) end(a *attempt, err error) error {
	var b *attempt // the attempt being opened and replayed, until installed
	resolved := false
	defer func() {
		if !resolved { // user code (a hook, the logger, an inner interceptor) panicked: end the stream first
			if b != nil {
				b.record(breaker.Ignored) // it says nothing about the server
				b.release()
			}
			r.finish(a, err, breaker.Ignored, aborted)
		}
	}()
	done := func(final error) error { resolved = true; return final }
	for {
		if l, local := err.(localError); local { // b's, in the replay
			return done(r.finish(a, l.err, breaker.Ignored, callDone))
		}
		if err == io.EOF {
			return done(r.finish(a, io.EOF, breaker.Success, callDone))
		}
		r.mu.Lock()
		if f := r.final; f != nil {
			r.mu.Unlock()
			return done(f)
		}
		r.cur = a // a may be a new attempt that failed before it was installed
		committed := r.committed
		r.phase = retrying
		r.mu.Unlock()

		p, rec := a.take() // not if recorded already (at its commit, or as abandoned)
		var tlr metadata.MD
		answered := false // a received response headers: committed (A6), a success
		if a.cs != nil && (rec || !committed) {
			md, _ := a.cs.Header() // does not block: a is over
			answered = md != nil
			committed = committed || answered
			if !committed {
				tlr = a.cs.Trailer()
			}
		}
		if a.ctx != nil && context.Cause(a.ctx) == errAttemptTimeout && statusOf(err).Code() == codes.Canceled && r.ctx.Err() == nil {
			err = errAttemptTimedOut // our timer cancelled a
		}
		now := time.Now() // one clock read for the breaker and the retry decision
		o := breaker.Success
		if rec && !answered {
			o = r.e.classify(r.ctx, err)
		}
		d := r.e.decide(r.ctx, err, committed, tlr)
		delay, final, _ := r.e.afterFailure(r.ctx, &r.call, &r.stats, err, d, now, p, o)
		if final != nil {
			return done(r.finish(a, final, breaker.Ignored, stepEnded))
		}
		a.release()
		p, final, _ = r.e.nextAttempt(r.ctx, &r.call, &r.stats, err, d, delay)
		if final != nil {
			return done(r.finish(a, final, breaker.Ignored, stepEnded))
		}
		r.watch()
		b = &attempt{permit: p, probe: r.e.brk.State() == breaker.HalfOpen}
		berr := r.open(b, r.call.Attempts())
		if berr == nil {
			if berr = r.replay(b); berr == nil {
				return done(nil)
			}
		}
		a, b, err = b, nil, berr // b ended while opening or replaying
	}
}

// replay replays the ops on b, a new attempt, and makes b the current
// attempt, ending the retry; or returns b's end if b ended uncommitted
// during the replay.
func (r *retryStream) replay(b *attempt) error {
	r.mu.Lock()
	ops, raw := r.ops, r.raw // nobody keeps or commits while retrying
	r.mu.Unlock()
	committed := false
	start := 0
	for _, op := range ops {
		enc := raw[start:op.end]
		start = op.end
		if op.typ == nil {
			_ = b.cs.CloseSend()
			continue
		}
		m := op.typ.New().Interface()
		if err := proto.Unmarshal(enc, m); err != nil {
			return localError{status.Errorf(codes.Internal, "interceptors: replaying a sent message: %v", err)}
		}
		if err := b.cs.SendMsg(m); err != io.EOF {
			if err != nil {
				return localError{err} // as in SendMsg: the message cannot be sent
			}
			continue
		}
		headers, st := drain(b.cs)
		if !headers {
			return st
		}
		committed = true // by headers: b's messages and status are for RecvMsg
		break
	}
	r.mu.Lock()
	r.cur, r.phase = b, reading
	if committed {
		r.commitLocked()
	}
	r.changedLocked()
	abandoned := r.ctx.Err() != nil // the caller's context ended while b opened: see ctxDone
	r.mu.Unlock()
	if committed {
		b.record(breaker.Success) // b answered
	} else if abandoned {
		b.record(breaker.Ignored)
	}
	return nil
}

// ending says what finish does with the call's retry state.
type ending uint8

const (
	callDone  ending = iota // the stream decides the end: call.Done and the call's metrics
	stepEnded               // the shared step ended the call (afterFailure, nextAttempt)
	aborted                 // a panic during a retry: call.Done, refunding a retry granted but never begun
)

// finish is the one place the stream ends: at a, with err (io.EOF:
// success), and o for a unless recorded already. The first call wins; it
// returns the stream's final error.
func (r *retryStream) finish(a *attempt, err error, o breaker.Outcome, how ending) error {
	r.mu.Lock()
	won := r.endLocked(a, err, how)
	err = r.final
	r.mu.Unlock()
	if won {
		r.ended(a, o, how)
	}
	return err
}

// endLocked is finish's part under mu: it ends the stream unless it is
// over already (false).
func (r *retryStream) endLocked(a *attempt, err error, how ending) bool {
	if r.final != nil {
		return false
	}
	if how != stepEnded {
		callErr := err
		if err == io.EOF {
			callErr = nil
		}
		r.call.Done(callErr, how == aborted)
	}
	r.cur, r.final = a, err
	r.fixed.Store(nil)
	r.dropBufferLocked()
	a.release()
	if r.unwatch != nil {
		r.unwatch()
	}
	r.changedLocked()
	return true
}

// ended is finish's part without mu, once the stream ended at a.
func (r *retryStream) ended(a *attempt, o breaker.Outcome, how ending) {
	a.record(o)
	if how == callDone {
		r.e.callEnded(r.ctx, &r.stats, r.call.Attempts())
	}
	r.report(nil, nil)
}

// drain finds out how a stream that is over ended: with response headers
// (its messages and status are left for RecvMsg), or with status err, read
// with RecvMsg (which consumes no message: none comes without headers).
func drain(cs grpc.ClientStream) (headers bool, err error) {
	if md, _ := cs.Header(); md != nil {
		return true, nil
	}
	err = cs.RecvMsg(new(emptypb.Empty))
	return err == nil, err // nil: unreachable (a message without headers)
}

// SendMsg sends m on the current attempt and, until the stream commits,
// keeps it for replay; if the attempt failed and is retried, it sends m on
// the new one. Otherwise, as grpc, it returns io.EOF and RecvMsg the
// status; a stream that is not client-streaming returns nil instead.
func (r *retryStream) SendMsg(m any) error {
	err := r.send(m, false)
	if err == nil {
		return nil
	}
	if l, ok := err.(localError); ok {
		return l.err
	}
	if !r.desc.ClientStreams {
		return nil
	}
	return io.EOF
}

// CloseSend closes the send direction of the current attempt and, through
// the replay, of every later one.
func (r *retryStream) CloseSend() error {
	_ = r.send(nil, true)
	return nil
}

// RecvMsg receives the next message, from a new attempt if the current one
// fails retryably before the stream commits.
func (r *retryStream) RecvMsg(m any) error {
	a, err := r.withRetry(true, func(a *attempt) error { return a.cs.RecvMsg(m) }, r.commitLocked)
	if err != nil {
		return err
	}
	a.record(breaker.Success) // the first message: the attempt answered
	if !r.desc.ServerStreams {
		// grpc returns a single response only with an OK status.
		r.finish(a, io.EOF, breaker.Success, callDone)
	}
	return nil
}

// Header returns the response headers, waiting for them as grpc does (for
// a new attempt's if the current one ends without them and is retried).
// Headers commit the stream.
func (r *retryStream) Header() (metadata.MD, error) {
	var md metadata.MD
	var err error
	a, ferr := r.withRetry(false, func(a *attempt) error {
		if md, err = a.cs.Header(); md == nil {
			return errOver
		}
		return nil
	}, r.commitLocked)
	switch {
	case ferr == nil:
		a.record(breaker.Success) // the attempt answered
		return md, err
	case a.cs == nil:
		return nil, nil
	}
	return a.cs.Header() // a is over: this does not block
}

// Trailer returns the current attempt's trailers (after RecvMsg returned an
// error, the last attempt's). It commits the stream.
func (r *retryStream) Trailer() metadata.MD {
	if a, _ := r.withRetry(false, nil, r.commitLocked); a.cs != nil {
		return a.cs.Trailer()
	}
	return nil
}

// Context returns the current attempt's context and commits the stream.
func (r *retryStream) Context() context.Context {
	if a, _ := r.withRetry(false, nil, r.commitLocked); a.cs != nil {
		return a.cs.Context()
	}
	return r.ctx
}

// commitLocked commits the stream: no more retries, no more replay buffer.
func (r *retryStream) commitLocked() {
	if r.committed {
		return
	}
	r.committed = true
	r.dropBufferLocked()
	r.cur.stopTimer()
	r.changedLocked()
}

// keepLocked keeps m (or CloseSend) for replay, m encoded as it is now, or
// commits the stream if m is not a protobuf message or the replay buffer
// would exceed its limit (a message counts its encoded size, at least 1).
func (r *retryStream) keepLocked(m any, closeSend bool) {
	if r.committed || r.nobuf {
		return
	}
	if closeSend {
		r.ops = append(r.ops, replayOp{end: len(r.raw)})
		return
	}
	var pm proto.Message
	switch m := m.(type) {
	case proto.Message:
		pm = m
	case protoadapt.MessageV1:
		pm = protoadapt.MessageV2Of(m)
	}
	var n int
	if pm != nil {
		n = max(proto.Size(pm), 1)
	}
	if pm == nil || r.size+n > r.limit {
		r.commitLocked()
		return
	}
	raw, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(r.raw, pm)
	if err != nil {
		r.commitLocked()
		return
	}
	r.raw, r.size = raw, r.size+n
	r.ops = append(r.ops, replayOp{typ: pm.ProtoReflect().Type(), end: len(raw)})
}

// dropBufferLocked drops the replay buffer.
func (r *retryStream) dropBufferLocked() {
	clear(r.ops)
	r.ops, r.raw, r.size = nil, nil, 0
}

// watch arranges, once per stream, for ctxDone to run when the caller's
// context ends, if the current attempt may be a half-open probe or the
// caller gave after-call options (the common case costs nothing).
func (r *retryStream) watch() {
	if r.after == nil && r.e.brk.State() != breaker.HalfOpen {
		return
	}
	r.mu.Lock()
	if r.unwatch == nil && r.final == nil && r.ctx.Done() != nil {
		r.unwatch = context.AfterFunc(r.ctx, r.ctxDone)
	}
	r.mu.Unlock()
}

// ctxDone runs when the caller's context ends: nobody may ever read the
// current attempt's end, so it is recorded as ignored now (a half-open
// breaker gets its probe back at once), and reported if grpc finished it.
func (r *retryStream) ctxDone() {
	r.mu.Lock()
	a, live := r.cur, r.final == nil
	r.mu.Unlock()
	if live {
		a.record(breaker.Ignored)
	}
	r.report(a, r.ctxErr())
}

// attemptOpts returns attempt a's call options: the caller's and, with
// after-call options, an OnFinish noting that grpc finished a's stream.
func (r *retryStream) attemptOpts(a *attempt) []grpc.CallOption {
	if r.after == nil {
		return r.opts
	}
	return append(r.opts[:len(r.opts):len(r.opts)], grpc.OnFinish(func(err error) {
		r.mu.Lock()
		a.finished = true
		r.mu.Unlock()
		r.report(a, err)
	}))
}

// report applies the caller's after-call options once: with the final
// attempt and error once the stream is over; before that, with attempt a
// and err when grpc finished a, the current attempt, after the caller's
// context ended (no retry can follow, and nobody may read its end).
func (r *retryStream) report(a *attempt, err error) {
	if r.after == nil {
		return
	}
	r.mu.Lock()
	if r.final != nil {
		a, err = r.cur, r.final
	}
	ok := !r.reported && (r.final != nil || r.phase != retrying && r.cur == a && a.finished && r.ctx.Err() != nil)
	r.reported = r.reported || ok
	r.mu.Unlock()
	if !ok {
		return
	}
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
