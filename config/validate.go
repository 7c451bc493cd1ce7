package config

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	resiliencev1 "github.com/khive/grpc-resilience/proto/khive/resilience/v1"
	"github.com/khive/grpc-resilience/retry"
)

// validate checks doc, mirroring grpc-go's service config checks where they
// apply and the breaker, retry and budget rules for our fields, and converts
// it into c, adding each problem to p with its path.
func validate(doc *resiliencev1.ServiceConfig, maxAttempts int, c *Config, p *problems) {
	if doc == nil {
		p.add("", "no document")
		return
	}
	if doc.GetConnectionScaling() != nil {
		c.Ignored = append(c.Ignored, "connectionScaling")
	}

	seen := map[string]string{} // policy key -> path of its name
	for i, mc := range doc.GetMethodConfig() {
		path := index("methodConfig", i)
		if mc == nil {
			p.add(path, "must not be null")
			continue
		}
		pol, timeout := validateMethod(mc, path, maxAttempts, p)
		for j, n := range mc.GetName() {
			npath := index(join(path, "name"), j)
			key, ok := policyKey(n, npath, p)
			if !ok {
				continue
			}
			if prev, dup := seen[key]; dup {
				p.addf(npath, "duplicate name %s (also at %s); each name may appear once in the document", describeKey(n.GetService(), n.GetMethod()), prev)
				continue
			}
			seen[key] = npath
			pol.RetryableCodes, pol.FailureCodes = slices.Clone(pol.RetryableCodes), slices.Clone(pol.FailureCodes) // each key its own
			c.Policies[key] = pol
			if timeout != nil {
				c.timeouts[key] = *timeout
			}
		}
	}
	c.Budget = validateBudget(doc, p)
}

// policyKey maps a grpc name to the interceptors' policy key.
func policyKey(n *resiliencev1.MethodConfig_Name, path string, p *problems) (string, bool) {
	if n == nil {
		p.add(path, "must not be null")
		return "", false
	}
	svc, m := n.GetService(), n.GetMethod()
	if svc == "" && m != "" {
		p.addf(join(path, "method"), "%s needs a service (grpc: cannot combine an empty service with a method)", quote(m))
		return "", false
	}
	ok := true
	for field, name := range map[string]string{"service": svc, "method": m} {
		if strings.ContainsAny(name, "*/ \t\r\n\v\f") {
			p.addf(join(path, field), `invalid %s name %s: must not contain "/", "*" or spaces`, field, quote(name))
			ok = false
		}
	}
	if svc == "" {
		return "*", ok
	}
	return "/" + svc + "/" + cmp.Or(m, "*"), ok
}

// describeKey writes a name as the document does.
func describeKey(svc, m string) string {
	switch {
	case svc == "":
		return "{} (the default)"
	case m == "":
		return fmt.Sprintf("{service: %s}", quote(svc))
	}
	return fmt.Sprintf("{service: %s, method: %s}", quote(svc), quote(m))
}

func validateMethod(mc *resiliencev1.MethodConfig, path string, maxAttempts int, p *problems) (pol interceptors.Policy, timeout *time.Duration) {
	pol.Retry = retry.Policy{MaxAttempts: 1} // no retryPolicy: one attempt (A6)
	if rp := mc.GetRetryPolicy(); rp != nil {
		pol.Retry, pol.RetryableCodes = validateRetry(rp, join(path, "retryPolicy"), maxAttempts, p)
	}
	if hp := mc.GetHedgingPolicy(); hp != nil {
		p.addIf(mc.GetRetryPolicy() != nil, path, "hedgingPolicy", "a methodConfig has a retryPolicy or a hedgingPolicy, not both (gRFC A6)")
		pol.Hedge = validateHedge(hp, join(path, "hedgingPolicy"), maxAttempts, p)
	}
	if cb := mc.GetCircuitBreaker(); cb != nil {
		pol.Breaker, pol.FailureCodes = validateBreaker(cb, join(path, "circuitBreaker"), p)
	}
	if t := mc.GetTimeout(); t != nil {
		d := duration(t, join(path, "timeout"), p)
		timeout = &d
	}
	return pol, timeout
}

