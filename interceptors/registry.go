package interceptors

import (
	"maps"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/khive/grpc-resilience/breaker"
)

// DefaultMaxBreakers is the default cap on the breakers of a Suite (see
// WithMaxBreakers).
const DefaultMaxBreakers = 10000

// sweepInterval is the least time between two sweeps (registry.sweep).
const sweepInterval = time.Second

// bkey identifies a breaker in the registry: the target and the method by
// default, or ("", key) with WithBreakerKey.
type bkey struct{ target, name string }

// record is one breaker of the registry and what Update needs to reconfigure it.
type record struct {
	brk    *breaker.Breaker
	name   string // the breaker's name: the method, or the WithBreakerKey key
	method string // the method that created it; its policy configures it
	target string // the target of the default key; "" with WithBreakerKey
	pol    *policy
	// overflow marks the overflow breaker of pol (registry.get);
	// forced, that pol was forced open when last applied (registry.mu).
	overflow, forced bool
	changed          atomic.Int64 // the latest state change (Unix ns), 0 if none

	// The idle sweep (registry.mu).
	sig   breakerSig
	swept bool // sig was taken by a sweep
}

// breakerSig is what changes when a breaker is used.
type breakerSig struct {
	state                                   breaker.State
	calls, rejections, throttled, gen, tran uint64
}

// registry holds the breakers of a Suite across Updates (see reconfigure):
// at most max, plus one overflow breaker per policy ([WithMaxBreakers]).
type registry struct {
	// tab is the suite's table. Dropping breakers replaces it with a copy,
	// which makes every cached entry stale.
	tab      *atomic.Pointer[table]
	mu       sync.Mutex
	recs     map[bkey]*record
	overflow map[string]*record // policy key -> its overflow breaker
	max      int
	hook     func(name, target string, from, to breaker.State) // the suite's hooks (recordingHook)

	lastSweep  time.Time
	evicted    uint64
	overflowed atomic.Uint64 // resolutions served by an overflow breaker
}

// breakerConfig returns the configuration of rec's breaker under pol: its
// OnStateChange stamps rec.changed and calls the policy's, then the suite's
// hooks with rec's target.
func (r *registry) breakerConfig(pol *policy, rec *record) breaker.Config {
	cfg := pol.cfg
	cfg.Name = rec.name
	user, hook, target := cfg.OnStateChange, r.hook, rec.target
	cfg.OnStateChange = func(name string, from, to breaker.State) {
		rec.changed.Store(time.Now().UnixNano())
		if user != nil {
			user(name, from, to)
		}
		hook(name, target, from, to)
	}
	return cfg
}

// newBreaker creates rec's breaker under rec.pol and returns rec; under a
// forced-open policy of tab it starts forced open. The start is no state
// change: no hook is called (r.mu is held).
func (r *registry) newBreaker(tab *table, rec *record) *record {
	cfg := r.breakerConfig(rec.pol, rec)
	if rec.forced = tab.forced[rec.pol.key]; !rec.forced {
		rec.brk, _ = breaker.New(cfg) // pol.cfg was validated
		return rec
	}
	quiet := cfg
	quiet.OnStateChange = nil
	rec.brk, _ = breaker.New(quiet)
	rec.brk.ForceOpen()
	_ = rec.brk.Reconfigure(cfg) // same Mode: keeps ForcedOpen
	return rec
}

