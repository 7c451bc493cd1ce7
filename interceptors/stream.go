package interceptors

// How a retrying stream works (retryStream; docs/stream.md has the why).
//
// A stream with a policy wraps its current attempt, cur (one inner
// grpc.ClientStream per attempt). Every method, and the first attempt's
// start, runs through one funnel, withRetry(recv, op, onSuccess): it waits
// for its turn, runs op on cur without the lock, then settles op's result:
//   - success: onSuccess runs under mu (SendMsg keeps the message for
//     replay, RecvMsg and Header commit), unless a retry replaced cur in the
//     meantime: then op runs again, on the new attempt;
//   - errOver (SendMsg's io.EOF, Header without headers): cur is over and its
//     status unread; the funnel takes the turn and reads it (drain);
//   - the attempt's end (RecvMsg's error, the streamer's): handed to end.
// The turn (phase reading) is held by the one goroutine that may call cur's
// RecvMsg. end, the one path from an attempt's end onwards, runs on the turn
// holder: io.EOF and local send errors go straight to finish; any other
// error sets phase retrying (everyone else waits in wait, which honours the
// caller's context), then decide → afterFailure → nextAttempt (step.go)
// either finish the stream or admit a new attempt, which end opens and on
// which it replays the kept ops (each sent message from its encoding, then
// CloseSend), looping if it fails too. finish is the one place the stream
// ends: it sets final, which every method returns from then on.
// Commit (no retry, no replay buffer): a message or headers received,
// Header/Trailer/Context called, or the buffer's limit reached.
// Breaker and budget: each attempt's permit goes out exactly once, through
// take: record (Success when it answers, Ignored when abandoned or at a
// local error) or afterFailure (the failed attempt, with retry.Call's
// budget accounting); finish does call.Done for the ends it decides.

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
// Before the commit, the stream keeps every sent message as it was sent
// (its encoding, so a caller may reuse one message value for every send).
// When an attempt fails before committing and the failure is retryable,
// the stream opens a new attempt and replays the messages in order, then
// CloseSend if the caller had called it, and carries on: the caller sees
// neither the failed attempt nor a duplicate. After the commit the buffer
// is dropped and the stream is a thin wrapper.
//
// Context commits, as the grpc.ClientStream contract says ("Once called,
// subsequent client-side retries are disabled"): the context it returns is
// the current attempt's. Code that wants retries should call Context only
// after Header or RecvMsg.
//
// # Attempt timeout
//
// Retry.AttemptTimeout bounds each attempt until it commits, not the whole
// stream, counting from the attempt's start (for client and bidi streams
// it includes the caller's own sending up to the first response). An
// attempt that has not committed or received response headers within
// AttemptTimeout is cancelled and fails with DEADLINE_EXCEEDED (a failure
// for the breaker; retried only if the policy lists DEADLINE_EXCEEDED);
// one that had already failed by then keeps its own status. The server is
// not told about it, and it never extends the caller's deadline.
//
// # Outcomes
//
// Each attempt's outcome is recorded in the breaker once. An attempt that
// answers (its first response message, or its response headers) commits
// the stream and is a success at that moment; the end of a committed
// stream records nothing more. An attempt that ends without answering is
// recorded at its end, after the retry decision, as for unary calls:
// io.EOF (or a client-streaming response) is a success, a failure is
// classified, a stream the caller canceled is ignored, and so is an error
// SendMsg generated locally (such as a message too large). When the
// caller's context ends, the current attempt is recorded as ignored at
// once, so a half-open breaker gets its probe back even if nobody reads
// the stream's end. The first attempt is admitted as a unary call's (it
// may wait for a half-open verdict, or be throttled: the stream is then
// not created), later attempts with Breaker.AllowRetry.
//
// # Concurrency
//
// SendMsg, RecvMsg and Header may run concurrently (bidi streaming). The
// retry runs on the goroutine that observes the failure (RecvMsg's, or
// SendMsg's or Header's when no RecvMsg is in progress), and so do the
// OnRetry and OnGiveUp hooks, which must not call the stream; the other
// callers wait for the new attempt, or until the caller's context ends
// (they then return as for an ended stream: SendMsg io.EOF, RecvMsg the
// context's status). If a hook, the logger or an inner interceptor panics
// during a retry, the stream ends with the last attempt's error before the
// panic goes on. The replay runs while no receive is in progress, so a
// bidi server that echoes more than the flow-control windows hold (about
// 64 KiB each way) before the replay ends can stall it until the
// deadline; keep the replay buffer below that for such servers.
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
	r.ops = r.one[:0]
	r.first.permit, r.first.probe = p, e.brk.State() == breaker.HalfOpen
	r.cur = &r.first
	r.call.Begin()
	r.watch()
	if _, err := r.withRetry(true, r.start, nil); err != nil {
		return nil, err
	}
	return r, nil
}

