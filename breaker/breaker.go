package breaker

import (
	"context"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	stripeof "github.com/khive/grpc-resilience/internal/stripe"
)

// The hot word of a breaker packs the generation and the state:
// generation<<stateBits | state.
const (
	stateBits = 8
	stateMask = 1<<stateBits - 1
)

// retryFlag marks a streak that holds a failed retry or a failed call (see
// Config.ConsecutiveFailures); the rest of the word is the streak's length.
const retryFlag = 1 << 63

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
type event struct {
	name     string
	from, to State
	fn       func(name string, from, to State)
}

// stripe holds the counters written on hot paths. A Breaker has several
// (at least four per processor, at most 64), each on its own cache line,
// and a goroutine writes the one its stack address picks, so that callers
// on different cores rarely write the same line. The mutex holder
// folds them (see fold).
type stripe struct {
	succ atomic.Uint64 // accepted calls recorded by the fast path
	thr  atomic.Uint64 // throttled calls
	rej  atomic.Uint64 // open, forced-open and half-open rejections
	_    [40]byte
}

// Breaker is a circuit breaker. It is safe for concurrent use. Create one
// with New; the zero value is not usable.
type Breaker struct {
	// Read by every Allow, written on transitions and throttle changes.
	cur      atomic.Pointer[stateRec]
	throttle atomic.Uint32             // reject probability of Allow in Closed, scaled to 2^32
	thrErr   atomic.Pointer[OpenError] // the throttle's rejection
	_        [44]byte
	// Written by failures, read (and reset when set) by every success.
	streak  atomic.Uint64 // failed attempts in a row, | retryFlag
	ignored atomic.Uint64 // lifetime
	_       [48]byte
	stripes []stripe

	// Hooks, replaced by tests: the clock (read on slow paths only), the
	// timer that ends an open period, and the jitter source in [0, 1).
	clock     func() time.Time
	afterFunc func(time.Duration, func()) stopper
	rnd       func() float64

	mu          sync.Mutex
	cfg         Config // normalized
	recoverRun  int    // accepted calls in a row that end throttling (see throttled)
	gen         uint64
	state       State
	win         window
	folded      tally  // the stripes' counts already stamped into win
	otherSucc   uint64 // successes recorded under the mutex
	failures    uint64
	otherIgn    uint64
	transitions uint64
	shadowTrips uint64
	successRun  int           // accepted calls since the last failed call
	openedAt    time.Time     // when the breaker left Closed for the current outage
	openDur     time.Duration // the current (or last) open period, jitter included
	timer       stopper       // armed while Open
	probes      []probe       // outstanding half-open permits
	probeSeq    uint32
	hoSucc      int           // half-open successes in this generation
	hoErr       *OpenError    // half-open rejection, rebuilt when the earliest deadline moves
	changed     chan struct{} // closed (and replaced) when a half-open verdict or a free slot may admit waiters
	events      []event
	dispatching bool
	retired     bool
}

// Permit is the right to make one attempt, returned by Allow, AllowContext
// or AllowRetry. It is a small value; report the attempt's outcome exactly
// once, with Done or DoneAt if the call ends with this attempt, with
// RetryAt if the call retries. The zero Permit's methods are no-ops.
type Permit struct {
	b     *Breaker
	w     uint64 // generation<<stateBits | state at admission
	probe uint32 // half-open probe number, 0 otherwise
	retry bool   // admitted by AllowRetry
}