// get returns the record of the breaker of method called on target under
// pol, creating it on first use, or the policy's overflow breaker when the
// registry is full of breakers in use. It returns nil if tab is no longer
// the suite's table (an Update ran): the caller resolves again.
func (r *registry) get(s *Suite, tab *table, target, method string, pol *policy) *record {
	k := bkey{target: target, name: method}
	if s.o.breakerKey != nil {
		k = bkey{name: s.o.breakerKey(target, method)}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if s.tab.Load() != tab {
		return nil
	}
	if r.recs == nil {
		r.recs, r.overflow = map[bkey]*record{}, map[string]*record{}
	}
	if rec := r.recs[k]; rec != nil {
		return rec
	}
	if len(r.recs) >= r.max {
		r.sweep(time.Now())
		if s.tab.Load() != tab {
			return nil // breakers were dropped: resolve again
		}
		if len(r.recs) >= r.max { // the policy's overflow breaker
			r.overflowed.Add(1)
			rec := r.overflow[pol.key]
			if rec == nil {
				rec = r.newBreaker(tab, &record{name: pol.key + " (overflow)", pol: pol, overflow: true})
				r.overflow[pol.key] = rec
			}
			return rec
		}
	}
	rec := r.newBreaker(tab, &record{name: k.name, method: method, target: k.target, pol: pol})
	r.recs[k] = rec
	return rec
}

// sweep evicts the closed breakers whose counts did not change since the
// previous sweep, at most once per sweepInterval (r.mu held).
func (r *registry) sweep(now time.Time) {
	if !r.lastSweep.IsZero() && now.Sub(r.lastSweep) < sweepInterval {
		return
	}
	r.lastSweep = now
	r.evicted += uint64(r.dropWhere(func(_ bkey, rec *record) bool {
		c := rec.brk.Counts()
		sig := breakerSig{c.State, c.Successes + c.Failures + c.Ignored, c.Rejections, c.Throttled, c.Generation, c.Transitions}
		idle := rec.swept && sig == rec.sig && sig.state == breaker.Closed
		rec.sig, rec.swept = sig, true
		return idle
	}))
}

// dropTargets drops the closed breakers of the targets in gone, which have
// no connection left (see [Suite]).
func (r *registry) dropTargets(gone map[string]bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dropWhere(func(k bkey, rec *record) bool { return gone[k.target] && rec.brk.State() == breaker.Closed })
}

// dropWhere removes the breakers that drop selects and retires them (r.mu
// held). If it removed any, it replaces the suite's table with a copy (as
// every writer of the table, under r.mu), so that no cached entry keeps
// using them. It returns how many it removed.
func (r *registry) dropWhere(drop func(bkey, *record) bool) int {
	n := 0
	for k, rec := range r.recs {
		if drop(k, rec) {
			delete(r.recs, k)
			rec.brk.Retire()
			n++
		}
	}
	if n > 0 {
		t := *r.tab.Load()
		r.tab.Store(&t)
	}
	return n
}

// Update replaces the suite's policies, validated as by New; on error
// nothing changes. The swap is atomic: a call started before it finishes
// under its policy (its breaker takes the new settings at once), a call
// started after it uses the new one, and no call fails because of it.
//
// Each breaker follows the new policy of its method (with WithBreakerKey: of
// the method that first used its key) and keeps its state and counts; it is
// reconfigured ([breaker.Breaker.Reconfigure]) only if its normalized
// settings changed. A policy that becomes forced open forces its breakers
// open; one that stops being so returns its breakers still forced open to
// its Mode. A breaker whose method no policy covers is dropped: it calls no
// hook again, and calls in flight finish with it. Retry budgets are fixed at
// New and outlive every Update.
//
// Updates are applied one at a time, concurrently with calls. A hook must
// not call Update: a change of Mode calls the hooks during the Update.
func (s *Suite) Update(policies map[string]Policy) error {
	tab, errs := s.resolve(policies)
	if errs != nil {
		return joinErrors(errs)
	}
	s.umu.Lock()
	defer s.umu.Unlock()
	s.reg.mu.Lock()
	s.tab.Store(tab)
	todo := s.reg.reconfigure(tab)
	s.reg.mu.Unlock()
	for _, r := range todo {
		r.apply()
	}
	return nil
}

// policy returns the policy stored under key, or nil.
func (t *table) policy(key string) *policy {
	switch {
	case key == "*":
		return t.star
	case strings.HasSuffix(key, "/*"):
		return t.service[key[:len(key)-1]]
	default:
		return t.exact[key]
	}
}

// reconfigure points every breaker at its policy under tab (r.mu held) and
// returns the breakers whose normalized configuration or forced-open state
// changed, which the caller reconfigures after releasing r.mu (a change of
// Mode may call OnStateChange, which may call the Suite), as [Suite.Update]
// says; a breaker whose policy is gone is retired.
func (r *registry) reconfigure(tab *table) []reconf {
	var out []reconf
	// retired points rec at pol, or retires it if pol is nil.
	retired := func(rec *record, pol *policy) bool {
		if pol == nil {
			rec.brk.Retire()
			return true
		}
		forced := tab.forced[pol.key]
		if forced != rec.forced || !reflect.DeepEqual(rec.pol.cfg, pol.cfg) { // unequal if either has a hook
			out = append(out, reconf{brk: rec.brk, cfg: r.breakerConfig(pol, rec),
				isolate: forced && !rec.forced, release: !forced && rec.forced})
		}
		rec.pol, rec.forced = pol, forced
		return false
	}
	maps.DeleteFunc(r.recs, func(_ bkey, rec *record) bool { return retired(rec, tab.match(rec.method)) })
	maps.DeleteFunc(r.overflow, func(key string, rec *record) bool { return retired(rec, tab.policy(key)) })
	return out
}

// reconf is a breaker to reconfigure and its new configuration.
type reconf struct {
	brk *breaker.Breaker
	cfg breaker.Config
	// isolate: the policy became forced open. release: it no longer is,
	// and a breaker still forced open switches to cfg.Mode.
	isolate, release bool
}

// apply reconfigures the breaker (r.mu not held: it may call the hooks).
func (rc reconf) apply() {
	_ = rc.brk.Reconfigure(rc.cfg) // validated by resolve: cannot fail
	switch {
	case rc.isolate:
		rc.brk.ForceOpen()
	case rc.release && rc.brk.State() == breaker.ForcedOpen:
		setModes[rc.cfg.Mode](rc.brk) // Closed, Disabled or MetricsOnly: the policy's cfg
	}
}