// errAttemptTimeout is the cancellation cause of a stream attempt whose
// AttemptTimeout elapsed before it committed.
var errAttemptTimeout = errors.New("interceptors: stream attempt timeout")

// errAttemptTimedOut is the error such an attempt counts as.
var errAttemptTimedOut = status.Error(codes.DeadlineExceeded, "interceptors: stream attempt timed out before it committed (Retry.AttemptTimeout)")

// errOver is what an op reports when it finds its attempt over with its
// status unread (SendMsg's io.EOF, Header without headers).
var errOver = errors.New("interceptors: stream attempt over")

// localError is what an op reports for an error SendMsg generated locally
// (such as a message too large): grpc has aborted the attempt, and the
// stream ends with err.
type localError struct{ err error }

func (l localError) Error() string { return l.err.Error() }

// attempt is one attempt of a retrying stream.
type attempt struct {
	cs       grpc.ClientStream // nil until opened, and if opening it failed
	permit   breaker.Permit
	taken    atomic.Bool             // permit went out (take)
	ctx      context.Context         // with an AttemptTimeout timer: the attempt's context
	cancel   context.CancelCauseFunc // and its cancel
	timer    *time.Timer
	probe    bool // admitted while the breaker was half-open: likely a probe
	finished bool // grpc finished the attempt's stream (noted only with after-call options); guarded by the stream's mu
}

// take returns a's permit the first time, then the zero Permit, which
// records nothing: every outcome of a goes through it, so a is recorded
// exactly once.
func (a *attempt) take() (breaker.Permit, bool) {
	if a.taken.Load() || a.taken.Swap(true) {
		return breaker.Permit{}, false
	}
	return a.permit, true
}

