package config

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/khive/grpc-resilience/breaker"
	resiliencev1 "github.com/khive/grpc-resilience/proto/khive/resilience/v1"
	"github.com/khive/grpc-resilience/retry"
)

// method is one validated methodConfig entry, before it becomes an
// interceptors.Policy.
type method struct {
	retry     retry.Policy
	breaker   breaker.Config
	retryable []codes.Code // nil: the interceptors' default
	failure   []codes.Code // nil: the interceptors' default
}

// document is a validated document.
type document struct {
	keys    []string          // policy keys in document order
	methods map[string]method // by policy key
	budget  Budget
	ignored []string
}

// validate checks doc, mirroring grpc-go's service config checks where they
// apply and the breaker, retry and budget rules for our fields, and converts
// it, adding each problem to p with its path.
func validate(doc *resiliencev1.ServiceConfig, p *problems) *document {
	d := &document{methods: map[string]method{}}
	if doc == nil {
		p.add("", "no document")
		return d
	}
	d.ignored = ignored(doc.ProtoReflect(), "")

	seen := map[string]string{} // policy key -> path of its name
	for i, mc := range doc.GetMethodConfig() {
		path := index("methodConfig", i)
		if mc == nil {
			p.add(path, "must not be null")
			continue
		}
		d.ignored = append(d.ignored, ignored(mc.ProtoReflect(), path)...)
		m := validateMethod(mc, path, p)
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
			d.keys = append(d.keys, key)
			d.methods[key] = m
		}
	}
	d.budget = validateBudget(doc, p)
	return d
}

// policyKey maps a grpc name to the interceptors' policy key.
func policyKey(n *resiliencev1.MethodConfig_Name, path string, p *problems) (string, bool) {
	if n == nil {
		p.add(path, "must not be null")
		return "", false
	}
	svc, m := n.GetService(), n.GetMethod()
	ok := true
	if svc == "" && m != "" {
		p.addf(join(path, "method"), "%s needs a service (grpc: cannot combine an empty service with a method)", quote(m))
		return "", false
	}
	if svc != "" && !validName(svc) {
		p.addf(join(path, "service"), `invalid service name %s: must not contain "/", "*" or spaces`, quote(svc))
		ok = false
	}
	if m != "" && !validName(m) {
		p.addf(join(path, "method"), `invalid method name %s: must not contain "/", "*" or spaces`, quote(m))
		ok = false
	}
	switch {
	case !ok:
		return "", false
	case svc == "":
		return "*", true
	case m == "":
		return "/" + svc + "/*", true
	default:
		return "/" + svc + "/" + m, true
	}
}