// Counts is a snapshot of a Breaker's counters, for monitoring.
type Counts struct {
	// State is the state at the time of the snapshot.
	State State
	// Successes, Failures and Ignored count attempt outcomes; Rejections
	// the open, forced-open and half-open rejections; Throttled the calls
	// the throttle rejected; Transitions the state changes. All are
	// lifetime, monotonic counters and include old generations.
	Successes, Failures, Ignored, Rejections, Throttled, Transitions uint64
	// ConsecutiveFailures is the current streak of failed attempts.
	ConsecutiveFailures uint64
	// WindowCalls, WindowFailures and WindowThrottled are the calls with a
	// final outcome, the failed calls and the throttled calls in the rolling
	// window (successes are stamped lazily, so the split is approximate).
	WindowCalls, WindowFailures, WindowThrottled uint64
	// ThrottleProbability is the probability that Allow rejects a call now
	// (in MetricsOnly, the probability it would reject).
	ThrottleProbability float64
	// OpenUntil is when the current open period ends (the breaker then
	// turns half-open); zero unless the state is Open.
	OpenUntil time.Time
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
	c, err := cfg.Normalize()
	if err != nil {
		return nil, err
	}
	b := &Breaker{clock: clock, afterFunc: after, rnd: rnd, state: c.Mode, stripes: make([]stripe, stripeof.Count(64))}
	b.setConfig(c)
	b.win.epoch = clock()
	b.win.width = c.Window / windowBuckets
	b.cur.Store(&stateRec{w: uint64(c.Mode)})
	return b, nil
}

// setConfig installs the normalized c. b.mu must be held (or b unshared).
func (b *Breaker) setConfig(c Config) {
	b.cfg = c
	b.thrErr.Store(&OpenError{name: c.Name, state: Closed})
	b.recoverRun = 0
	if c.ThrottleK > 1 {
		// The admitted calls of a throttled breaker succeed about 1/K of
		// the time while the server is still overloaded: a run this long
		// then happens about once in 100,000 calls.
		b.recoverRun = int(math.Ceil(math.Log(1e5) / math.Log(c.ThrottleK)))
	}
}

// stripe returns the calling goroutine's stripe.
func (b *Breaker) stripe() *stripe {
	return &b.stripes[stripeof.Index()&uint32(len(b.stripes)-1)]
}

// Allow asks for a permit for a new call's first attempt. When the breaker
// rejects, the error is an *OpenError (matching ErrOpen, or ErrThrottled
// when the throttle shed the call) and the Permit is the zero value.
//
// In the Closed, MetricsOnly and Disabled states Allow takes no lock, reads
// no clock and allocates nothing; only the HalfOpen state takes the mutex.
func (b *Breaker) Allow() (Permit, error) {
	rec := b.cur.Load()
	if rec.err != nil {
		b.stripe().rej.Add(1)
		return Permit{}, rec.err
	}
	if rec.state() == HalfOpen {
		return b.allowHalfOpen(false)
	}
	if t := b.throttle.Load(); t != 0 && rand.Uint32() < t {
		return b.throttled()
	}
	return Permit{b: b, w: rec.w}, nil
}

// AllowRetry asks for a permit for a later attempt of a call that Allow
// admitted. It is Allow without the throttle: the call was admitted, and a
// retry budget is what bounds its retries.
func (b *Breaker) AllowRetry() (Permit, error) {
	rec := b.cur.Load()
	if rec.err != nil {
		b.stripe().rej.Add(1)
		return Permit{}, rec.err
	}
	if rec.state() == HalfOpen {
		return b.allowHalfOpen(true)
	}
	return Permit{b: b, w: rec.w, retry: true}, nil
}

