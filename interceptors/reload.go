package interceptors

import (
	"reflect"
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
// stream started before it finishes under the policy (and breaker) it
// started with, and every call started after it uses the new policies. No
// call fails because of an Update.
//
// State is kept where the settings did not change:
//
//   - Breakers: a policy key that is still present with the same breaker
//     settings (Breaker, with defaults applied, and FailureCodes) keeps its
//     breakers, open or closed, with their counts. A new key, or a key whose
//     breaker settings changed, starts with fresh (closed) breakers. A method
//     that moves to another key gets the breaker of that key. A key whose old or
//     new policy sets Breaker.OnStateChange always gets fresh breakers
//     (functions cannot be compared, and kept breakers would keep calling
//     the old callback).
//   - Retry budgets are never reset: the budget settings (WithBudget,
//     WithTokenBucket, WithoutBudget) are fixed at New, and each target's
//     budget, with its deposits or tokens, outlives every Update. To change
//     the budget settings, build a new Suite.
//
// Updates may run concurrently with calls and with each other (the last
// one wins).
func (s *Suite) Update(policies map[string]Policy) error {
	for {
		old := s.tab.Load()
		tab, err := s.resolve(policies)
		if err != nil {
			return err
		}
		for key, p := range policies {
			if prev := old.policy(key); prev != nil && sameBreaker(prev, p) {
				tab.policy(key).group = prev.group
			}
		}
		if s.tab.CompareAndSwap(old, tab) {
			return nil
		}
	}
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

// sameBreaker reports whether p asks for the breaker settings prev was
// given. It compares prev.given, the settings as the user wrote them: the
// group's Config has the suite's hooks wired into OnStateChange, so it
// cannot tell whether the user set a callback.
func sameBreaker(prev *policy, p Policy) bool {
	if p.Breaker.OnStateChange != nil || prev.given.OnStateChange != nil {
		return false
	}
	failure := defaultFailure
	if p.FailureCodes != nil {
		failure = setOf(p.FailureCodes...)
	}
	return failure == prev.failure && reflect.DeepEqual(breakerView(p.Breaker), breakerView(prev.given))
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
//	    "circuitBreaker": {"mode": "closed", "consecutiveFailures": 12, "failureRate": 0.5,
//	      "minimumCalls": 20, "window": "10s", "recoveryTime": "5s", "maxRecoveryTime": "60s",
//	      "recoveryJitter": 0.2, "halfOpenMaxCalls": 1, "failureStatusCodes": ["UNKNOWN", ...]},
//	    "fallback": false
//	  }],
//	  "methods": [{
//	    "method": "/pkg.Svc/Get", "policy": "/pkg.Svc/*", "state": "closed",
//	    "successes": 10, "failures": 1, "ignored": 0, "rejections": 0, "transitions": 0,
//	    "consecutiveFailures": 0, "windowCalls": 11, "windowFailures": 1, "shadowTrips": 0
//	  }],
//	  "budget": {"mode": "ratio", "ratio": 0.2, "minRetriesPerSecond": 1, "window": "10s",
//	    "targets": [{"target": "dns:///svc:443", "balance": 12.4, "reserve": 10,
//	      "allowed": 3, "refused": 0}]}
//	}
//
// Durations are strings of seconds as in the config document ("0.100s");
// status codes are the upper-case names of grpc service configs; a trip
// rule that is off shows 0 (consecutiveFailures, minimumCalls); lists are
// sorted (policies by key, methods by name, targets by name).
type Snapshot struct {
	Policies []SnapshotPolicy `json:"policies"`
	Methods  []SnapshotMethod `json:"methods"`
	Budget   SnapshotBudget   `json:"budget"`
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
	Mode                string   `json:"mode"` // "closed", "disabled" or "metrics-only"
	ConsecutiveFailures int      `json:"consecutiveFailures"`
	FailureRate         float64  `json:"failureRate"`
	MinimumCalls        int      `json:"minimumCalls"`
	Window              string   `json:"window"`
	RecoveryTime        string   `json:"recoveryTime"`
	MaxRecoveryTime     string   `json:"maxRecoveryTime"`
	RecoveryJitter      float64  `json:"recoveryJitter"`
	HalfOpenMaxCalls    int      `json:"halfOpenMaxCalls"`
	FailureCodes        []string `json:"failureStatusCodes"`
}

// SnapshotMethod is the breaker of one method (with WithBreakerKey: of one
// breaker key) and the policy key it belongs to.
type SnapshotMethod struct {
	Method string `json:"method"`
	Policy string `json:"policy"`
	State  string `json:"state"` // breaker.State.String()

	Successes           uint64 `json:"successes"`
	Failures            uint64 `json:"failures"`
	Ignored             uint64 `json:"ignored"`
	Rejections          uint64 `json:"rejections"`
	Transitions         uint64 `json:"transitions"`
	ConsecutiveFailures uint64 `json:"consecutiveFailures"`
	WindowCalls         uint64 `json:"windowCalls"`
	WindowFailures      uint64 `json:"windowFailures"`
	ShadowTrips         uint64 `json:"shadowTrips"`
}

// SnapshotBudget is the suite's retry budget settings and the live budget
// of every target called.
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

// Snapshot returns the suite's current state (see Snapshot). It reads the
// breakers and budgets without stopping calls, so counts of different
// methods may be a few calls apart.
func (s *Suite) Snapshot() Snapshot {
	tab := s.tab.Load()
	snap := Snapshot{Policies: []SnapshotPolicy{}, Methods: []SnapshotMethod{}}
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
		snap.Policies = append(snap.Policies, policyView(p))
		p.group.Range(func(key string, b *breaker.Breaker) bool {
			// A kept group may hold the breaker of a method that has moved to
			// another key since; it is not that method's breaker any more.
			if s.o.breakerKey == nil && tab.match(key) != p {
				return true
			}
			snap.Methods = append(snap.Methods, methodView(key, p.key, b.Counts()))
			return true
		})
	}
	slices.SortStableFunc(snap.Methods, func(a, b SnapshotMethod) int { return strings.Compare(a.Method, b.Method) })
	snap.Budget = s.budgetView()
	return snap
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
		Breaker:  breakerView(p.group.Config()),
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
// nil), which is also how Update tells whether settings changed.
func breakerView(c breaker.Config) SnapshotBreaker {
	v := SnapshotBreaker{
		Mode:                c.Mode.String(),
		ConsecutiveFailures: c.ConsecutiveFailures,
		FailureRate:         c.FailureRate,
		MinimumCalls:        c.MinimumCalls,
		Window:              seconds(orDefault(c.Window, breaker.DefaultWindow)),
		RecoveryTime:        seconds(orDefault(c.RecoveryTime, breaker.DefaultRecoveryTime)),
		MaxRecoveryTime:     seconds(orDefault(c.MaxRecoveryTime, breaker.DefaultMaxRecoveryTime)),
		RecoveryJitter:      c.RecoveryJitter,
		HalfOpenMaxCalls:    c.HalfOpenMaxCalls,
	}
	switch {
	case v.ConsecutiveFailures == 0:
		v.ConsecutiveFailures = breaker.DefaultConsecutiveFailures
	case v.ConsecutiveFailures < 0:
		v.ConsecutiveFailures = 0 // off
	}
	switch {
	case v.MinimumCalls == 0:
		v.MinimumCalls = breaker.DefaultMinimumCalls
	case v.MinimumCalls < 0:
		v.MinimumCalls = 0 // off
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
		Transitions:         c.Transitions,
		ConsecutiveFailures: c.ConsecutiveFailures,
		WindowCalls:         c.WindowCalls,
		WindowFailures:      c.WindowFailures,
		ShadowTrips:         c.ShadowTrips,
	}
}

func (s *Suite) budgetView() SnapshotBudget {
	v := SnapshotBudget{Targets: []SnapshotTarget{}}
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
	s.budgets.Range(func(k, b any) bool {
		bs := b.(*retry.Budget).Snapshot()
		v.Targets = append(v.Targets, SnapshotTarget{
			Target: k.(string), Balance: bs.Balance, Reserve: bs.Reserve, Allowed: bs.Allowed, Refused: bs.Refused,
		})
		return true
	})
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
