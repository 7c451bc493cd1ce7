package interceptors

import (
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/retry"
)

// Update replaces the suite's policies with policies, validated as New
// validates them; on error nothing changes. The swap is atomic: a call or
// stream started before it finishes under the policy it started with (its
// retries, classification and fallback; its breaker takes the new breaker
// settings at once, as every breaker does), and every call started after it
// uses the new policies. No call fails because of an Update.
//
// State is kept:
//
//   - Breakers: each breaker takes the breaker settings of the new policy of
//     its method (with WithBreakerKey: of the method that first used its
//     key) and keeps its state and counts: an open breaker stays open for
//     the rest of its open period, a half-open one keeps its probes, a
//     closed one its statistics (its rolling window is cleared only if
//     Window changed). A change of Mode (Closed, Disabled, MetricsOnly)
//     switches the breaker to that mode; a policy that becomes forced open
//     (Breaker.Mode breaker.ForcedOpen) isolates its breakers, and one that
//     stops being forced open switches its breakers still forced open to
//     its Mode (a breaker that SetMode forced open under another policy
//     stays so). A breaker whose method no policy
//     covers any more is dropped: it never calls a hook again, and a call
//     still in flight finishes with it.
//   - Retry budgets are never reset: the budget settings (WithBudget,
//     WithTokenBucket, WithoutBudget) are fixed at New, and each target's
//     budget, with its deposits or tokens, outlives every Update. To change
//     the budget settings, build a new Suite.
//
// Updates may run concurrently with calls and with each other (they are
// applied one at a time; the last one wins). A hook (WithOnStateChange,
// Breaker.OnStateChange) must not call Update: a change of Mode calls the
// hooks during the Update.
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

// Snapshot is a point-in-time view of a Suite, for dashboards and debugging:
// the effective policies (defaults applied), the state and counts of the
// breaker of every method called since its policy key was installed, and
// the retry budgets. Its JSON form (encoding/json) is stable; the policy
// fields have the names of the config document (package config), so an
// effective policy reads like the document that would produce it:
//
//	{
//	  "policies": [{
//	    "key": "/pkg.Svc/*",
//	    "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.100s", "maxBackoff": "1s",
//	      "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"], "jitter": "proportional",
//	      "jitterFactor": 0.2, "minAttemptTime": "0.001s", "maxPushback": "30s"},
//	    "circuitBreaker": {"mode": "closed", "consecutiveFailures": 12, "throttleK": 2,
//	      "failureRate": 0, "minimumCalls": 20, "window": "10s", "recoveryTime": "1s",
//	      "maxRecoveryTime": "60s", "recoveryJitter": 0.2, "halfOpenMaxCalls": 1,
//	      "halfOpenMaxWait": "1s", "failureStatusCodes": ["UNKNOWN", ...]},
//	    "fallback": false
//	  }],
//	  "methods": [{
//	    "method": "/pkg.Svc/Get", "target": "dns:///svc:443", "policy": "/pkg.Svc/*",
//	    "state": "closed", "successes": 10, "failures": 1, "ignored": 0, "rejections": 0,
//	    "throttled": 0, "transitions": 0, "consecutiveFailures": 0, "windowCalls": 11,
//	    "windowFailures": 1, "windowThrottled": 0, "throttleProbability": 0, "shadowTrips": 0,
//	    "since": "2026-01-02T15:04:05.999Z"
//	  }],
//	  "passThrough": [{"method": "/grpc.health.v1.Health/Check", "target": "dns:///svc:443"}],
//	  "breakers": {"count": 1, "max": 10000, "overflowed": 0, "evicted": 0},
//	  "budget": {"mode": "ratio", "ratio": 0.2, "minRetriesPerSecond": 1, "window": "10s",
//	    "targets": [{"target": "dns:///svc:443", "balance": 12.4, "reserve": 10,
//	      "allowed": 3, "refused": 0}]}
//	}
//
// Durations are strings of seconds as in the config document ("0.100s");
// status codes are the upper-case names of grpc service configs; a rule
// that is off shows 0 (consecutiveFailures, throttleK, failureRate), and so
// does a half-open that never waits (halfOpenMaxWait "0s"); lists are sorted
// (policies by key, methods by name then target, targets by name).
type Snapshot struct {
	Policies []SnapshotPolicy `json:"policies"`
	Methods  []SnapshotMethod `json:"methods"`
	// PassThrough lists the methods called without a policy (they pass
	// through untouched) on each open connection, as far as the
	// connection's method cache holds them (at most 4096 methods per
	// connection, those with a policy included).
	PassThrough []SnapshotPassThrough `json:"passThrough"`
	Breakers    SnapshotBreakers      `json:"breakers"`
	Budget      SnapshotBudget        `json:"budget"`
}