// AllowContext is Allow for a caller that may wait: when the breaker is
// HalfOpen with every probe slot taken, it waits for the probes' verdict
// and then admits the call (the breaker closed) or rejects it (it opened
// again, or no verdict came in time). It waits at most
// Config.HalfOpenMaxWait and never past ctx's deadline less reserve (the
// time the call needs for its attempt), and stops waiting when ctx is done.
// It starts no goroutine. Otherwise it is Allow.
func (b *Breaker) AllowContext(ctx context.Context, reserve time.Duration) (Permit, error) {
	p, err := b.Allow()
	if err == nil {
		return p, nil
	}
	oe, ok := err.(*OpenError)
	if !ok || oe.state != HalfOpen {
		return p, err
	}
	b.mu.Lock()
	maxWait := b.cfg.HalfOpenMaxWait
	b.mu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		maxWait = min(maxWait, time.Until(dl)-reserve)
	}
	if maxWait <= 0 {
		return p, err
	}
	t := time.NewTimer(maxWait)
	defer t.Stop()
	for {
		b.mu.Lock()
		ch := b.changed
		b.mu.Unlock()
		if ch == nil {
			return b.Allow()
		}
		select {
		case <-ch:
		case <-t.C:
			return p, err
		case <-ctx.Done():
			return p, err
		}
		if p, err = b.Allow(); err == nil {
			return p, nil
		}
		if oe, ok := err.(*OpenError); !ok || oe.state != HalfOpen {
			return p, err
		}
	}
}

// throttled records a call the throttle rejected and returns the rejection.
func (b *Breaker) throttled() (Permit, error) {
	if b.stripe().thr.Add(1)&63 == 0 {
		b.stamp()
	}
	return Permit{}, b.thrErr.Load()
}

func (b *Breaker) allowHalfOpen(retry bool) (Permit, error) {
	b.mu.Lock()
	if b.state != HalfOpen {
		// A transition won the race; start over.
		b.mu.Unlock()
		if retry {
			return b.AllowRetry()
		}
		return b.Allow()
	}
	now := b.clock()
	b.reclaimProbes(now)
	if len(b.probes)+b.hoSucc < b.cfg.HalfOpenMaxCalls {
		b.probeSeq++
		b.probes = append(b.probes, probe{seq: b.probeSeq, deadline: now.Add(b.openDur)})
		p := Permit{b: b, w: b.cur.Load().w, probe: b.probeSeq, retry: retry}
		b.mu.Unlock()
		return p, nil
	}
	b.stripe().rej.Add(1)
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
// the open period, and wakes the waiters if it freed any.
func (b *Breaker) reclaimProbes(now time.Time) {
	keep := b.probes[:0]
	for _, p := range b.probes {
		if now.Before(p.deadline) {
			keep = append(keep, p)
		}
	}
	if len(keep) < len(b.probes) {
		b.wake()
	}
	b.probes = keep
}

// wake tells the callers waiting in AllowContext to look again. b.mu must
// be held and the state must be HalfOpen.
func (b *Breaker) wake() {
	if b.changed != nil {
		close(b.changed)
		b.changed = make(chan struct{})
	}
}

// Done records the outcome of the permit's attempt, the last of its call:
// the attempt counts for the streak (and, for a probe, the half-open
// verdict) and the call's outcome for the throttle and the FailureRate
// rule. It is DoneAt with the zero time.
//
// In the Closed and MetricsOnly states, Success and Ignored take no mutex,
// read no clock and allocate nothing while the throttle sheds nothing.
func (p Permit) Done(o Outcome) { p.record(o, time.Time{}, true) }

// DoneAt is Done for a caller that has just read the clock anyway (a retry
// loop after a failed attempt): the paths that read the clock use now
// instead. The zero time means "read the clock".
func (p Permit) DoneAt(o Outcome, now time.Time) { p.record(o, now, true) }

// RetryAt records the outcome of the permit's attempt when its call goes on
// with a retry: it counts for the streak (and the half-open verdict), not
// as a call outcome. If the call then ends without another attempt (its
// retry was rejected, or the caller gave up), nothing more is recorded. A
// Success is recorded as Done records it. now is as for DoneAt.
func (p Permit) RetryAt(o Outcome, now time.Time) { p.record(o, now, o == Success) }

func (p Permit) record(o Outcome, now time.Time, final bool) {
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
			if b.throttle.Load() == 0 && b.cur.Load().w == p.w {
				if b.stripe().succ.Add(1)&63 == 0 {
					b.stamp()
				}
				if b.streak.Load() != 0 {
					b.streak.Store(0)
				}
				return
			}
		case Ignored:
			b.ignored.Add(1)
			return
		}
	}
	b.recordSlow(p, o, now, final)
}