// record records o for a, unless a was recorded already.
func (a *attempt) record(o breaker.Outcome) {
	if p, ok := a.take(); ok {
		p.Done(o)
	}
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

// phase says who may touch the current attempt's end.
type phase uint8

const (
	idle     phase = iota
	reading        // one goroutine holds the turn: only it calls cur's RecvMsg
	retrying       // the turn holder is in end, deciding or replacing cur: everyone else waits
)

// replayOp is one operation kept for replay: a sent message (its type, and
// its encoding raw[start:end]) or, with a nil typ, CloseSend.
type replayOp struct {
	typ        protoreflect.MessageType
	start, end int
}

// retryStream is the grpc.ClientStream of a stream that has a policy (see
// the comment at the top of this file).
type retryStream struct {
	e        *entry
	ctx      context.Context // the caller's
	desc     *grpc.StreamDesc
	cc       *grpc.ClientConn
	streamer grpc.Streamer
	opts     []grpc.CallOption
	after    []grpc.CallOption // the caller's after-call options, applied once at the end (reportFinish), or nil
	limit    int               // replay-buffer bytes
	nobuf    bool              // a single attempt: nothing to replay, nothing to keep
	spare    []retryCtx        // the retries' contexts (retryContext)
	first    attempt           // the first attempt, allocated with the stream
	one      [2]replayOp       // the first kept ops' slots (a server stream's request and CloseSend)

	// call and stats belong to the goroutine in phase retrying; outside a
	// retry only finish touches them, under mu.
	call  retry.Call
	stats callStats

	mu        sync.Mutex // guards what follows; never held while calling the inner stream or user code
	phase     phase
	changed   chan struct{} // closed at the next change of phase or final (see changedLocked), or nil
	cur       *attempt      // the current attempt (once the stream is over: the last one)
	committed bool
	ops       []replayOp // the ops to replay, while uncommitted
	raw       []byte     // the encodings of ops' messages, back to back
	size      int        // the messages' replay-buffer size
	final     error      // once set, the stream is over (io.EOF: success) and RecvMsg returns it
	reported  bool       // the after-call options were applied
	unwatch   func() bool
}

// withRetry is the funnel every method of the stream goes through (see the
// top of this file). op runs without mu on the current attempt and returns
// nil, errOver, a localError or the attempt's end (only when recv: an op
// that receives holds the turn); op nil means "nothing to run". onSuccess,
// if not nil, runs with mu held once op succeeded on an attempt that is
// still current. withRetry returns the current attempt and nil if op
// succeeded; otherwise the stream's final error, errOver (the attempt is
// over and committed: its status is RecvMsg's), a localError op returned,
// or the context's status if the caller's context ended while it waited.
func (r *retryStream) withRetry(recv bool, op func(*attempt) error, onSuccess func(*attempt)) (*attempt, error) {
	var (
		a    *attempt // the attempt op ran on, until settled
		res  error    // op's result on a: nil, errOver or a localError
		turn bool     // this goroutine holds the turn
	)
	defer func() {
		if turn {
			r.mu.Lock()
			r.endTurnLocked()
			r.mu.Unlock()
		}
	}()
	for {
		r.mu.Lock()
		cut := false
		for !cut && r.final == nil && (r.phase == retrying || r.phase == reading && !turn &&
			(recv || res == errOver && r.cur == a && !r.committed)) {
			ch := r.changedLocked()
			r.mu.Unlock()
			cut = !r.wait(ch)
			r.mu.Lock()
		}
		if cut || r.final != nil {
			cur, err := r.cur, r.final
			r.mu.Unlock()
			if err == nil {
				err = r.ctxErr()
			}
			return cur, orLocal(res, err)
		}
		if a != nil && r.cur != a {
			a, res = nil, nil // a retry replaced a: run op again on the new attempt
		}
		if a != nil && res == nil || a == nil && op == nil { // op succeeded on a, still current
			a = r.cur
			if onSuccess != nil {
				onSuccess(a)
			}
			if turn {
				r.endTurnLocked()
				turn = false
			}
			r.mu.Unlock()
			return a, nil
		}
		if res == errOver && r.committed {
			r.mu.Unlock()
			return a, errOver // a's status is RecvMsg's
		}
		a = r.cur
		if (recv || res == errOver) && !turn {
			r.phase, turn = reading, true
		}
		committed := r.committed
		r.mu.Unlock()

		ended := res // a's end, for end to resolve
		switch {
		case res == errOver: // we hold the turn: read a's status
			if ended = r.readEnd(a); ended == errOver {
				return a, errOver
			}
		case res == nil:
			res = op(a)
			if res == nil && committed && !turn {
				return a, nil // a committed attempt is never replaced
			}
			if _, local := res.(localError); res == nil || res == errOver || local {
				continue // settle a under mu
			}
			ended, res = res, nil
		}
		if err := r.end(a, ended); err != nil {
			return a, orLocal(res, err)
		}
		a, res = nil, nil // replaced: run op on the new attempt
	}
}

// orLocal returns res if it is a localError (the caller's own send failed),
// otherwise err.
func orLocal(res, err error) error {
	if _, local := res.(localError); local {
		return res
	}
	return err
}

// readEnd reads the status of attempt a, which is over (the caller holds
// the turn): errOver if a received headers (it commits the stream, and its
// status is RecvMsg's), otherwise a's end.
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

// endTurnLocked gives the turn back.
func (r *retryStream) endTurnLocked() {
	r.phase = idle
	r.broadcastLocked()
}

// changedLocked returns a channel that is closed at the next change of
// phase or final.
func (r *retryStream) changedLocked() <-chan struct{} {
	if r.changed == nil {
		r.changed = make(chan struct{})
	}
	return r.changed
}

// broadcastLocked wakes every waiter (wait).
func (r *retryStream) broadcastLocked() {
	if r.changed != nil {
		close(r.changed)
		r.changed = nil
	}
}

// wait is the stream's only wait: it waits for ch (see changedLocked), or
// for the caller's context to end (false), so that no caller blocks past
// its context, whatever the retrying goroutine is stuck in.
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

// ctxErr is the status error of the caller's ended context.
func (r *retryStream) ctxErr() error {
	return status.FromContextError(r.ctx.Err()).Err()
}

// start is the first attempt's op: it opens the attempt's stream (later
// attempts are opened by end).
func (r *retryStream) start(a *attempt) error {
	if a.cs != nil {
		return nil
	}
	return r.open(a, 1)
}

// open opens the stream of attempt a, the n-th (1-based).
func (r *retryStream) open(a *attempt, n int) error {
	cs, err := r.streamer(r.attemptContext(a, n), r.desc, r.cc, r.e.method, r.attemptOpts(a)...)
	if err != nil {
		return err
	}
	a.cs = cs
	r.watchHeaders(a)
	return nil
}

// end resolves the end of attempt a with err (io.EOF: success): it returns
// nil when a new attempt replaced a (the caller runs its op again), or the
// stream's final error. Except for io.EOF and local errors, the caller
// holds the turn.
func (r *retryStream) end(a *attempt, err error) error {
	// While phase is retrying everyone else waits for this goroutine, which
	// runs user code (hooks, the logger, inner interceptors): if any of it
	// panics, end the stream before the panic goes on (abort).
	var b *attempt // the attempt being opened and replayed, until installed
	resolved := false
	defer func() {
		if !resolved {
			r.abort(a, b, err)
		}
	}()
	for {
		if l, ok := err.(localError); ok {
			resolved = true
			return r.finish(a, l.err, breaker.Ignored, callDone)
		}
		if err == io.EOF {
			resolved = true
			return r.finish(a, io.EOF, breaker.Success, callDone)
		}
		r.mu.Lock()
		if r.final != nil {
			f := r.final
			r.mu.Unlock()
			resolved = true
			return f
		}
		r.cur = a // a may be a new attempt that failed before it was installed
		committed := r.committed
		r.phase = retrying
		r.mu.Unlock()

		p, rec := a.take() // zero if a was recorded already (at its commit, or as abandoned)
		var tlr metadata.MD
		answered := false // a received response headers: committed (A6), and a success
		if a.cs != nil && (rec || !committed) {
			md, _ := a.cs.Header() // does not block: a is over
			answered = md != nil
			committed = committed || answered
			if !committed {
				tlr = a.cs.Trailer()
			}
		}
		if a.timedOut() && statusOf(err).Code() == codes.Canceled && r.ctx.Err() == nil {
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
			resolved = true
			return r.finish(a, final, breaker.Ignored, stepEnded)
		}
		a.release()
		p, final, _ = r.e.nextAttempt(r.ctx, &r.call, &r.stats, err, d, delay)
		if final != nil {
			resolved = true
			return r.finish(a, final, breaker.Ignored, stepEnded)
		}
		r.watch()
		b = &attempt{permit: p, probe: r.e.brk.State() == breaker.HalfOpen}
		if err = r.open(b, r.call.Attempts()); err == nil {
			if err = r.replay(b); err == nil {
				resolved = true
				return nil
			}
		}
		a, b = b, nil // b ended while opening or replaying, with err
	}
}

// replay replays the kept ops on b, a new attempt, and installs it. It
// returns nil, or b's end (not committed) if b ended during the replay.
func (r *retryStream) replay(b *attempt) error {
	r.mu.Lock()
	ops, raw := r.ops, r.raw // nobody keeps or commits while retrying
	r.mu.Unlock()
	for _, op := range ops {
		if op.typ == nil {
			_ = b.cs.CloseSend()
			continue
		}
		m := op.typ.New().Interface()
		if err := proto.Unmarshal(raw[op.start:op.end], m); err != nil {
			return localError{status.Errorf(codes.Internal, "interceptors: replaying a sent message: %v", err)}
		}
		switch err := b.cs.SendMsg(m); err {
		case nil:
			continue
		case io.EOF:
		default:
			return localError{err} // as in SendMsg: the message cannot be sent
		}
		headers, st := drain(b.cs)
		if !headers {
			return st
		}
		r.install(b, true) // committed by headers: its messages and status are for RecvMsg
		return nil
	}
	r.install(b, false)
	return nil
}

// install makes b, whose replay is over, the current attempt, and ends the
// retry (the turn stays with its holder).
func (r *retryStream) install(b *attempt, committed bool) {
	r.mu.Lock()
	r.cur = b
	if committed {
		r.commitLocked()
	}
	r.phase = reading
	r.broadcastLocked()
	abandoned := r.ctx.Err() != nil // the caller's context ended while b opened: see ctxDone
	r.mu.Unlock()
	if committed {
		b.record(breaker.Success) // b answered with headers
	} else if abandoned {
		b.record(breaker.Ignored)
	}
}

// abort ends the stream when the goroutine resolving the failure of attempt
// a (with err) panics: the stream ends with err (the last attempt's error)
// and the panic goes on. b is the attempt being opened, if any: it says
// nothing about the server.
func (r *retryStream) abort(a, b *attempt, err error) {
	if b != nil {
		b.record(breaker.Ignored)
		b.release()
	}
	r.finish(a, err, breaker.Ignored, aborted)
}

// ending says what finish does with the call's retry state.
type ending uint8

const (
	callDone  ending = iota // the stream decides the end: call.Done and the call's metrics
	stepEnded               // the shared step ended the call (afterFailure, nextAttempt)
	aborted                 // a panic during a retry: call.Done, refunding a retry granted but never begun
)

// finish is the one place the stream ends: at attempt a, with err (io.EOF:
// success), o for a's permit unless a was recorded already. Only the first
// call ends the stream; finish returns the stream's final error.
func (r *retryStream) finish(a *attempt, err error, o breaker.Outcome, how ending) error {
	r.mu.Lock()
	if r.final != nil {
		f := r.final
		r.mu.Unlock()
		return f
	}
	switch {
	case how == aborted:
		r.call.Done(err, true)
	case how == callDone && err == io.EOF:
		r.call.Done(nil, false)
	case how == callDone:
		r.call.Done(err, false)
	}
	r.cur, r.final = a, err
	r.dropBufferLocked()
	a.release()
	if r.unwatch != nil {
		r.unwatch()
	}
	r.broadcastLocked()
	r.mu.Unlock()
	a.record(o)
	if how == callDone {
		r.e.callEnded(r.ctx, &r.stats, r.call.Attempts())
	}
	r.reportFinish()
	return err
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
// retried, SendMsg sends m on the new attempt, after the replay; otherwise
// it returns io.EOF as grpc does, and RecvMsg returns the status. As grpc,
// a stream that is not client-streaming returns nil instead of io.EOF
// (generated code treats any error of its single send as the call's).
func (r *retryStream) SendMsg(m any) error {
	_, err := r.withRetry(false, func(a *attempt) error {
		switch err := a.cs.SendMsg(m); err {
		case nil:
			return nil
		case io.EOF:
			return errOver
		default:
			return localError{err}
		}
	}, func(*attempt) { r.keepLocked(m) })
	if l, ok := err.(localError); ok {
		return l.err
	}
	if err == nil || !r.desc.ClientStreams {
		return nil
	}
	return io.EOF
}

// CloseSend closes the send direction of the current attempt, and of every
// later attempt (it is replayed).
func (r *retryStream) CloseSend() error {
	r.withRetry(false, func(a *attempt) error {
		_ = a.cs.CloseSend()
		return nil
	}, func(*attempt) {
		if !r.committed && !r.nobuf {
			r.ops = append(r.ops, replayOp{})
		}
	})
	return nil
}

// RecvMsg receives the next message. When the current attempt fails before
// the stream commits and the failure is retryable, RecvMsg opens a new
// attempt, replays the sent messages and receives from it.
func (r *retryStream) RecvMsg(m any) error {
	a, err := r.withRetry(true, func(a *attempt) error { return a.cs.RecvMsg(m) }, func(*attempt) { r.commitLocked() })
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

// Header returns the response headers. It waits for them as grpc does; an
// attempt that ends without headers and is retried is replaced, and Header
// waits for the new attempt's. Headers commit the stream.
func (r *retryStream) Header() (metadata.MD, error) {
	var md metadata.MD
	var err error
	a, ferr := r.withRetry(false, func(a *attempt) error {
		if md, err = a.cs.Header(); md == nil {
			return errOver
		}
		return nil
	}, func(*attempt) { r.commitLocked() })
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
	a, _ := r.withRetry(false, nil, func(*attempt) { r.commitLocked() })
	if a.cs == nil {
		return nil
	}
	return a.cs.Trailer()
}

// Context returns the current attempt's context and commits the stream (see
// Suite.Stream).
func (r *retryStream) Context() context.Context {
	a, _ := r.withRetry(false, nil, func(*attempt) { r.commitLocked() })
	if a.cs == nil {
		return r.ctx
	}
	return a.cs.Context()
}

// commitLocked commits the stream: no more retries, no more replay buffer.
func (r *retryStream) commitLocked() {
	if r.committed {
		return
	}
	r.committed = true
	r.dropBufferLocked()
	r.cur.stopTimer()
}

// keepLocked keeps m for replay, encoded as it is now, or commits the
// stream if the replay buffer would exceed its limit. A message counts its
// encoded size, at least 1 so that empty messages are bounded too; a
// message that is not a protobuf message cannot be kept and commits the
// stream.
func (r *retryStream) keepLocked(m any) {
	if r.committed || r.nobuf {
		return
	}
	pm := protoOf(m)
	if pm == nil {
		r.commitLocked()
		return
	}
	n := max(proto.Size(pm), 1)
	if r.size+n > r.limit {
		r.commitLocked()
		return
	}
	start := len(r.raw)
	raw, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(r.raw, pm)
	if err != nil {
		r.commitLocked()
		return
	}
	r.raw = raw
	r.ops = append(r.ops, replayOp{typ: pm.ProtoReflect().Type(), start: start, end: len(raw)})
	r.size += n
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
	clear(r.ops)
	r.ops, r.raw, r.size = nil, nil, 0
}

// attemptContext returns the context of attempt a, the n-th (1-based): the
// caller's context, with the attempt header on retries, and cancelled by
// AttemptTimeout unless the attempt commits first.
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
// (or a's end): when they arrive, the server is answering, so it disarms
// the timer and records a as a success, without waiting for a message or
// for the caller to call Header.
func (r *retryStream) watchHeaders(a *attempt) {
	if a.timer == nil && !a.probe {
		return
	}
	go func() {
		if md, _ := a.cs.Header(); md != nil {
			a.stopTimer()
			a.record(breaker.Success)
		}
	}()
}

// watch arranges, once per stream, for ctxDone to run when the caller's
// context ends, if the current attempt may hold a half-open probe permit
// or the caller gave after-call options; other streams need nothing, so
// the common case costs no allocation.
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

// ctxDone runs when the caller's context ends. Since nobody may ever read
// the current attempt's end, it records that attempt as ignored now (what
// classify says of an attempt whose caller's context is done): a half-open
// breaker gets its probe back at once. An attempt a retry in progress
// opens is covered when it is installed.
func (r *retryStream) ctxDone() {
	r.mu.Lock()
	a, live := r.cur, r.final == nil
	// An attempt grpc finished before the context ended, whose end nobody
	// read: the stream ends now for the after-call options.
	report := r.after != nil && live && !r.reported && r.phase != retrying && a.finished
	if report {
		r.reported = true
	}
	r.mu.Unlock()
	if live {
		a.record(breaker.Ignored)
	}
	if report {
		r.applyAfter(a, r.ctxErr())
	}
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
// ended, once, with the final attempt's header, trailer and peer and the
// stream's final error.
func (r *retryStream) reportFinish() {
	if r.after == nil {
		return
	}
	r.mu.Lock()
	report := !r.reported && r.final != nil
	r.reported = r.reported || report
	a, err := r.cur, r.final
	r.mu.Unlock()
	if report {
		r.applyAfter(a, err)
	}
}

// attemptFinished runs when grpc finished attempt a's stream with err. If
// the caller's context has ended, nobody may ever read the stream's end and
// no retry can follow: the stream ends here for the after-call options.
// Otherwise the end is decided when it is read (reportFinish).
func (r *retryStream) attemptFinished(a *attempt, err error) {
	r.mu.Lock()
	a.finished = true
	report := r.final == nil && !r.reported && r.phase != retrying && r.cur == a && r.ctx.Err() != nil
	r.reported = r.reported || report
	r.mu.Unlock()
	if report {
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