// SnapshotPassThrough is a method without a policy called on a target.
type SnapshotPassThrough struct {
	Method string `json:"method"`
	Target string `json:"target"`
}

// SnapshotBreakers is the suite's breaker count against its cap
// (WithMaxBreakers).
type SnapshotBreakers struct {
	// Count is the number of breakers, overflow breakers excluded.
	Count int `json:"count"`
	// Max is the cap.
	Max int `json:"max"`
	// Overflowed counts the lookups served by an overflow breaker because
	// the suite was full (a method's first call on a connection, and every
	// call of a method its connection's cache has no room for).
	Overflowed uint64 `json:"overflowed"`
	// Evicted counts the idle closed breakers dropped to make room.
	Evicted uint64 `json:"evicted"`
}

// SnapshotPolicy is one effective policy.
type SnapshotPolicy struct {
	Key     string          `json:"key"`
	Retry   SnapshotRetry   `json:"retryPolicy"`
	Breaker SnapshotBreaker `json:"circuitBreaker"`
	// Fallback tells whether the policy has a Fallback function.
	Fallback bool `json:"fallback"`
}

// SnapshotRetry is a policy's effective retry settings.
type SnapshotRetry struct {
	MaxAttempts       int      `json:"maxAttempts"`
	InitialBackoff    string   `json:"initialBackoff"`
	MaxBackoff        string   `json:"maxBackoff"`
	BackoffMultiplier float64  `json:"backoffMultiplier"`
	RetryableCodes    []string `json:"retryableStatusCodes"`
	Jitter            string   `json:"jitter"`                      // "full", "proportional" or "none"
	JitterFactor      float64  `json:"jitterFactor,omitempty"`      // proportional jitter only
	PerAttemptTimeout string   `json:"perAttemptTimeout,omitempty"` // absent: none
	MinAttemptTime    string   `json:"minAttemptTime"`
	MaxPushback       string   `json:"maxPushback"`
}

// SnapshotBreaker is a policy's effective breaker settings.
type SnapshotBreaker struct {
	Mode                string   `json:"mode"` // "closed", "disabled", "metrics-only" or "forced-open"
	ConsecutiveFailures int      `json:"consecutiveFailures"`
	ThrottleK           float64  `json:"throttleK"`
	FailureRate         float64  `json:"failureRate"`
	MinimumCalls        int      `json:"minimumCalls"`
	Window              string   `json:"window"`
	RecoveryTime        string   `json:"recoveryTime"`
	MaxRecoveryTime     string   `json:"maxRecoveryTime"`
	RecoveryJitter      float64  `json:"recoveryJitter"`
	HalfOpenMaxCalls    int      `json:"halfOpenMaxCalls"`
	HalfOpenMaxWait     string   `json:"halfOpenMaxWait"`
	FailureCodes        []string `json:"failureStatusCodes"`
}

// SnapshotMethod is one breaker (breaker.Counts): the breaker of a method on
// a target, of a WithBreakerKey key, or the overflow breaker of a policy
// (WithMaxBreakers), and the policy key it belongs to.
type SnapshotMethod struct {
	// Method is the breaker's name: the method, the WithBreakerKey key, or
	// "<policy key> (overflow)" for an overflow breaker.
	Method string `json:"method"`
	// Target is the target (cc.Target()) of a method's breaker; empty for a
	// WithBreakerKey key or an overflow breaker.
	Target   string `json:"target,omitempty"`
	Policy   string `json:"policy"`
	Overflow bool   `json:"overflow,omitempty"`
	State    string `json:"state"` // breaker.State.String()
	// Since is when the breaker last changed state (absent: never).
	Since *time.Time `json:"since,omitempty"`
	// RetryAfter is the time left in the open period of an open breaker, as
	// a duration string ("0.250s"); absent otherwise.
	RetryAfter string `json:"retryAfter,omitempty"`

	Successes           uint64  `json:"successes"`
	Failures            uint64  `json:"failures"`
	Ignored             uint64  `json:"ignored"`
	Rejections          uint64  `json:"rejections"`
	Throttled           uint64  `json:"throttled"`
	Transitions         uint64  `json:"transitions"`
	ConsecutiveFailures uint64  `json:"consecutiveFailures"`
	WindowCalls         uint64  `json:"windowCalls"`
	WindowFailures      uint64  `json:"windowFailures"`
	WindowThrottled     uint64  `json:"windowThrottled"`
	ThrottleProbability float64 `json:"throttleProbability"`
	ShadowTrips         uint64  `json:"shadowTrips"`
}