// validateRetry checks a retryPolicy as grpc-go does, maxAttempts capped at
// maxAttempts (A6).
func validateRetry(rp *resiliencev1.RetryPolicy, path string, maxAttempts int, p *problems) (retry.Policy, []codes.Code) {
	r := retry.Policy{
		MaxAttempts:    min(int(rp.GetMaxAttempts()), maxAttempts),
		InitialBackoff: requiredDuration(rp.GetInitialBackoff(), path, "initialBackoff", p),
		MaxBackoff:     requiredDuration(rp.GetMaxBackoff(), path, "maxBackoff", p),
		Multiplier:     rp.GetBackoffMultiplier(),
		Jitter:         oneOf(p, path, "jitter", rp.GetJitter(), jitters, `"proportional", "full" or "none"`),
		JitterFactor:   rp.GetJitterFactor(),
		AttemptTimeout: ourDuration(rp.GetPerAttemptTimeout(), path, "perAttemptTimeout", false, p),
		MinAttemptTime: ourDuration(rp.GetMinAttemptTime(), path, "minAttemptTime", false, p),
		MaxPushback:    ourDuration(rp.GetMaxPushback(), path, "maxPushback", false, p),
	}
	p.addIf(rp.MaxAttempts == nil, path, "maxAttempts", "required (at least 2)")
	check(p, rp.GetMaxAttempts() < 2, path, "maxAttempts", "must be at least 2, got %d", rp.GetMaxAttempts())
	if r.InitialBackoff > 0 && r.MaxBackoff > 0 && r.MaxBackoff < r.InitialBackoff {
		p.addf(join(path, "maxBackoff"), "must be at least initialBackoff (%v), got %v", r.InitialBackoff, r.MaxBackoff)
	}
	f := r.Multiplier
	p.addIf(rp.BackoffMultiplier == nil, path, "backoffMultiplier", "required (at least 1)")
	check(p, math.IsNaN(f) || math.IsInf(f, 0) || f <= 0, path, "backoffMultiplier", "must be greater than zero, got %v", f)
	check(p, f < 1, path, "backoffMultiplier", "must be at least 1, got %v (grpc accepts values in (0, 1), which shrink the delays; this library does not)", f)
	list := rp.GetRetryableStatusCodes()
	p.addIf(len(list) == 0, path, "retryableStatusCodes", "required and must not be empty")
	retryable := statusCodes(list, join(path, "retryableStatusCodes"), p)
	if rp.JitterFactor != nil && r.Jitter != retry.ProportionalJitter {
		p.addf(join(path, "jitterFactor"), "applies to proportional jitter only, not %s", quote(rp.GetJitter()))
	}
	jf := r.JitterFactor
	check(p, math.IsNaN(jf) || jf < 0 || jf > 1, path, "jitterFactor", `must be in [0, 1] (0 means the default 0.2; jitter: "none" for no jitter), got %v`, jf)
	safetyNet(p, path, r.Validate)
	return r, retryable
}

// jitters and modes read retryPolicy.jitter and circuitBreaker.mode.
var (
	jitters = map[string]retry.Jitter{"": retry.ProportionalJitter, "proportional": retry.ProportionalJitter, "full": retry.FullJitter, "none": retry.NoJitter}
	modes   = map[string]breaker.State{"": breaker.Closed, "closed": breaker.Closed, "disabled": breaker.Disabled, "metrics-only": breaker.MetricsOnly, "forced-open": breaker.ForcedOpen}
)

// validateBreaker converts a circuitBreaker by the package doc's rule; what
// can be off: consecutiveFailures, throttleK, recoveryJitter, halfOpenMaxWait.
func validateBreaker(cb *resiliencev1.CircuitBreaker, path string, p *problems) (breaker.Config, []codes.Code) {
	c := breaker.Config{
		Mode:                oneOf(p, path, "mode", cb.GetMode(), modes, `"closed", "disabled", "metrics-only" or "forced-open"`),
		ConsecutiveFailures: int(cb.GetConsecutiveFailures()),
		ThrottleK:           cb.GetThrottleK(),
		FailureRate:         cb.GetFailureRate(),
		MinimumCalls:        int(cb.GetMinimumCalls()),
		RecoveryJitter:      cb.GetRecoveryJitter(),
		HalfOpenMaxCalls:    int(cb.GetHalfOpenMaxCalls()),
		Window:              ourDuration(cb.GetWindow(), path, "window", false, p),
		RecoveryTime:        ourDuration(cb.GetRecoveryTime(), path, "recoveryTime", false, p),
		MaxRecoveryTime:     ourDuration(cb.GetMaxRecoveryTime(), path, "maxRecoveryTime", false, p),
		HalfOpenMaxWait:     ourDuration(cb.GetHalfOpenMaxWait(), path, "halfOpenMaxWait", true, p),
	}
	k, f, j := c.ThrottleK, c.FailureRate, c.RecoveryJitter
	check(p, math.IsNaN(k) || math.IsInf(k, 1) || k > 0 && k < 1, path, "throttleK", "must be at least 1 (0 means the default 2, a negative value turns the throttle off), got %v", k)
	check(p, math.IsNaN(f) || f < 0 || f > 1, path, "failureRate", "must be in [0, 1] (0 turns the rule off), got %v", f)
	check(p, math.IsNaN(j) || j >= 1, path, "recoveryJitter", "must be less than 1 (a negative value means no jitter), got %v", j)
	check(p, c.MinimumCalls < 0, path, "minimumCalls", "must not be negative (0 means the default 20), got %d", c.MinimumCalls)
	check(p, c.HalfOpenMaxCalls < 0, path, "halfOpenMaxCalls", "must not be negative (0 means the default 1), got %d", c.HalfOpenMaxCalls)
	check(p, c.Window > 0 && c.Window < 10, path, "window", "must be at least 10ns, got %v", c.Window)
	recovery := cmp.Or(c.RecoveryTime, breaker.DefaultRecoveryTime)
	switch {
	case c.MaxRecoveryTime == 0 && recovery > breaker.DefaultMaxRecoveryTime:
		c.MaxRecoveryTime = recovery // the default cap is 60s, or recoveryTime if larger
	case c.MaxRecoveryTime > 0 && c.MaxRecoveryTime < recovery:
		p.addf(join(path, "maxRecoveryTime"), "must be at least recoveryTime (%v), got %v", recovery, c.MaxRecoveryTime)
	}
	var failure []codes.Code
	if l := cb.GetFailureStatusCodes(); l != nil {
		failure = statusCodes(l.GetValues(), join(path, "failureStatusCodes"), p)
	}
	v := c
	if v.Mode == breaker.ForcedOpen {
		v.Mode = breaker.Closed // a starting state the breaker itself does not take as a Mode
	}
	safetyNet(p, path, v.Validate)
	return c, failure
}

