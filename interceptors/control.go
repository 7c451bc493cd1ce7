package interceptors

import (
	"cmp"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/khive/grpc-resilience/breaker"
)

// ErrUnknownBreaker is matched (errors.Is) by the error of SetMode when no
// breaker has the name and target given: the method was never called since
// its policy was installed, its breaker was dropped (idle, or its
// connection's target closed), or the name is wrong.
var ErrUnknownBreaker = errors.New("interceptors: no such breaker")

// ErrNotReady is matched (errors.Is) by the error of Ready.
var ErrNotReady = errors.New("interceptors: not ready")

// SetMode switches breakers by hand, as an operator would: mode
// breaker.ForcedOpen isolates (every call rejected until the next SetMode),
// breaker.Closed resets (closes with an empty window and starts a new
// generation), breaker.Disabled and breaker.MetricsOnly switch to those
// modes (see the breaker package). Any other mode is an error.
//
// name and target select breakers as [StateChangeEvent] names them; target
// "" selects every breaker of that name. SetMode returns an error matching
// ErrUnknownBreaker if no breaker matches.
//
// The mode holds until the breaker's next manual or automatic change: a
// ForcedOpen or Disabled breaker stays so, a Closed or MetricsOnly one
// follows its trip rules. An Update keeps it unless the policy's Mode
// changes; a breaker that is dropped (see Update, WithMaxBreakers) loses it.
// SetMode calls the state-change hooks, so a hook must not call it.
func (s *Suite) SetMode(name, target string, mode breaker.State) error {
	apply := setModes[mode]
	if apply == nil {
		return errors.New(`interceptors: SetMode: mode must be "forced-open", "closed", "disabled" or ` +
			`"metrics-only", got ` + quote(mode.String()))
	}
	var brks []*breaker.Breaker // switched after reg.mu is released: they call the hooks
	s.eachRecord(func(rec *record) {
		if rec.name == name && (target == "" || rec.target == target) {
			brks = append(brks, rec.brk)
		}
	})
	if len(brks) == 0 {
		msg := "interceptors: SetMode: no breaker " + quote(name)
		if target != "" {
			msg += " on target " + quote(target)
		}
		return &suiteError{msg, ErrUnknownBreaker}
	}
	for _, b := range brks {
		apply(b)
	}
	return nil
}

// setModes are the modes SetMode switches to.
var setModes = map[breaker.State]func(*breaker.Breaker){
	breaker.ForcedOpen:  (*breaker.Breaker).ForceOpen,
	breaker.Closed:      (*breaker.Breaker).Reset,
	breaker.Disabled:    (*breaker.Breaker).Disable,
	breaker.MetricsOnly: (*breaker.Breaker).MetricsOnly,
}

// eachRecord calls f with every record of the registry, overflow breakers
// last, under reg.mu.
func (s *Suite) eachRecord(f func(*record)) {
	s.reg.mu.Lock()
	defer s.reg.mu.Unlock()
	for _, rec := range s.reg.recs {
		f(rec)
	}
	for _, rec := range s.reg.overflow {
		f(rec)
	}
}

// Ready reports whether the breakers of methods admit calls, for readiness
// probes: nil when none of them is open or forced open, otherwise an error
// matching ErrNotReady that lists each such breaker with its target and
// state, sorted, as in
//
//	interceptors: not ready: "/pkg.Svc/Get" on "dns:///svc:443" is open
//
// With no methods it checks every breaker of the suite. A method matches a
// breaker's name ([StateChangeEvent.Breaker]) and the method that created
// the breaker; a method never called has no breaker and is ready. A
// half-open or throttling breaker is ready.
func (s *Suite) Ready(methods ...string) error {
	type bad struct{ name, target, state string }
	var open []bad
	s.eachRecord(func(rec *record) {
		if len(methods) > 0 && (rec.overflow ||
			!slices.Contains(methods, rec.name) && !slices.Contains(methods, rec.method)) {
			return
		}
		if st := rec.brk.State(); st == breaker.Open || st == breaker.ForcedOpen {
			open = append(open, bad{rec.name, rec.target, st.String()})
		}
	})
	if len(open) == 0 {
		return nil
	}
	slices.SortFunc(open, func(a, b bad) int {
		return cmp.Or(strings.Compare(a.name, b.name), strings.Compare(a.target, b.target))
	})
	msgs := make([]string, len(open))
	for i, b := range open {
		on := ""
		if b.target != "" {
			on = " on " + quote(b.target)
		}
		msgs[i] = quote(b.name) + on + " is " + b.state
	}
	return &suiteError{"interceptors: not ready: " + strings.Join(msgs, "; "), ErrNotReady}
}

// StateChange is one state change of one of the suite's breakers.
type StateChange struct {
	Time   time.Time `json:"time"`
	Method string    `json:"method"` // the breaker's name ([StateChangeEvent.Breaker])
	Target string    `json:"target,omitempty"`
	From   string    `json:"from"` // breaker.State.String()
	To     string    `json:"to"`
}

// RecentChanges is the number of state changes StateChanges keeps.
const RecentChanges = 50

// StateChanges returns the latest state changes of the suite's breakers
// (at most RecentChanges), oldest first, including those made by SetMode
// and by an Update's change of Mode.
func (s *Suite) StateChanges() []StateChange {
	r := &s.changes
	r.mu.Lock()
	defer r.mu.Unlock()
	k := min(r.n, RecentChanges)
	out := make([]StateChange, 0, k)
	for i := r.n - k; i < r.n; i++ {
		out = append(out, r.buf[i%RecentChanges])
	}
	return out
}

// changeRing keeps the latest RecentChanges state changes.
type changeRing struct {
	mu  sync.Mutex
	buf [RecentChanges]StateChange
	n   int // changes ever added
}

// recordingHook returns the hook every breaker's OnStateChange calls: it
// keeps the change (StateChanges) and calls next (the options' hooks).
func (s *Suite) recordingHook(
	next func(name, target string, from, to breaker.State),
) func(name, target string, from, to breaker.State) {
	return func(name, target string, from, to breaker.State) {
		r := &s.changes
		r.mu.Lock()
		r.buf[r.n%RecentChanges] = StateChange{time.Now(), name, target, from.String(), to.String()}
		r.n++
		r.mu.Unlock()
		next(name, target, from, to)
	}
}