// SnapshotBudget is the suite's retry budget settings and the live budget
// of every target with an open connection.
type SnapshotBudget struct {
	Mode string `json:"mode"` // "ratio", "token-bucket" or "none"
	// Ratio mode.
	Ratio               float64 `json:"ratio,omitempty"`
	MinRetriesPerSecond float64 `json:"minRetriesPerSecond,omitempty"`
	Window              string  `json:"window,omitempty"`
	// Token-bucket mode.
	MaxTokens  float64 `json:"maxTokens,omitempty"`
	TokenRatio float64 `json:"tokenRatio,omitempty"`

	Targets []SnapshotTarget `json:"targets"`
}

// SnapshotTarget is the live budget of one target (retry.BudgetSnapshot).
type SnapshotTarget struct {
	Target  string  `json:"target"`
	Balance float64 `json:"balance"` // ratio: retries allowed now; token bucket: tokens
	Reserve float64 `json:"reserve"`
	Allowed uint64  `json:"allowed"`
	Refused uint64  `json:"refused"`
}

// Snapshot returns the suite's current state (see Snapshot): every
// breaker of the suite, whether or not it was called since the last Update.
// It reads the breakers and budgets without stopping calls, so counts of
// different methods may be a few calls apart.
func (s *Suite) Snapshot() Snapshot {
	snap := Snapshot{Policies: []SnapshotPolicy{}, Methods: []SnapshotMethod{}}
	snap.Budget = s.budgetView() // first: it drops the state of closed connections
	var conns []*conn
	s.conns.Range(func(_, v any) bool {
		conns = append(conns, v.(*conn))
		return true
	})
	type view struct {
		rec *record
		pol string
	}
	var recs []view
	s.reg.mu.Lock()
	tab := s.tab.Load()
	for _, rec := range s.reg.recs {
		recs = append(recs, view{rec, rec.pol.key})
	}
	for _, rec := range s.reg.overflow {
		recs = append(recs, view{rec, rec.pol.key})
	}
	snap.Breakers = SnapshotBreakers{Count: len(s.reg.recs), Max: s.reg.max, Overflowed: s.reg.overflowed.Load(), Evicted: s.reg.evicted}
	s.reg.mu.Unlock()

	var pols []*policy
	for _, p := range tab.exact {
		pols = append(pols, p)
	}
	for _, p := range tab.service {
		pols = append(pols, p)
	}
	if tab.star != nil {
		pols = append(pols, tab.star)
	}
	slices.SortFunc(pols, func(a, b *policy) int { return strings.Compare(a.key, b.key) })
	for _, p := range pols {
		pv := policyView(p)
		if tab.forced[p.key] {
			pv.Breaker.Mode = breaker.ForcedOpen.String()
		}
		snap.Policies = append(snap.Policies, pv)
	}
	for _, v := range recs {
		c := v.rec.brk.Counts()
		m := methodView(v.rec.name, v.pol, c)
		m.Target, m.Overflow = v.rec.target, v.rec.overflow
		if ns := v.rec.changed.Load(); ns != 0 {
			t := time.Unix(0, ns)
			m.Since = &t
		}
		if d := time.Until(c.OpenUntil); !c.OpenUntil.IsZero() && d > 0 {
			m.RetryAfter = seconds(d.Round(time.Millisecond))
		}
		snap.Methods = append(snap.Methods, m)
	}
	snap.PassThrough = passThrough(tab, conns)
	slices.SortFunc(snap.Methods, func(a, b SnapshotMethod) int {
		if c := strings.Compare(a.Method, b.Method); c != 0 {
			return c
		}
		return strings.Compare(a.Target, b.Target)
	})
	return snap
}