func validateBudget(doc *resiliencev1.ServiceConfig, p *problems) Budget {
	rt, rb := doc.GetRetryThrottling(), doc.GetRetryBudget()
	if rt != nil && rb != nil {
		p.add("retryBudget", "cannot be combined with retryThrottling; choose one")
		return Budget{}
	}
	if rt != nil {
		b := Budget{Mode: TokenBucket, MaxTokens: rt.GetMaxTokens(), TokenRatio: rt.GetTokenRatio()}
		f, r := b.MaxTokens, b.TokenRatio
		p.addIf(rt.MaxTokens == nil, "retryThrottling", "maxTokens", "required, in (0, 1000]")
		check(p, math.IsNaN(f) || f <= 0 || f > 1000, "retryThrottling", "maxTokens", "must be in (0, 1000], got %v", f)
		p.addIf(rt.TokenRatio == nil, "retryThrottling", "tokenRatio", "required, greater than zero")
		check(p, math.IsNaN(r) || math.IsInf(r, 0) || r <= 0, "retryThrottling", "tokenRatio", "must be greater than zero, got %v", r)
		check(p, r < 0.001, "retryThrottling", "tokenRatio", "must be at least 0.001 (A6 keeps three decimals), got %v", r)
		return b
	}
	if rb == nil {
		return Budget{}
	}
	if rb.GetDisabled() {
		p.addIf(rb.Ratio != nil || rb.MinRetriesPerSecond != nil || rb.GetWindow() != nil, "retryBudget", "disabled", "no other retryBudget field may be set with it")
		return Budget{Mode: NoBudget}
	}
	b := Budget{Mode: RatioBudget, Ratio: retry.BudgetConfig{
		Ratio:               rb.GetRatio(),
		MinRetriesPerSecond: rb.GetMinRetriesPerSecond(),
		Window:              ourDuration(rb.GetWindow(), "retryBudget", "window", false, p),
	}}
	r, m, w := b.Ratio.Ratio, b.Ratio.MinRetriesPerSecond, b.Ratio.Window
	check(p, math.IsNaN(r) || r < 0 || r > 1000, "retryBudget", "ratio", "must be in [0, 1000] (0 means the default 0.2), got %v", r)
	check(p, math.IsNaN(m) || math.IsInf(m, 0) || m < 0, "retryBudget", "minRetriesPerSecond", "must not be negative (0 means the default 1), got %v", m)
	check(p, w > 0 && w < 10*time.Millisecond, "retryBudget", "window", "must be at least 10ms, got %v", w)
	safetyNet(p, "retryBudget", b.Ratio.Validate)
	return b
}

// safetyNet adds the error of validate at path if no problem was found: the
// checks before it cover the rules of the Validate methods it is given.
func safetyNet(p *problems, path string, validate func() error) {
	if len(p.list) == 0 {
		if err := validate(); err != nil {
			p.add(path, err.Error())
		}
	}
}

// requiredDuration checks an A6 duration at the field of path: present and
// greater than zero.
func requiredDuration(d *durationpb.Duration, path, field string, p *problems) time.Duration {
	p.addIf(d == nil, path, field, "required, greater than zero")
	v := duration(d, join(path, field), p)
	check(p, v <= 0, path, field, "must be greater than zero, got %v", v)
	return max(v, 0)
}

