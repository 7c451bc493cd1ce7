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
				p.addf(npath, "duplicate name %s (also at %s); each name may appear once in the document", describeKey(key), prev)
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

func describeKey(key string) string {
	switch {
	case key == "*":
		return "{} (the default)"
	case strings.HasSuffix(key, "/*"):
		return fmt.Sprintf("{service: %s}", quote(key[1:len(key)-2]))
	default:
		i := strings.LastIndexByte(key, '/')
		return fmt.Sprintf("{service: %s, method: %s}", quote(key[1:i]), quote(key[i+1:]))
	}
}

func validateMethod(mc *resiliencev1.MethodConfig, path string, maxAttempts int, p *problems) (pol interceptors.Policy, timeout *time.Duration) {
	pol.Retry = retry.Policy{MaxAttempts: 1} // no retryPolicy: one attempt (A6)
	if rp := mc.GetRetryPolicy(); rp != nil {
		pol.Retry, pol.RetryableCodes = validateRetry(rp, join(path, "retryPolicy"), maxAttempts, p)
	}
	if hp := mc.GetHedgingPolicy(); hp != nil {
		hpath := join(path, "hedgingPolicy")
		if mc.GetRetryPolicy() != nil {
			p.add(hpath, "a methodConfig has a retryPolicy or a hedgingPolicy, not both (gRFC A6)")
		}
		pol.Hedge = validateHedge(hp, hpath, maxAttempts, p)
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
	var r retry.Policy

	switch {
	case rp.MaxAttempts == nil:
		p.add(join(path, "maxAttempts"), "required (at least 2)")
	case rp.GetMaxAttempts() < 2:
		p.addf(join(path, "maxAttempts"), "must be at least 2, got %d", rp.GetMaxAttempts())
	default:
		r.MaxAttempts = min(int(rp.GetMaxAttempts()), maxAttempts)
	}
	r.InitialBackoff = requiredDuration(rp.GetInitialBackoff(), join(path, "initialBackoff"), p)
	r.MaxBackoff = requiredDuration(rp.GetMaxBackoff(), join(path, "maxBackoff"), p)
	if r.InitialBackoff > 0 && r.MaxBackoff > 0 && r.MaxBackoff < r.InitialBackoff {
		p.addf(join(path, "maxBackoff"), "must be at least initialBackoff (%v), got %v", r.InitialBackoff, r.MaxBackoff)
	}
	mult := join(path, "backoffMultiplier")
	switch f := rp.GetBackoffMultiplier(); {
	case rp.BackoffMultiplier == nil:
		p.add(mult, "required (at least 1)")
	case math.IsNaN(f) || math.IsInf(f, 0) || f <= 0:
		p.addf(mult, "must be greater than zero, got %v", f)
	case f < 1:
		p.addf(mult, "must be at least 1, got %v (grpc accepts values in (0, 1), which shrink the delays; this library does not)", f)
	default:
		r.Multiplier = f
	}
	codesPath := join(path, "retryableStatusCodes")
	list := rp.GetRetryableStatusCodes()
	if len(list) == 0 {
		p.add(codesPath, "required and must not be empty")
	}
	retryable := statusCodes(list, codesPath, p)

	// Ours: zero or absent means the default, as in retry.Policy.
	switch rp.GetJitter() {
	case "", "proportional":
		r.Jitter = retry.ProportionalJitter // A6
	case "full":
		r.Jitter = retry.FullJitter
	case "none":
		r.Jitter = retry.NoJitter
	default:
		p.addf(join(path, "jitter"), `must be "proportional", "full" or "none", got %s`, quote(rp.GetJitter()))
	}
	switch f := rp.GetJitterFactor(); {
	case rp.JitterFactor != nil && r.Jitter != retry.ProportionalJitter:
		p.addf(join(path, "jitterFactor"), "applies to proportional jitter only, not %s", quote(rp.GetJitter()))
	case math.IsNaN(f) || f < 0 || f > 1:
		p.addf(join(path, "jitterFactor"), `must be in [0, 1] (0 means the default 0.2; jitter: "none" for no jitter), got %v`, f)
	default:
		r.JitterFactor = f
	}
	r.AttemptTimeout = ourDuration(rp.GetPerAttemptTimeout(), join(path, "perAttemptTimeout"), false, p)
	r.MinAttemptTime = ourDuration(rp.GetMinAttemptTime(), join(path, "minAttemptTime"), false, p)
	r.MaxPushback = ourDuration(rp.GetMaxPushback(), join(path, "maxPushback"), false, p)

	safetyNet(p, path, r.Validate)
	return r, retryable
}

// validateBreaker converts a circuitBreaker by the rule of the package
// doc's "Reading" (what can be off: consecutiveFailures, throttleK,
// recoveryJitter, halfOpenMaxWait).
func validateBreaker(cb *resiliencev1.CircuitBreaker, path string, p *problems) (breaker.Config, []codes.Code) {
	at := func(field string) string { return join(path, field) }
	c := breaker.Config{
		ConsecutiveFailures: int(cb.GetConsecutiveFailures()),
		ThrottleK:           cb.GetThrottleK(),
		FailureRate:         cb.GetFailureRate(),
		MinimumCalls:        int(cb.GetMinimumCalls()),
		RecoveryJitter:      cb.GetRecoveryJitter(),
		HalfOpenMaxCalls:    int(cb.GetHalfOpenMaxCalls()),
		Window:              ourDuration(cb.GetWindow(), at("window"), false, p),
		RecoveryTime:        ourDuration(cb.GetRecoveryTime(), at("recoveryTime"), false, p),
		MaxRecoveryTime:     ourDuration(cb.GetMaxRecoveryTime(), at("maxRecoveryTime"), false, p),
		HalfOpenMaxWait:     ourDuration(cb.GetHalfOpenMaxWait(), at("halfOpenMaxWait"), true, p),
	}
	switch cb.GetMode() {
	case "", "closed":
	case "disabled":
		c.Mode = breaker.Disabled
	case "metrics-only":
		c.Mode = breaker.MetricsOnly
	case "forced-open":
		c.Mode = breaker.ForcedOpen // interceptors.New starts the breakers forced open
	default:
		p.addf(at("mode"), `must be "closed", "disabled", "metrics-only" or "forced-open", got %s`, quote(cb.GetMode()))
	}
	if k := c.ThrottleK; math.IsNaN(k) || math.IsInf(k, 1) || k > 0 && k < 1 {
		p.addf(at("throttleK"), "must be at least 1 (0 means the default 2, a negative value turns the throttle off), got %v", k)
	}
	if f := c.FailureRate; math.IsNaN(f) || f < 0 || f > 1 {
		p.addf(at("failureRate"), "must be in [0, 1] (0 turns the rule off), got %v", f)
	}
	if j := c.RecoveryJitter; math.IsNaN(j) || j >= 1 {
		p.addf(at("recoveryJitter"), "must be less than 1 (a negative value means no jitter), got %v", j)
	}
	if c.MinimumCalls < 0 {
		p.addf(at("minimumCalls"), "must not be negative (0 means the default 20), got %d", c.MinimumCalls)
	}
	if c.HalfOpenMaxCalls < 0 {
		p.addf(at("halfOpenMaxCalls"), "must not be negative (0 means the default 1), got %d", c.HalfOpenMaxCalls)
	}
	if c.Window > 0 && c.Window < 10 {
		p.addf(at("window"), "must be at least 10ns, got %v", c.Window)
	}
	recovery := cmp.Or(c.RecoveryTime, breaker.DefaultRecoveryTime)
	switch {
	case c.MaxRecoveryTime == 0 && recovery > breaker.DefaultMaxRecoveryTime:
		c.MaxRecoveryTime = recovery // the default cap is 60s, or recoveryTime if larger
	case c.MaxRecoveryTime > 0 && c.MaxRecoveryTime < recovery:
		p.addf(at("maxRecoveryTime"), "must be at least recoveryTime (%v), got %v", recovery, c.MaxRecoveryTime)
	}
	var failure []codes.Code
	if l := cb.GetFailureStatusCodes(); l != nil {
		failure = statusCodes(l.GetValues(), at("failureStatusCodes"), p)
	}
	check := c
	if check.Mode == breaker.ForcedOpen {
		check.Mode = breaker.Closed // a starting state the breaker itself does not take as a Mode
	}
	safetyNet(p, path, check.Validate)
	return c, failure
}

func validateBudget(doc *resiliencev1.ServiceConfig, p *problems) Budget {
	rt, rb := doc.GetRetryThrottling(), doc.GetRetryBudget()
	if rt != nil && rb != nil {
		p.add("retryBudget", "cannot be combined with retryThrottling; choose one")
		return Budget{}
	}
	if rt != nil {
		b := Budget{Mode: TokenBucket}
		switch f := rt.GetMaxTokens(); {
		case rt.MaxTokens == nil:
			p.add("retryThrottling.maxTokens", "required, in (0, 1000]")
		case math.IsNaN(f) || f <= 0 || f > 1000:
			p.addf("retryThrottling.maxTokens", "must be in (0, 1000], got %v", f)
		default:
			b.MaxTokens = f
		}
		switch f := rt.GetTokenRatio(); {
		case rt.TokenRatio == nil:
			p.add("retryThrottling.tokenRatio", "required, greater than zero")
		case math.IsNaN(f) || math.IsInf(f, 0) || f <= 0:
			p.addf("retryThrottling.tokenRatio", "must be greater than zero, got %v", f)
		case f < 0.001:
			p.addf("retryThrottling.tokenRatio", "must be at least 0.001 (A6 keeps three decimals), got %v", f)
		default:
			b.TokenRatio = f
		}
		return b
	}
	if rb == nil {
		return Budget{}
	}
	if rb.GetDisabled() {
		if rb.Ratio != nil || rb.MinRetriesPerSecond != nil || rb.GetWindow() != nil {
			p.add("retryBudget.disabled", "no other retryBudget field may be set with it")
		}
		return Budget{Mode: NoBudget}
	}
	b := Budget{Mode: RatioBudget, Ratio: retry.BudgetConfig{
		Ratio:               rb.GetRatio(),
		MinRetriesPerSecond: rb.GetMinRetriesPerSecond(),
		Window:              ourDuration(rb.GetWindow(), "retryBudget.window", false, p),
	}}
	if f := b.Ratio.Ratio; math.IsNaN(f) || f < 0 || f > 1000 {
		p.addf("retryBudget.ratio", "must be in [0, 1000] (0 means the default 0.2), got %v", f)
	}
	if f := b.Ratio.MinRetriesPerSecond; math.IsNaN(f) || math.IsInf(f, 0) || f < 0 {
		p.addf("retryBudget.minRetriesPerSecond", "must not be negative (0 means the default 1), got %v", f)
	}
	if w := b.Ratio.Window; w > 0 && w < 10*time.Millisecond {
		p.addf("retryBudget.window", "must be at least 10ms, got %v", w)
	}
	safetyNet(p, "retryBudget", b.Ratio.Validate)
	return b
}

// safetyNet adds the error of validate at path if no problem was found: the
// checks before it cover the rules of the Validate methods it is given.
func safetyNet(p *problems, path string, validate func() error) {
	if p.count() == 0 {
		if err := validate(); err != nil {
			p.add(path, err.Error())
		}
	}
}

// requiredDuration checks an A6 duration: present and greater than zero.
func requiredDuration(d *durationpb.Duration, path string, p *problems) time.Duration {
	if d == nil {
		p.add(path, "required, greater than zero")
		return 0
	}
	v := duration(d, path, p)
	if v <= 0 {
		p.addf(path, "must be greater than zero, got %v", v) // dropped after a problem of duration
		return 0
	}
	return v
}

// ourDuration checks one of our durations: absent or zero means the default
// (0); a negative value means off (-1) if off is true, else it is an error.
func ourDuration(d *durationpb.Duration, path string, off bool, p *problems) time.Duration {
	switch v := duration(d, path, p); {
	case v >= 0:
		return v
	case off:
		return -1
	default:
		p.addf(path, "must not be negative (0 means the default), got %v", v)
		return 0
	}
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
	switch k := v.GetKind().(type) {
	case *structpb.Value_NumberValue:
		if f := k.NumberValue; f != math.Trunc(f) || c.UnmarshalJSON(strconv.AppendFloat(nil, f, 'f', -1, 64)) != nil {
			p.addf(path, "unknown status code %v: numbers go from 1 to 16", f)
			return 0, false
		}
	case *structpb.Value_StringValue:
		if b, _ := json.Marshal(k.StringValue); c.UnmarshalJSON(b) != nil {
			p.addf(path, "unknown status code %s%s", quote(k.StringValue), codeHint(k.StringValue))
			return 0, false
		}
	default:
		p.addf(path, `must be a status code name such as "UNAVAILABLE" or a number such as 14, got %s`, kindOf(v.AsInterface()))
		return 0, false
	}
	if c == codes.OK {
		p.add(path, "OK is not a failure and cannot be listed")
		return 0, false
	}
	return c, true
}

// codeHint suggests the accepted spelling of a code name.
func codeHint(s string) string {
	u := strings.ToUpper(strings.TrimSpace(s))
	if u == "CANCELED" {
		u = "CANCELLED"
	}
	var c codes.Code
	if b, _ := json.Marshal(u); c.UnmarshalJSON(b) == nil {
		return fmt.Sprintf(" (names are upper case, as grpc spells them: %s)", quote(u))
	}
	return ""
}

// validateHedge checks a hedgingPolicy (gRFC A6: maxAttempts, capped at
// maxAttempts as a retryPolicy's; hedgingDelay, default 0;
// nonFatalStatusCodes, default none).
func validateHedge(hp *structpb.Struct, path string, maxAttempts int, p *problems) interceptors.HedgePolicy {
	var h interceptors.HedgePolicy
	fields := hp.GetFields()
	for _, k := range slices.Sorted(maps.Keys(fields)) {
		v, fpath := fields[k], join(path, k)
		switch k {
		case "maxAttempts":
			f, ok := v.GetKind().(*structpb.Value_NumberValue)
			switch {
			case !ok || f.NumberValue != math.Trunc(f.NumberValue):
				p.addf(fpath, "must be an integer, got %s", protojson.Format(v))
			case f.NumberValue < 2:
				p.addf(fpath, "must be at least 2, got %v", f.NumberValue)
			default:
				h.MaxAttempts = int(min(f.NumberValue, float64(maxAttempts)))
			}
		case "hedgingDelay":
			d := new(durationpb.Duration)
			_, ok := v.GetKind().(*structpb.Value_StringValue)
			b, _ := json.Marshal(v.GetStringValue())
			if !ok || protojson.Unmarshal(b, d) != nil {
				p.addf(fpath, `must be a duration such as "0.1s", got %s`, protojson.Format(v))
				continue
			}
			if h.Delay = duration(d, fpath, p); h.Delay < 0 {
				p.addf(fpath, "must not be negative, got %v", h.Delay)
			}
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
	if _, ok := fields["maxAttempts"]; !ok {
		p.add(join(path, "maxAttempts"), "required (at least 2)")
	}
	return h
}
