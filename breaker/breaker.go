package breaker

import (
	"context"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// The hot word of a breaker packs the generation and the state:
// generation<<stateBits | state.
const (
	stateBits = 8
	stateMask = 1<<stateBits - 1
)

// stateRec is the immutable record of the current generation, swapped
// atomically on every transition. Allow reads it with one atomic load.
type stateRec struct {
	w   uint64     // generation<<stateBits | state
	err *OpenError // prebuilt rejection for Open and ForcedOpen, nil otherwise
}

func (r *stateRec) state() State { return State(r.w & stateMask) }

// stopper is the part of *time.Timer the breaker uses.
type stopper interface{ Stop() bool }

func realAfterFunc(d time.Duration, f func()) stopper { return time.AfterFunc(d, f) }

// probe is an outstanding half-open permit.
type probe struct {
	seq      uint32
	deadline time.Time // the permit is reclaimed at this time if still unreported
}

// event is a queued state change, delivered after the lock is released.
type event struct{ from, to State }

// Breaker is a circuit breaker. It is safe for concurrent use. Create one
// with New; the zero value is not usable.
type Breaker struct {
	// Hot fields, touched without the mutex. cur is read by every Allow and
	// succ written by every successful Done: on separate cache lines, so that
	// concurrent callers on other cores do not invalidate each other's reads
	// (the unary interceptor on 2 cores, in parallel: 175 -> 140 ns/op).
	cur        atomic.Pointer[stateRec]
	_          [56]byte
	succ       atomic.Uint64 // successes recorded by the closed/metrics-only fast path (lifetime)
	_          [56]byte
	streak     atomic.Uint64 // current streak of failed attempts
	ignored    atomic.Uint64 // ignored outcomes recorded without the mutex (lifetime)
	rejections atomic.Uint64 // lifetime

	cfg Config // normalized, read-only

	// Hooks, replaced by tests: the clock (read on slow paths only), the
	// timer that ends an open period, and the jitter source in [0, 1).
	clock     func() time.Time
	afterFunc func(time.Duration, func()) stopper
	rnd       func() float64

	mu          sync.Mutex
	gen         uint64
	state       State
	win         window
	folded      uint64 // value of succ already stamped into win
	otherSucc   uint64 // successes recorded under the mutex (half-open, stale)
	failures    uint64
	otherIgn    uint64
	transitions uint64
	shadowTrips uint64
	reopens     int           // re-opens since the last close; the open period is RecoveryTime<<reopens
	openDur     time.Duration // the current (or last) open period, jitter included
	timer       stopper       // armed while Open
	probes      []probe       // outstanding half-open permits
	probeSeq    uint32
	hoSucc      int        // half-open successes in this generation
	hoErr       *OpenError // half-open rejection, rebuilt when the earliest deadline moves
	events      []event
	dispatching bool
}

// Permit is the right to make one attempt, returned by Allow. It is a small
// value (a *Breaker plus a state/generation word); report the attempt's
// outcome with Done exactly once. The zero Permit's Done is a no-op.
type Permit struct {
	b     *Breaker
	w     uint64 // generation<<stateBits | state at admission
	probe uint32 // half-open probe number, 0 otherwise
}

// Counts is a snapshot of a Breaker's counters, for monitoring.
type Counts struct {
	// State is the state at the time of the snapshot.
	State State
	// Successes, Failures, Ignored, Rejections and Transitions are lifetime,
	// monotonic counters. Outcomes of old generations are included.
	Successes, Failures, Ignored, Rejections, Transitions uint64
	// ConsecutiveFailures is the current streak of failed attempts.
	ConsecutiveFailures uint64
	// WindowCalls and WindowFailures are the successes+failures and the
	// failures in the current rolling window (approximate, see the package
	// documentation on lazy success stamping).
	WindowCalls, WindowFailures uint64
	// ShadowTrips counts the times a trip rule fired in MetricsOnly mode.
	ShadowTrips uint64
	// Generation is incremented on every transition and on Reset.
	Generation uint64
}

// New returns a Breaker configured by cfg, or the validation error of cfg.
func New(cfg Config) (*Breaker, error) {
	return newBreaker(cfg, time.Now, realAfterFunc, rand.Float64)
}

func newBreaker(cfg Config, clock func() time.Time, after func(time.Duration, func()) stopper, rnd func() float64) (*Breaker, error) {
	c, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	b := &Breaker{cfg: c, clock: clock, afterFunc: after, rnd: rnd, state: c.Mode}
	b.win.epoch = clock()
	b.win.width = c.Window / windowBuckets
	b.cur.Store(&stateRec{w: uint64(c.Mode)})
	return b, nil
}

// Allow asks for a permit to make one attempt. When the breaker rejects, the
// error is an *OpenError (matching ErrOpen) and the Permit is the zero value.
//
// In the Closed, MetricsOnly and Disabled states Allow is one atomic load;
// an Open or ForcedOpen rejection is one atomic load and one atomic add (the
// rejection counter) and returns the period's prebuilt *OpenError. Only the
// HalfOpen state takes the mutex and reads the clock.
func (b *Breaker) Allow() (Permit, error) {
	rec := b.cur.Load()
	if rec.err != nil {
		b.rejections.Add(1)
		return Permit{}, rec.err
	}
	if rec.state() != HalfOpen {
		return Permit{b: b, w: rec.w}, nil
	}
	return b.allowHalfOpen()
}

func (b *Breaker) allowHalfOpen() (Permit, error) {
	b.mu.Lock()
	if b.state != HalfOpen {
		// A transition won the race; start over.
		b.mu.Unlock()
		return b.Allow()
	}
	now := b.clock()
	b.reclaimProbes(now)
	if len(b.probes)+b.hoSucc < b.cfg.HalfOpenMaxCalls {
		b.probeSeq++
		b.probes = append(b.probes, probe{seq: b.probeSeq, deadline: now.Add(b.openDur)})
		p := Permit{b: b, w: b.cur.Load().w, probe: b.probeSeq}
		b.mu.Unlock()
		return p, nil
	}
	b.rejections.Add(1)
	earliest := b.probes[0].deadline // len(probes) > 0: otherwise hoSucc >= HalfOpenMaxCalls and the breaker closed
	for _, p := range b.probes[1:] {
		if p.deadline.Before(earliest) {
			earliest = p.deadline
		}
	}
	if b.hoErr == nil || !b.hoErr.until.Equal(earliest) {
		b.hoErr = &OpenError{name: b.cfg.Name, state: HalfOpen, until: earliest}
	}
	err := b.hoErr
	b.mu.Unlock()
	return Permit{}, err
}

// reclaimProbes frees the permits of probes that have not reported within
// the open period.
func (b *Breaker) reclaimProbes(now time.Time) {
	keep := b.probes[:0]
	for _, p := range b.probes {
		if now.Before(p.deadline) {
			keep = append(keep, p)
		}
	}
	b.probes = keep
}

// Done records the outcome of the permit's attempt. Call it once per
// permit; the zero Permit's Done is a no-op, and so is Done for a permit of
// a Disabled breaker.
//
// An outcome whose permit comes from an older generation (the breaker has
// changed state since Allow) is counted in Counts but changes neither the
// window, nor the streak, nor the state.
//
// In the Closed and MetricsOnly states, Success and Ignored take no mutex,
// read no clock and allocate nothing: a Success is an atomic add to a
// success counter (and resets the streak if it is not already zero); every
// 64th success stamps the pending successes into the window under the mutex.
func (p Permit) Done(o Outcome) { p.DoneAt(o, time.Time{}) }

// DoneAt is Done for a caller that has just read the clock anyway (a retry
// loop after a failed attempt): the paths of Done that read the clock use
// now instead, so a failed attempt costs one clock read, not two. The zero
// time means "read the clock", as Done does.
func (p Permit) DoneAt(o Outcome, now time.Time) {
	b := p.b
	if b == nil {
		return
	}
	switch State(p.w & stateMask) {
	case Disabled:
		return
	case HalfOpen:
	default: // Closed, MetricsOnly
		switch o {
		case Success:
			if b.cur.Load().w == p.w {
				n := b.succ.Add(1)
				if b.streak.Load() != 0 {
					b.streak.Store(0)
				}
				if n&63 == 0 {
					b.stampSuccesses()
				}
				return
			}
		case Ignored:
			b.ignored.Add(1)
			return
		}
	}
	b.doneSlow(p, o, now)
}

// stampSuccesses folds the successes counted by the fast path into the
// current bucket of the window.
func (b *Breaker) stampSuccesses() {
	b.mu.Lock()
	if b.state == Closed || b.state == MetricsOnly {
		b.fold(b.clock())
	}
	b.mu.Unlock()
}

// fold stamps the pending fast-path successes into the bucket of now.
// b.mu must be held and the state must be Closed or MetricsOnly.
func (b *Breaker) fold(now time.Time) {
	n := b.succ.Load()
	if pending := n - b.folded; pending > 0 {
		b.folded = n
		b.win.add(now, pending, 0)
	}
}

func (b *Breaker) doneSlow(p Permit, o Outcome, now time.Time) {
	if now.IsZero() && o == Failure {
		now = b.clock()
	}
	b.mu.Lock()
	if p.w != b.cur.Load().w {
		// An older generation: counted, never decides anything.
		b.count(o)
		b.unlockAndDispatch()
		return
	}
	switch b.state {
	case Closed, MetricsOnly:
		b.count(o)
		if o == Failure {
			b.recordFailure(now)
		}
	case HalfOpen:
		b.count(o)
		i := b.findProbe(p.probe)
		if i < 0 {
			// Reclaimed after the open period: the slot went to another probe.
			break
		}
		b.probes = append(b.probes[:i], b.probes[i+1:]...)
		switch o {
		case Success:
			b.hoSucc++
			if b.hoSucc >= b.cfg.HalfOpenMaxCalls {
				b.reopens = 0
				b.enterWindowed(Closed)
			}
		case Failure:
			b.reopens++
			b.open(now)
		}
	}
	b.unlockAndDispatch()
}

func (b *Breaker) count(o Outcome) {
	switch o {
	case Success:
		b.otherSucc++
	case Failure:
		b.failures++
	default:
		b.otherIgn++
	}
}

func (b *Breaker) findProbe(seq uint32) int {
	for i, p := range b.probes {
		if p.seq == seq {
			return i
		}
	}
	return -1
}

// recordFailure stamps a failure at now and evaluates the trip rules.
// b.mu must be held and the state must be Closed or MetricsOnly.
func (b *Breaker) recordFailure(now time.Time) {
	b.fold(now)
	b.win.add(now, 0, 1)
	streak := b.streak.Add(1)
	if !b.tripped(streak, now) {
		return
	}
	if b.state == MetricsOnly {
		// Evaluate afresh as if the breaker had opened and closed again.
		b.shadowTrips++
		b.clearWindow()
		return
	}
	b.open(now)
}

func (b *Breaker) tripped(streak uint64, now time.Time) bool {
	c := &b.cfg
	if c.ConsecutiveFailures > 0 && streak >= uint64(c.ConsecutiveFailures) {
		return true
	}
	if c.MinimumCalls > 0 {
		calls, fails := b.win.sum(now)
		if calls >= uint64(c.MinimumCalls) && float64(fails) >= c.FailureRate*float64(calls) {
			return true
		}
	}
	return false
}

// openDuration returns RecoveryTime doubled b.reopens times, capped at
// MaxRecoveryTime, multiplied by the jitter factor.
func (b *Breaker) openDuration() time.Duration {
	// Doubling step by step, the cap checked before each step, cannot
	// overflow and stops after at most 63 steps whatever b.reopens is.
	d, maxD := b.cfg.RecoveryTime, b.cfg.MaxRecoveryTime
	for i := 0; i < b.reopens && d < maxD; i++ {
		if d > maxD/2 {
			d = maxD
		} else {
			d *= 2
		}
	}
	if j := b.cfg.RecoveryJitter; j > 0 {
		f := float64(d) * (1 - j + 2*j*b.rnd())
		if f >= math.MaxInt64 {
			d = math.MaxInt64
		} else {
			d = time.Duration(f)
		}
	}
	return max(d, 1)
}

// open moves to Open for the next open period and arms the timer that
// moves it to HalfOpen. b.mu must be held.
func (b *Breaker) open(now time.Time) {
	d := b.openDuration()
	b.openDur = d
	b.transition(Open, &OpenError{name: b.cfg.Name, state: Open, until: now.Add(d)})
	gen := b.gen
	b.timer = b.afterFunc(d, func() { b.endOpen(gen) })
}

// endOpen is the timer callback of an open period: if the breaker is still
// in that generation, it moves to HalfOpen.
func (b *Breaker) endOpen(gen uint64) {
	b.mu.Lock()
	if b.gen == gen && b.state == Open {
		b.transition(HalfOpen, nil)
	}
	b.unlockAndDispatch()
}

// enterWindowed moves to Closed or MetricsOnly with an empty window and no
// streak. b.mu must be held.
func (b *Breaker) enterWindowed(to State) {
	b.clearWindow()
	b.transition(to, nil)
}

func (b *Breaker) clearWindow() {
	b.win.clear()
	b.streak.Store(0)
	b.folded = b.succ.Load()
}

// transition starts a new generation in state to. b.mu must be held.
func (b *Breaker) transition(to State, err *OpenError) {
	from := b.state
	b.gen++
	b.state = to
	if b.timer != nil {
		b.timer.Stop()
		b.timer = nil
	}
	b.probes = b.probes[:0]
	b.hoSucc = 0
	b.hoErr = nil
	b.cur.Store(&stateRec{w: b.gen<<stateBits | uint64(to), err: err})
	if from != to {
		b.transitions++
		if b.cfg.OnStateChange != nil {
			b.events = append(b.events, event{from, to})
		}
	}
}

// unlockAndDispatch releases b.mu and delivers the queued state changes in
// order. Only one goroutine delivers at a time; a goroutine that finds
// another one delivering leaves its events to it.
func (b *Breaker) unlockAndDispatch() {
	if b.dispatching || len(b.events) == 0 {
		b.mu.Unlock()
		return
	}
	b.dispatching = true
	for len(b.events) > 0 {
		evs := b.events
		b.events = nil
		b.mu.Unlock()
		b.deliver(evs)
		b.mu.Lock()
	}
	b.dispatching = false
	b.mu.Unlock()
}

// deliver calls OnStateChange for each event. If a callback panics, the
// undelivered events are put back and the dispatcher flag is cleared, so a
// later transition delivers them; the panic continues.
func (b *Breaker) deliver(evs []event) {
	i := 0
	defer func() {
		if i < len(evs) {
			b.mu.Lock()
			b.events = append(evs[i+1:len(evs):len(evs)], b.events...)
			b.dispatching = false
			b.mu.Unlock()
		}
	}()
	for ; i < len(evs); i++ {
		b.cfg.OnStateChange(b.cfg.Name, evs[i].from, evs[i].to)
	}
}

// Do runs fn under the breaker (the Khive @circuit_breaker decorator): it
// asks for a permit, runs fn, and records classify(err). A nil classify
// treats a nil error as Success, any error once ctx is done as Ignored (the
// caller gave up), and every other error as Failure. A rejection returns
// the *OpenError without calling fn; otherwise Do returns fn's error
// unchanged. If fn panics, the attempt is recorded as a Failure and the
// panic continues.
func (b *Breaker) Do(ctx context.Context, fn func(context.Context) error, classify func(error) Outcome) error {
	p, err := b.Allow()
	if err != nil {
		return err
	}
	recorded := false
	defer func() {
		if !recorded {
			p.Done(Failure)
		}
	}()
	err = fn(ctx)
	var o Outcome
	switch {
	case classify != nil:
		o = classify(err)
	case err == nil:
		o = Success
	case ctx.Err() != nil:
		o = Ignored
	default:
		o = Failure
	}
	recorded = true
	p.Done(o)
	return err
}

// State returns the current state (one atomic load).
func (b *Breaker) State() State { return b.cur.Load().state() }

// Counts returns a snapshot of the counters.
func (b *Breaker) Counts() Counts {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clock()
	if b.state == Closed || b.state == MetricsOnly {
		b.fold(now)
	}
	calls, fails := b.win.sum(now)
	return Counts{
		State:               b.state,
		Successes:           b.succ.Load() + b.otherSucc,
		Failures:            b.failures,
		Ignored:             b.ignored.Load() + b.otherIgn,
		Rejections:          b.rejections.Load(),
		Transitions:         b.transitions,
		ConsecutiveFailures: b.streak.Load(),
		WindowCalls:         calls,
		WindowFailures:      fails,
		ShadowTrips:         b.shadowTrips,
		Generation:          b.gen,
	}
}

// Name returns Config.Name.
func (b *Breaker) Name() string { return b.cfg.Name }

// Isolate forces the breaker open (ForcedOpen): every call is rejected until
// Reset.
func (b *Breaker) Isolate() {
	b.mu.Lock()
	if b.state != ForcedOpen {
		b.transition(ForcedOpen, &OpenError{name: b.cfg.Name, state: ForcedOpen})
	}
	b.unlockAndDispatch()
}

// Reset closes the breaker from any state: it clears the window and the
// streak, resets the re-open exponent and starts a new generation (even if
// the breaker was already closed). Lifetime counters are kept.
func (b *Breaker) Reset() {
	b.mu.Lock()
	b.reopens = 0
	b.enterWindowed(Closed)
	b.unlockAndDispatch()
}

// Disable switches the breaker to Disabled: it admits everything, records
// nothing and never transitions until Reset or MetricsOnly.
func (b *Breaker) Disable() {
	b.mu.Lock()
	if b.state != Disabled {
		b.transition(Disabled, nil)
	}
	b.unlockAndDispatch()
}

// MetricsOnly switches the breaker to MetricsOnly, with an empty window: it
// admits everything, records and evaluates the trip rules, and counts a
// shadow trip (Counts.ShadowTrips) where it would have opened.
func (b *Breaker) MetricsOnly() {
	b.mu.Lock()
	if b.state != MetricsOnly {
		b.enterWindowed(MetricsOnly)
	}
	b.unlockAndDispatch()
}