// ourDuration checks one of our durations: absent or zero means the default
// (0); a negative value means off (-1) if off is true, else it is an error.
func ourDuration(d *durationpb.Duration, path, field string, off bool, p *problems) time.Duration {
	v := duration(d, join(path, field), p)
	if v < 0 && off {
		return -1
	}
	check(p, v < 0, path, field, "must not be negative (0 means the default), got %v", v)
	return max(v, 0)
}

// duration converts d (absent: 0), which must be valid and fit a
// time.Duration (about 292 years).
func duration(d *durationpb.Duration, path string, p *problems) time.Duration {
	const maxSeconds = math.MaxInt64 / int64(time.Second)
	switch s := d.GetSeconds(); {
	case d == nil:
	case s > maxSeconds || s < -maxSeconds:
		p.addf(path, "duration %ds is out of range (at most about 292 years)", s)
	case d.CheckValid() != nil:
		p.addf(path, "invalid duration: %v", d.CheckValid())
	default:
		return d.AsDuration()
	}
	return 0
}

// statusCodes converts a list of status codes (see statusCode), dropping
// duplicates.
func statusCodes(list []*structpb.Value, path string, p *problems) []codes.Code {
	out := []codes.Code{} // empty: none
	for i, v := range list {
		if c, ok := statusCode(v, index(path, i), p); ok && !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	return out
}

// statusCode reads a code as grpc-go does (codes.Code.UnmarshalJSON): an
// integer or an upper-case name ("CANCELLED"); OK is not a failure.
func statusCode(v *structpb.Value, path string, p *problems) (codes.Code, bool) {
	var c codes.Code
	var msg string
	switch k := v.GetKind().(type) {
	case *structpb.Value_NumberValue:
		if f := k.NumberValue; f != math.Trunc(f) || c.UnmarshalJSON(strconv.AppendFloat(nil, f, 'f', -1, 64)) != nil {
			msg = fmt.Sprintf("unknown status code %v: numbers go from 1 to 16", f)
		}
	case *structpb.Value_StringValue:
		if b, _ := json.Marshal(k.StringValue); c.UnmarshalJSON(b) != nil {
			msg = "unknown status code " + quote(k.StringValue) + codeHint(k.StringValue)
		}
	default:
		msg = `must be a status code name such as "UNAVAILABLE" or a number such as 14, got ` + kindOf(v.AsInterface())
	}
	if msg == "" && c == codes.OK {
		msg = "OK is not a failure and cannot be listed"
	}
	if msg != "" {
		p.add(path, msg)
	}
	return c, msg == ""
}

// codeHint suggests the accepted spelling of a code name.
func codeHint(s string) string {
	u := strings.Replace(strings.ToUpper(strings.TrimSpace(s)), "CANCELED", "CANCELLED", 1)
	var c codes.Code
	if b, _ := json.Marshal(u); c.UnmarshalJSON(b) == nil {
		return fmt.Sprintf(" (names are upper case, as grpc spells them: %s)", quote(u))
	}
	return ""
}

// validateHedge checks a hedgingPolicy (gRFC A6: maxAttempts, capped as a
// retryPolicy's; hedgingDelay, default 0; nonFatalStatusCodes, default none).
func validateHedge(hp *structpb.Struct, path string, maxAttempts int, p *problems) interceptors.HedgePolicy {
	var h interceptors.HedgePolicy
	fields := hp.GetFields()
	for _, k := range slices.Sorted(maps.Keys(fields)) {
		v, fpath := fields[k], join(path, k)
		switch k {
		case "maxAttempts":
			_, ok := v.GetKind().(*structpb.Value_NumberValue)
			n := v.GetNumberValue()
			if !ok || n != math.Trunc(n) {
				p.addf(fpath, "must be an integer, got %s", protojson.Format(v))
			}
			check(p, n < 2, path, k, "must be at least 2, got %v", n)
			h.MaxAttempts = int(min(n, float64(maxAttempts)))
		case "hedgingDelay":
			d := new(durationpb.Duration)
			_, ok := v.GetKind().(*structpb.Value_StringValue)
			b, _ := json.Marshal(v.GetStringValue())
			if !ok || protojson.Unmarshal(b, d) != nil {
				p.addf(fpath, `must be a duration such as "0.1s", got %s`, protojson.Format(v))
				continue
			}
			h.Delay = duration(d, fpath, p)
			check(p, h.Delay < 0, path, k, "must not be negative, got %v", h.Delay)
		case "nonFatalStatusCodes":
			if l := v.GetListValue(); l != nil {
				h.NonFatalCodes = statusCodes(l.GetValues(), fpath, p)
			} else {
				p.addf(fpath, "must be a list of status codes, got %s", protojson.Format(v))
			}
		default:
			p.add(fpath, "unknown field")
		}
	}
	_, ok := fields["maxAttempts"]
	p.addIf(!ok, path, "maxAttempts", "required (at least 2)")
	return h
}