// passThrough lists the methods without a policy under tab in the method
// caches of conns, sorted by method then target.
func passThrough(tab *table, conns []*conn) []SnapshotPassThrough {
	out := []SnapshotPassThrough{}
	seen := map[SnapshotPassThrough]bool{}
	for _, c := range conns {
		c.methods.Range(func(k, v any) bool {
			if e := v.(*entry); e.pol == nil && tab.match(e.method) == nil {
				p := SnapshotPassThrough{Method: e.method, Target: c.name}
				if !seen[p] {
					seen[p] = true
					out = append(out, p)
				}
			}
			return true
		})
	}
	slices.SortFunc(out, func(a, b SnapshotPassThrough) int {
		if c := strings.Compare(a.Method, b.Method); c != 0 {
			return c
		}
		return strings.Compare(a.Target, b.Target)
	})
	return out
}

func policyView(p *policy) SnapshotPolicy {
	r := p.retry
	v := SnapshotPolicy{
		Key: p.key,
		Retry: SnapshotRetry{
			MaxAttempts:       p.maxAttempts,
			InitialBackoff:    seconds(orDefault(r.InitialBackoff, retry.DefaultInitialBackoff)),
			MaxBackoff:        seconds(orDefault(r.MaxBackoff, retry.DefaultMaxBackoff)),
			BackoffMultiplier: r.Multiplier,
			RetryableCodes:    codeNames(p.retryable),
			Jitter:            r.Jitter.String(),
			MinAttemptTime:    seconds(orDefault(r.MinAttemptTime, retry.DefaultMinAttemptTime)),
			MaxPushback:       seconds(orDefault(r.MaxPushback, retry.DefaultMaxPushback)),
		},
		Breaker:  breakerView(p.cfg),
		Fallback: p.fallback != nil,
	}
	if v.Retry.BackoffMultiplier == 0 {
		v.Retry.BackoffMultiplier = retry.DefaultMultiplier
	}
	if r.Jitter == retry.ProportionalJitter {
		v.Retry.JitterFactor = r.JitterFactor
		if v.Retry.JitterFactor == 0 {
			v.Retry.JitterFactor = retry.DefaultJitterFactor
		}
	}
	if r.AttemptTimeout > 0 {
		v.Retry.PerAttemptTimeout = seconds(r.AttemptTimeout)
	}
	v.Breaker.FailureCodes = codeNames(p.failure)
	return v
}

// breakerView is c with the breaker defaults applied (FailureCodes left
// nil).
func breakerView(c breaker.Config) SnapshotBreaker {
	v := SnapshotBreaker{
		Mode:                c.Mode.String(),
		ConsecutiveFailures: c.ConsecutiveFailures,
		ThrottleK:           c.ThrottleK,
		FailureRate:         c.FailureRate,
		MinimumCalls:        c.MinimumCalls,
		Window:              seconds(orDefault(c.Window, breaker.DefaultWindow)),
		RecoveryTime:        seconds(orDefault(c.RecoveryTime, breaker.DefaultRecoveryTime)),
		MaxRecoveryTime:     seconds(orDefault(c.MaxRecoveryTime, breaker.DefaultMaxRecoveryTime)),
		RecoveryJitter:      c.RecoveryJitter,
		HalfOpenMaxCalls:    c.HalfOpenMaxCalls,
		HalfOpenMaxWait:     seconds(max(orDefault(c.HalfOpenMaxWait, breaker.DefaultHalfOpenMaxWait), 0)),
	}
	switch {
	case v.ThrottleK == 0:
		v.ThrottleK = breaker.DefaultThrottleK
	case v.ThrottleK < 0:
		v.ThrottleK = 0 // off
	}
	switch {
	case v.ConsecutiveFailures == 0:
		v.ConsecutiveFailures = breaker.DefaultConsecutiveFailures
	case v.ConsecutiveFailures < 0:
		v.ConsecutiveFailures = 0 // off
	}
	if v.MinimumCalls == 0 {
		v.MinimumCalls = breaker.DefaultMinimumCalls
	}
	switch {
	case v.RecoveryJitter == 0:
		v.RecoveryJitter = breaker.DefaultRecoveryJitter
	case v.RecoveryJitter < 0:
		v.RecoveryJitter = 0 // none
	}
	if v.HalfOpenMaxCalls == 0 {
		v.HalfOpenMaxCalls = breaker.DefaultHalfOpenMaxCalls
	}
	return v
}