func validName(s string) bool {
	return !strings.ContainsAny(s, "*/ \t\r\n\v\f")
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

func validateMethod(mc *resiliencev1.MethodConfig, path string, p *problems) method {
	var m method
	if rp := mc.GetRetryPolicy(); rp != nil {
		m.retry, m.retryable = validateRetry(rp, join(path, "retryPolicy"), p)
	} else {
		m.retry = retry.Policy{MaxAttempts: 1} // no retryPolicy: one attempt (A6)
	}
	if cb := mc.GetCircuitBreaker(); cb != nil {
		m.breaker, m.failure = validateBreaker(cb, join(path, "circuitBreaker"), p)
	}
	return m
}

func validateRetry(rp *resiliencev1.RetryPolicy, path string, p *problems) (retry.Policy, []codes.Code) {
	var r retry.Policy

	switch {
	case rp.MaxAttempts == nil:
		p.add(join(path, "maxAttempts"), "required (at least 2)")
	case rp.GetMaxAttempts() < 2:
		p.addf(join(path, "maxAttempts"), "must be at least 2, got %d", rp.GetMaxAttempts())
	default:
		r.MaxAttempts = int(rp.GetMaxAttempts())
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

	// Ours.
	jitterOK := true
	switch rp.GetJitter() {
	case "", "proportional":
		r.Jitter = retry.ProportionalJitter // A6
	case "full":
		r.Jitter = retry.FullJitter
	case "none":
		r.Jitter = retry.NoJitter
	default:
		jitterOK = false
		p.addf(join(path, "jitter"), `must be "proportional", "full" or "none", got %s`, quote(rp.GetJitter()))
	}
	if rp.JitterFactor != nil && jitterOK {
		fpath := join(path, "jitterFactor")
		switch f := rp.GetJitterFactor(); {
		case r.Jitter != retry.ProportionalJitter:
			p.addf(fpath, "applies to proportional jitter only, not %s", quote(rp.GetJitter()))
		case math.IsNaN(f) || f <= 0 || f > 1:
			p.addf(fpath, `must be in (0, 1], got %v (use jitter: "none" for no jitter)`, f)
		default:
			r.JitterFactor = f
		}
	}
	r.AttemptTimeout = optionalDuration(rp.GetPerAttemptTimeout(), join(path, "perAttemptTimeout"), p)
	r.MinAttemptTime = optionalDuration(rp.GetMinAttemptTime(), join(path, "minAttemptTime"), p)
	r.MaxPushback = optionalDuration(rp.GetMaxPushback(), join(path, "maxPushback"), p)

	if p.count() == 0 {
		if err := r.Validate(); err != nil { // a safety net: the checks above cover the rules
			p.add(path, err.Error())
		}
	}
	return r, retryable
}

func validateBreaker(cb *resiliencev1.CircuitBreaker, path string, p *problems) (breaker.Config, []codes.Code) {
	var c breaker.Config

	switch cb.GetMode() {
	case "", "closed":
		c.Mode = breaker.Closed
	case "disabled":
		c.Mode = breaker.Disabled
	case "metrics-only":
		c.Mode = breaker.MetricsOnly
	case "forced-open":
		c.Mode = breaker.ForcedOpen // interceptors.New starts the breakers forced open
	default:
		p.addf(join(path, "mode"), `must be "closed", "disabled", "metrics-only" or "forced-open", got %s`, quote(cb.GetMode()))
	}
	c.ConsecutiveFailures = ruleCount(cb.ConsecutiveFailures, join(path, "consecutiveFailures"), "the rule", p)
	if cb.FailureRate != nil {
		if f := cb.GetFailureRate(); math.IsNaN(f) || f <= 0 || f > 1 {
			p.addf(join(path, "failureRate"), "must be in (0, 1], got %v", f)
		} else {
			c.FailureRate = f
		}
	}
	if cb.MinimumCalls != nil {
		if n := cb.GetMinimumCalls(); n < 1 {
			p.addf(join(path, "minimumCalls"), "must be at least 1, got %d", n)
		} else {
			c.MinimumCalls = int(n)
		}
	}
	if cb.ThrottleK != nil {
		switch k := cb.GetThrottleK(); {
		case k == 0:
			c.ThrottleK = -1 // off
		case math.IsNaN(k) || math.IsInf(k, 0) || k < 1:
			p.addf(join(path, "throttleK"), "must be at least 1 (0 turns the throttle off), got %v", k)
		default:
			c.ThrottleK = k
		}
	}
	if w := cb.GetHalfOpenMaxWait(); w != nil {
		if w.CheckValid() == nil && w.AsDuration() == 0 {
			c.HalfOpenMaxWait = -1 // "0s": never wait
		} else {
			c.HalfOpenMaxWait = positiveDuration(w, join(path, "halfOpenMaxWait"), p)
		}
	}
	c.Window = optionalDuration(cb.GetWindow(), join(path, "window"), p)
	if c.Window > 0 && c.Window < 10 {
		p.addf(join(path, "window"), "must be at least 10ns, got %v", c.Window)
	}
	c.RecoveryTime = optionalDuration(cb.GetRecoveryTime(), join(path, "recoveryTime"), p)
	c.MaxRecoveryTime = optionalDuration(cb.GetMaxRecoveryTime(), join(path, "maxRecoveryTime"), p)
	recovery := c.RecoveryTime
	if recovery == 0 {
		recovery = breaker.DefaultRecoveryTime
	}
	switch {
	case c.MaxRecoveryTime == 0 && cb.GetMaxRecoveryTime() == nil && recovery > breaker.DefaultMaxRecoveryTime:
		c.MaxRecoveryTime = recovery // documented: the default cap is 60s or recoveryTime if larger
	case c.MaxRecoveryTime > 0 && c.MaxRecoveryTime < recovery:
		p.addf(join(path, "maxRecoveryTime"), "must be at least recoveryTime (%v), got %v", recovery, c.MaxRecoveryTime)
	}
	if cb.RecoveryJitter != nil {
		switch j := cb.GetRecoveryJitter(); {
		case math.IsNaN(j) || j < 0 || j >= 1:
			p.addf(join(path, "recoveryJitter"), "must be in [0, 1), got %v", j)
		case j == 0:
			c.RecoveryJitter = -1 // no jitter
		default:
			c.RecoveryJitter = j
		}
	}
	if cb.HalfOpenMaxCalls != nil {
		if n := cb.GetHalfOpenMaxCalls(); n < 1 {
			p.addf(join(path, "halfOpenMaxCalls"), "must be at least 1, got %d", n)
		} else {
			c.HalfOpenMaxCalls = int(n)
		}
	}
	var failure []codes.Code
	if l := cb.GetFailureStatusCodes(); l != nil {
		fpath := join(path, "failureStatusCodes")
		if len(l.GetValues()) == 0 {
			p.add(fpath, `must not be empty (to never trip, use mode: "disabled" or "metrics-only")`)
		}
		failure = statusCodes(l.GetValues(), fpath, p)
	}
	if p.count() == 0 {
		check := c
		if check.Mode == breaker.ForcedOpen {
			check.Mode = breaker.Closed // a starting state the breaker itself does not take as a Mode
		}
		if err := check.Validate(); err != nil { // a safety net
			p.add(path, err.Error())
		}
	}
	return c, failure
}

// ruleCount converts a count that may turn a trip rule off: absent is 0 (the
// breaker's default), 0 is -1 (off), a negative value an error.
func ruleCount(n *int32, path, rule string, p *problems) int {
	switch {
	case n == nil:
		return 0
	case *n < 0:
		p.addf(path, "must not be negative (0 turns %s off), got %d", rule, *n)
		return 0
	case *n == 0:
		return -1
	}
	return int(*n)
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
	b := Budget{Mode: RatioBudget}
	if rb.Ratio != nil {
		if f := rb.GetRatio(); math.IsNaN(f) || f <= 0 || f > 1000 {
			p.addf("retryBudget.ratio", "must be in (0, 1000], got %v", f)
		} else {
			b.Ratio.Ratio = f
		}
	}
	if rb.MinRetriesPerSecond != nil {
		if f := rb.GetMinRetriesPerSecond(); math.IsNaN(f) || math.IsInf(f, 0) || f <= 0 {
			p.addf("retryBudget.minRetriesPerSecond", "must be greater than zero, got %v", f)
		} else {
			b.Ratio.MinRetriesPerSecond = f
		}
	}
	b.Ratio.Window = optionalDuration(rb.GetWindow(), "retryBudget.window", p)
	if b.Ratio.Window > 0 && b.Ratio.Window < 10*time.Millisecond {
		p.addf("retryBudget.window", "must be at least 10ms, got %v", b.Ratio.Window)
	}
	if p.count() == 0 {
		if err := b.Ratio.Validate(); err != nil { // a safety net
			p.add("retryBudget", err.Error())
		}
	}
	return b
}

// requiredDuration checks an A6 duration: present and greater than zero.
func requiredDuration(d *durationpb.Duration, path string, p *problems) time.Duration {
	if d == nil {
		p.add(path, "required, greater than zero")
		return 0
	}
	return positiveDuration(d, path, p)
}

// optionalDuration checks one of our durations: absent (0 = the default) or
// greater than zero.
func optionalDuration(d *durationpb.Duration, path string, p *problems) time.Duration {
	if d == nil {
		return 0
	}
	return positiveDuration(d, path, p)
}

// positiveDuration checks that d is valid, fits a time.Duration (about 292
// years) and is greater than zero.
func positiveDuration(d *durationpb.Duration, path string, p *problems) time.Duration {
	const maxSeconds = math.MaxInt64 / int64(time.Second)
	switch s := d.GetSeconds(); {
	case s > maxSeconds || s < -maxSeconds:
		p.addf(path, "duration %ds is out of range (at most about 292 years)", s)
	case d.CheckValid() != nil:
		p.addf(path, "invalid duration: %v", d.CheckValid())
	case d.AsDuration() <= 0:
		p.addf(path, "must be greater than zero, got %v", d.AsDuration())
	default:
		return d.AsDuration()
	}
	return 0
}

// statusCodes converts a list of status codes written as names or numbers,
// as grpc-go reads them: a JSON number (an integer from 0 to 16) or an
// upper-case name ("UNAVAILABLE", "CANCELLED"). OK is not accepted: it is
// not a failure. Duplicates are dropped.
func statusCodes(list []*structpb.Value, path string, p *problems) []codes.Code {
	var out []codes.Code
	for i, v := range list {
		if c, ok := statusCode(v, index(path, i), p); ok && !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	return out
}

// statusCode reads a code as grpc-go does (codes.Code.UnmarshalJSON).
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

// ignoredFields are the grpc fields this library does not act on.
var ignoredFields = map[protoreflect.Name]bool{
	"load_balancing_policy": true, "load_balancing_config": true, "health_check_config": true, "connection_scaling": true,
	"wait_for_ready": true, "timeout": true, "max_request_message_bytes": true, "max_response_message_bytes": true, "hedging_policy": true,
}

// ignored lists the paths of the ignored fields m holds.
func ignored(m protoreflect.Message, path string) []string {
	var out []string
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		if fd := fields.Get(i); ignoredFields[fd.Name()] && m.Has(fd) {
			out = append(out, join(path, fd.JSONName()))
		}
	}
	return out
}