// stamp folds the fast-path counts into the window and updates the
// throttle.
func (b *Breaker) stamp() {
	b.mu.Lock()
	if b.state == Closed || b.state == MetricsOnly {
		now := b.clock()
		b.fold(now)
		b.updateThrottle(now)
	}
	b.mu.Unlock()
}

// sumStripes returns the stripes' counters.
func (b *Breaker) sumStripes() (t tally, rej uint64) {
	for i := range b.stripes {
		s := &b.stripes[i]
		t.succ += s.succ.Load()
		t.thr += s.thr.Load()
		rej += s.rej.Load()
	}
	return t, rej
}

// fold stamps the stripes' counts not yet stamped into the bucket of now.
// b.mu must be held and the state must be Closed or MetricsOnly.
func (b *Breaker) fold(now time.Time) {
	t, _ := b.sumStripes()
	pending := tally{succ: t.succ - b.folded.succ, thr: t.thr - b.folded.thr}
	if pending.succ != 0 || pending.thr != 0 {
		b.folded = t
		b.win.add(now, pending)
	}
}

// forget marks every stripe count as stamped, without stamping it.
func (b *Breaker) forget() {
	b.folded, _ = b.sumStripes()
}

func (b *Breaker) recordSlow(p Permit, o Outcome, now time.Time, final bool) {
	if now.IsZero() && o != Ignored {
		now = b.clock()
	}
	b.mu.Lock()
	if p.w != b.cur.Load().w {
		// An older generation: counted, never decides anything.
		b.count(o)
		b.unlockAndDispatch()
		return
	}
	b.count(o)
	switch b.state {
	case Closed, MetricsOnly:
		b.fold(now)
		switch o {
		case Success:
			b.streak.Store(0)
			b.win.add(now, tally{succ: 1})
			b.successRun++
			if b.throttle.Load() != 0 && b.recoverRun > 0 && b.successRun >= b.recoverRun {
				// The admitted calls succeed again: forget the
				// shedding's history instead of letting the window
				// age it out (the throttle would reopen by K per window).
				b.clearWindow()
			}
			b.updateThrottle(now)
		case Failure:
			b.recordFailure(p, now, final)
		}
	case HalfOpen:
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
				b.enterWindowed(Closed)
			}
		case Failure:
			b.open(now)
		default:
			b.wake() // a slot is free: a waiter may probe
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

// recordFailure stamps a failed attempt (and, if final, a failed call) at
// now and evaluates the rules. b.mu must be held and the state must be
// Closed or MetricsOnly.
func (b *Breaker) recordFailure(p Permit, now time.Time, final bool) {
	u := tally{fail: 1}
	if final {
		u.callFail = 1
		b.successRun = 0
	}
	b.win.add(now, u)
	streak := b.streak.Add(1)
	if p.retry || final {
		streak = b.streak.Or(retryFlag) | retryFlag
	}
	if !b.tripped(streak, now, final) {
		if final {
			b.updateThrottle(now)
		}
		return
	}
	if b.state == MetricsOnly {
		// Evaluate afresh as if the breaker had opened and closed again.
		b.shadowTrips++
		b.clearWindow()
		b.updateThrottle(now)
		return
	}
	b.openedAt = now
	b.open(now)
}

// tripped reports whether a rule that opens the breaker fires. streak is the
// streak word; final tells that a call just failed.
func (b *Breaker) tripped(streak uint64, now time.Time, final bool) bool {
	c := &b.cfg
	if n := c.ConsecutiveFailures; n > 0 && streak&retryFlag != 0 {
		if l := streak &^ retryFlag; l >= uint64(n) && l >= b.streakNeeded(l, now) {
			return true
		}
	}
	if c.FailureRate > 0 && final {
		t := b.win.sum(now)
		calls := t.succ + t.callFail
		if calls >= uint64(c.MinimumCalls) && float64(t.callFail) >= c.FailureRate*float64(calls) {
			return true
		}
	}
	return false
}

// streakNeeded returns the streak that opens the breaker, given the window's
// attempts before the current streak of length l: ConsecutiveFailures while
// they failed at most noiseFailureRate of the time (or were fewer than
// MinimumCalls), longer above it, so
// that a streak is as unlikely under the observed failure rate f as a
// streak of ConsecutiveFailures under noiseFailureRate (n·ln 0.3 / ln f),
// and at most maxStreakFactor times ConsecutiveFailures.
func (b *Breaker) streakNeeded(l uint64, now time.Time) uint64 {
	n := uint64(b.cfg.ConsecutiveFailures)
	t := b.win.sum(now)
	prior := t.fail - min(t.fail, l)
	if prior == 0 || prior+t.succ < uint64(b.cfg.MinimumCalls) {
		return n // no failures before the streak, or too few attempts to tell a rate
	}
	f := float64(prior) / float64(prior+t.succ)
	if f <= noiseFailureRate {
		return n
	}
	need := float64(maxStreakFactor * n)
	if f < 1 {
		need = min(need, math.Ceil(float64(n)*math.Log(noiseFailureRate)/math.Log(f)))
	}
	return uint64(need)
}

// updateThrottle sets the throttle's reject probability from the window at
// now. b.mu must be held.
func (b *Breaker) updateThrottle(now time.Time) {
	var t uint32
	if k := b.cfg.ThrottleK; k > 0 && b.state == Closed {
		t = throttleWord(b.throttleProbability(now))
	}
	if b.throttle.Load() != t {
		b.throttle.Store(t)
	}
}

// throttleProbability returns max(0, (calls - K*accepts)/(calls+1)) over
// the window, calls being the admitted calls with an outcome, or 0 below
// MinimumCalls calls. Throttled calls do not count (see Config.ThrottleK).
// b.mu must be held.
func (b *Breaker) throttleProbability(now time.Time) float64 {
	k := b.cfg.ThrottleK
	if k <= 0 {
		return 0
	}
	t := b.win.sum(now)
	calls := t.succ + t.callFail
	if calls < uint64(b.cfg.MinimumCalls) {
		return 0
	}
	p := (float64(calls) - k*float64(t.succ)) / float64(calls+1)
	return max(0, min(p, 1))
}

func throttleWord(p float64) uint32 {
	if p <= 0 {
		return 0
	}
	return uint32(min(p*(1<<32), math.MaxUint32))
}

// openDuration returns the next open period: RecoveryTime, or a third of
// the time since the breaker opened for this outage if longer, capped at
// MaxRecoveryTime, multiplied by the jitter factor.
func (b *Breaker) openDuration(now time.Time) time.Duration {
	d, maxD := b.cfg.RecoveryTime, b.cfg.MaxRecoveryTime
	if age := now.Sub(b.openedAt) / openAgeDivisor; age > d {
		d = min(age, maxD)
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
	d := b.openDuration(now)
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

// clearWindow empties the window, the streak and the throttle. b.mu must be
// held.
func (b *Breaker) clearWindow() {
	b.win.clear()
	b.streak.Store(0)
	b.forget()
	b.successRun = 0
	b.throttle.Store(0)
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
	if b.changed != nil {
		close(b.changed) // the waiters' verdict
		b.changed = nil
	}
	if to == HalfOpen {
		b.changed = make(chan struct{})
	}
	if to != Closed {
		b.throttle.Store(0)
	}
	b.cur.Store(&stateRec{w: b.gen<<stateBits | uint64(to), err: err})
	if from != to {
		b.transitions++
		if fn := b.cfg.OnStateChange; fn != nil && !b.retired {
			b.events = append(b.events, event{b.cfg.Name, from, to, fn})
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
		evs[i].fn(evs[i].name, evs[i].from, evs[i].to)
	}
}

// Do runs fn under the breaker as one call of one attempt (the Khive
// @circuit_breaker decorator): it asks for a permit, runs fn, and records
// classify(err). A nil classify treats a nil error as Success, any error
// once ctx is done as Ignored (the caller gave up), and every other error as
// Failure. A rejection returns the *OpenError without calling fn; otherwise
// Do returns fn's error unchanged. If fn panics, the attempt is recorded as
// a Failure and the panic continues.
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
	s, rej := b.sumStripes()
	t := b.win.sum(now)
	var prob float64
	if b.state == Closed || b.state == MetricsOnly {
		prob = b.throttleProbability(now)
	}
	var until time.Time
	if b.state == Open {
		until = b.cur.Load().err.until
	}
	return Counts{
		State:               b.state,
		Successes:           s.succ + b.otherSucc,
		Failures:            b.failures,
		Ignored:             b.ignored.Load() + b.otherIgn,
		Rejections:          rej,
		Throttled:           s.thr,
		Transitions:         b.transitions,
		ConsecutiveFailures: b.streak.Load() &^ retryFlag,
		WindowCalls:         t.succ + t.callFail,
		WindowFailures:      t.callFail,
		WindowThrottled:     t.thr,
		ThrottleProbability: prob,
		OpenUntil:           until,
		ShadowTrips:         b.shadowTrips,
		Generation:          b.gen,
	}
}

// Name returns Config.Name.
func (b *Breaker) Name() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cfg.Name
}

// Config returns the configuration in force, with the defaults applied.
func (b *Breaker) Config() Config {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cfg
}

// Reconfigure validates cfg and applies it, keeping the state (an open
// breaker stays open for the rest of its period, a half-open one keeps its
// probes, a closed one its window, unless Window changed), the counters and
// the generation. A different cfg.Mode than the one in force switches to it
// (Closed, Disabled or MetricsOnly) as Reset, Disable and MetricsOnly do;
// the same Mode changes no state. On error nothing changes.
func (b *Breaker) Reconfigure(cfg Config) error {
	c, err := cfg.Normalize()
	if err != nil {
		return err
	}
	b.mu.Lock()
	old := b.cfg
	b.setConfig(c)
	if c.Window != old.Window {
		b.win.clear()
		b.win.width = c.Window / windowBuckets
		b.forget()
	}
	if c.Mode != old.Mode && c.Mode != b.state {
		switch c.Mode {
		case Closed, MetricsOnly:
			b.enterWindowed(c.Mode)
		case Disabled:
			b.transition(Disabled, nil)
		}
	}
	if b.state == HalfOpen && b.hoSucc >= c.HalfOpenMaxCalls {
		b.enterWindowed(Closed) // the probes already had enough successes
	}
	if b.state == Closed {
		b.updateThrottle(b.clock())
	}
	b.unlockAndDispatch()
	return nil
}

// Retire stops the breaker's state-change callbacks for good: OnStateChange
// is never called again, not even for changes already queued. The breaker
// keeps working otherwise. Use it for a breaker that a reload dropped, so
// that calls still in flight can finish with it but it stays silent.
func (b *Breaker) Retire() {
	b.mu.Lock()
	b.retired = true
	b.events = nil
	b.mu.Unlock()
}

// ForceOpen forces the breaker open (ForcedOpen): every call is rejected until
// Reset.
func (b *Breaker) ForceOpen() {
	b.mu.Lock()
	if b.state != ForcedOpen {
		b.transition(ForcedOpen, &OpenError{name: b.cfg.Name, state: ForcedOpen})
	}
	b.unlockAndDispatch()
}

// Reset closes the breaker from any state: it clears the window, the streak
// and the throttle and starts a new generation (even if the breaker was
// already closed). Lifetime counters are kept.
func (b *Breaker) Reset() {
	b.mu.Lock()
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