func methodView(method, key string, c breaker.Counts) SnapshotMethod {
	return SnapshotMethod{
		Method:              method,
		Policy:              key,
		State:               c.State.String(),
		Successes:           c.Successes,
		Failures:            c.Failures,
		Ignored:             c.Ignored,
		Rejections:          c.Rejections,
		Throttled:           c.Throttled,
		Transitions:         c.Transitions,
		ConsecutiveFailures: c.ConsecutiveFailures,
		WindowCalls:         c.WindowCalls,
		WindowFailures:      c.WindowFailures,
		WindowThrottled:     c.WindowThrottled,
		ThrottleProbability: c.ThrottleProbability,
		ShadowTrips:         c.ShadowTrips,
	}
}

func (s *Suite) budgetView() SnapshotBudget {
	v := SnapshotBudget{Targets: []SnapshotTarget{}}
	s.cmu.Lock()
	defer s.cmu.Unlock()
	s.sweepConns()
	switch s.o.budget {
	case budgetNone:
		v.Mode = "none"
		return v
	case budgetTokens:
		v.Mode = retry.TokenBucketMode.String()
		v.MaxTokens, v.TokenRatio = s.o.maxTokens, s.o.tokenRatio
	default:
		v.Mode = retry.RatioMode.String()
		c := s.o.budgetCfg
		v.Ratio = orDefaultF(c.Ratio, retry.DefaultBudgetRatio)
		v.MinRetriesPerSecond = orDefaultF(c.MinRetriesPerSecond, retry.DefaultMinRetriesPerSecond)
		v.Window = seconds(orDefault(c.Window, retry.DefaultBudgetWindow))
	}
	for name, t := range s.targets {
		bs := t.budget.Snapshot()
		v.Targets = append(v.Targets, SnapshotTarget{
			Target: name, Balance: bs.Balance, Reserve: bs.Reserve, Allowed: bs.Allowed, Refused: bs.Refused,
		})
	}
	slices.SortFunc(v.Targets, func(a, b SnapshotTarget) int { return strings.Compare(a.Target, b.Target) })
	return v
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

func orDefaultF(f, def float64) float64 {
	if f == 0 {
		return def
	}
	return f
}

// seconds formats d as the config document (and protojson) write durations:
// seconds with 0, 3, 6 or 9 decimals and an "s" ("5s", "0.100s").
func seconds(d time.Duration) string {
	neg := d < 0
	u := uint64(d)
	if neg {
		u = -u
	}
	sec, ns := u/1e9, u%1e9
	s := strconv.FormatUint(sec, 10)
	switch {
	case ns == 0:
	case ns%1e6 == 0:
		s += "." + pad(ns/1e6, 3)
	case ns%1e3 == 0:
		s += "." + pad(ns/1e3, 6)
	default:
		s += "." + pad(ns, 9)
	}
	if neg {
		s = "-" + s
	}
	return s + "s"
}

func pad(n uint64, width int) string {
	s := strconv.FormatUint(n, 10)
	return strings.Repeat("0", width-len(s)) + s
}

// codeNames lists the codes of set, in code order, by the upper-case names
// grpc service configs use ("UNAVAILABLE", "CANCELLED").
func codeNames(set codeSet) []string {
	out := []string{}
	for c := codes.Code(0); c < 64; c++ {
		if set.has(c) {
			out = append(out, codeName(c))
		}
	}
	return out
}

func codeName(c codes.Code) string {
	switch c {
	case codes.Canceled:
		return "CANCELLED"
	case codes.InvalidArgument:
		return "INVALID_ARGUMENT"
	case codes.DeadlineExceeded:
		return "DEADLINE_EXCEEDED"
	case codes.NotFound:
		return "NOT_FOUND"
	case codes.AlreadyExists:
		return "ALREADY_EXISTS"
	case codes.PermissionDenied:
		return "PERMISSION_DENIED"
	case codes.ResourceExhausted:
		return "RESOURCE_EXHAUSTED"
	case codes.FailedPrecondition:
		return "FAILED_PRECONDITION"
	case codes.OutOfRange:
		return "OUT_OF_RANGE"
	case codes.DataLoss:
		return "DATA_LOSS"
	case codes.OK, codes.Unknown, codes.Aborted, codes.Unimplemented, codes.Internal, codes.Unavailable, codes.Unauthenticated:
		return strings.ToUpper(c.String())
	}
	return strconv.Itoa(int(c))
}
