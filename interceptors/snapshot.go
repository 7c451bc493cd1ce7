package interceptors

import (
	"cmp"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/retry"
)

// Snapshot is a point-in-time view of a Suite, for dashboards and debugging:
// the effective policies (normalized), the state and counts of every
// breaker, and the retry budgets. Its JSON form (encoding/json) is stable:
// policy fields have the names of the config document (package config);
// durations are strings of seconds as there ("0.100s"); status codes are
// upper-case names ("UNAVAILABLE"); a rule that is off shows 0
// (consecutiveFailures, throttleK, failureRate, halfOpenMaxWait); lists are
// sorted (policies by key, methods by name then target, targets by name).
type Snapshot struct {
	Policies []SnapshotPolicy `json:"policies"`
	Methods  []SnapshotMethod `json:"methods"`
	// PassThrough lists the methods without a policy called on each open
	// connection, as far as the connection's method cache holds them.
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
// ([WithMaxBreakers]).
type SnapshotBreakers struct {
	Count      int    `json:"count"` // overflow breakers excluded
	Max        int    `json:"max"`
	Overflowed uint64 `json:"overflowed"` // lookups served by an overflow breaker
	Evicted    uint64 `json:"evicted"`    // idle closed breakers dropped to make room
}

// SnapshotPolicy is one effective policy.
type SnapshotPolicy struct {
	Key      string          `json:"key"`
	Retry    SnapshotRetry   `json:"retryPolicy"`
	Breaker  SnapshotBreaker `json:"circuitBreaker"`
	Fallback bool            `json:"fallback"` // the policy has a Fallback
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

// SnapshotMethod is one breaker and its [breaker.Counts].
type SnapshotMethod struct {
	// Method and Target are the breaker's name and target, as in
	// [StateChangeEvent].
	Method   string `json:"method"`
	Target   string `json:"target,omitempty"`
	Policy   string `json:"policy"`
	Overflow bool   `json:"overflow,omitempty"`
	State    string `json:"state"` // breaker.State.String()
	// Since is when the breaker last changed state (absent: never);
	// RetryAfter, an open breaker's time left ("0.250s").
	Since      *time.Time `json:"since,omitempty"`
	RetryAfter string     `json:"retryAfter,omitempty"`

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

// Snapshot returns the suite's current state: every breaker of the suite,
// whether or not it was called since the last Update. It reads the breakers
// and budgets without stopping calls, so counts of different methods may be
// a few calls apart.
func (s *Suite) Snapshot() Snapshot {
	snap := Snapshot{Policies: []SnapshotPolicy{}, Methods: []SnapshotMethod{}}
	snap.Budget = s.budgetView() // first: it drops the state of closed connections
	s.reg.mu.Lock()
	tab := s.tab.Load()
	recs := slices.AppendSeq(slices.Collect(maps.Values(s.reg.recs)), maps.Values(s.reg.overflow))
	keys := make([]string, len(recs)) // a record's policy changes under reg.mu
	for i, rec := range recs {
		keys[i] = rec.pol.key
	}
	snap.Breakers = SnapshotBreakers{Count: len(s.reg.recs), Max: s.reg.max,
		Overflowed: s.reg.overflowed.Load(), Evicted: s.reg.evicted}
	s.reg.mu.Unlock()
	for i, rec := range recs {
		snap.Methods = append(snap.Methods, methodView(rec, keys[i]))
	}

	pols := slices.AppendSeq(slices.Collect(maps.Values(tab.exact)), maps.Values(tab.service))
	if tab.star != nil {
		pols = append(pols, tab.star)
	}
	slices.SortFunc(pols, func(a, b *policy) int { return strings.Compare(a.key, b.key) })
	for _, p := range pols {
		snap.Policies = append(snap.Policies, policyView(p, tab.forced[p.key]))
	}
	slices.SortFunc(snap.Methods, func(a, b SnapshotMethod) int {
		return cmp.Or(strings.Compare(a.Method, b.Method), strings.Compare(a.Target, b.Target))
	})
	snap.PassThrough = s.passThrough(tab)
	return snap
}

// passThrough lists the methods without a policy under tab in the method
// caches of the suite's connections, sorted by method then target.
func (s *Suite) passThrough(tab *table) []SnapshotPassThrough {
	out := []SnapshotPassThrough{}
	s.conns.Range(func(_, c any) bool {
		c.(*conn).methods.Range(func(_, v any) bool {
			if e := v.(*entry); e.pol == nil && tab.match(e.method) == nil {
				out = append(out, SnapshotPassThrough{Method: e.method, Target: c.(*conn).name})
			}
			return true
		})
		return true
	})
	slices.SortFunc(out, func(a, b SnapshotPassThrough) int {
		return cmp.Or(strings.Compare(a.Method, b.Method), strings.Compare(a.Target, b.Target))
	})
	return slices.Compact(out)
}

func policyView(p *policy, forced bool) SnapshotPolicy {
	r, c := p.retry, p.cfg
	v := SnapshotPolicy{
		Key: p.key,
		Retry: SnapshotRetry{
			MaxAttempts:       r.MaxAttempts,
			InitialBackoff:    seconds(r.InitialBackoff),
			MaxBackoff:        seconds(r.MaxBackoff),
			BackoffMultiplier: r.Multiplier,
			RetryableCodes:    codeNames(p.retryable),
			Jitter:            r.Jitter.String(),
			MinAttemptTime:    seconds(r.MinAttemptTime),
			MaxPushback:       seconds(r.MaxPushback),
		},
		Breaker: SnapshotBreaker{
			Mode:                c.Mode.String(),
			ConsecutiveFailures: max(c.ConsecutiveFailures, 0), // off (-1) shows 0
			ThrottleK:           max(c.ThrottleK, 0),
			FailureRate:         c.FailureRate,
			MinimumCalls:        c.MinimumCalls,
			Window:              seconds(c.Window),
			RecoveryTime:        seconds(c.RecoveryTime),
			MaxRecoveryTime:     seconds(c.MaxRecoveryTime),
			RecoveryJitter:      max(c.RecoveryJitter, 0),
			HalfOpenMaxCalls:    c.HalfOpenMaxCalls,
			HalfOpenMaxWait:     seconds(max(c.HalfOpenMaxWait, 0)),
			FailureCodes:        codeNames(p.failure),
		},
		Fallback: p.fallback != nil,
	}
	if r.Jitter == retry.ProportionalJitter {
		v.Retry.JitterFactor = r.JitterFactor
	}
	if r.AttemptTimeout > 0 {
		v.Retry.PerAttemptTimeout = seconds(r.AttemptTimeout)
	}
	if forced {
		v.Breaker.Mode = breaker.ForcedOpen.String()
	}
	return v
}

// methodView returns the view of rec, whose policy key is key.
func methodView(rec *record, key string) SnapshotMethod {
	c := rec.brk.Counts()
	m := SnapshotMethod{
		Method:              rec.name,
		Target:              rec.target,
		Policy:              key,
		Overflow:            rec.overflow,
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
	if ns := rec.changed.Load(); ns != 0 {
		t := time.Unix(0, ns)
		m.Since = &t
	}
	if d := time.Until(c.OpenUntil); !c.OpenUntil.IsZero() && d > 0 {
		m.RetryAfter = seconds(d.Round(time.Millisecond))
	}
	return m
}

func (s *Suite) budgetView() SnapshotBudget {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	s.sweepConns()
	v := SnapshotBudget{Mode: s.o.budget, Targets: []SnapshotTarget{}}
	switch v.Mode {
	case "none":
		return v
	case "token-bucket":
		v.MaxTokens, v.TokenRatio = s.o.maxTokens, s.o.tokenRatio
	default:
		c := s.o.budgetCfg
		v.Ratio, v.MinRetriesPerSecond, v.Window = c.Ratio, c.MinRetriesPerSecond, seconds(c.Window)
	}
	for name, t := range s.targets {
		bs := t.budget.Snapshot()
		v.Targets = append(v.Targets, SnapshotTarget{name, bs.Balance, bs.Reserve, bs.Allowed, bs.Refused})
	}
	slices.SortFunc(v.Targets, func(a, b SnapshotTarget) int { return strings.Compare(a.Target, b.Target) })
	return v
}

// seconds formats d as the config document writes durations: as protojson,
// seconds with 0, 3, 6 or 9 decimals and an "s" ("5s", "0.100s").
func seconds(d time.Duration) string {
	b, _ := protojson.Marshal(durationpb.New(d)) // every Duration is valid
	return strings.Trim(string(b), `"`)
}

// codeNames lists the codes of set, in code order, by the upper-case names
// grpc service configs use ("UNAVAILABLE", "CANCELLED"), or by number.
func codeNames(set codeSet) []string {
	out := []string{}
	for c := codes.Code(0); c < 64; c++ {
		if set.has(c) {
			out = append(out, cmp.Or(code.Code_name[int32(c)], strconv.Itoa(int(c))))
		}
	}
	return out
}
