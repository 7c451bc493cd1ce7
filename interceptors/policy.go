package interceptors

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/retry"
)

// Policy is what one method, one service or every method ("*") gets: a retry
// policy, a circuit breaker configuration, classification overrides and an
// optional fallback. The zero Policy means retry and breaker defaults.
type Policy struct {
	// Retry configures the retries of a call; the zero value means
	// [retry.Policy]'s defaults, MaxAttempts 1 no retries.
	Retry retry.Policy
	// Breaker configures the breakers of the methods the policy covers
	// ([WithBreakerKey] says which and names them; Breaker.Name is ignored).
	// The zero value means the breaker defaults; Mode breaker.Disabled turns
	// the breakers off.
	Breaker breaker.Config

	// RetryableCodes are the codes retried with backoff. nil means
	// {Unavailable}; an empty list, none. RESOURCE_EXHAUSTED is retried only when the server gave a
	// delay hint (grpc-retry-pushback-ms or google.rpc.RetryInfo), whether or
	// not it is listed; DEADLINE_EXCEEDED only if listed and only before the
	// caller's deadline (that is, when an attempt timeout expired or the
	// server gave up on its own).
	RetryableCodes []codes.Code
	// FailureCodes are the codes the breaker counts as failures. nil means
	// {Unavailable, Internal, Unknown, DataLoss, ResourceExhausted,
	// DeadlineExceeded}; an empty list, none. CANCELED is always ignored, and DEADLINE_EXCEEDED
	// once the caller's context is done or its deadline has passed; every
	// code not listed counts as a success (the server answered).
	FailureCodes []codes.Code

	// Fallback, if set, answers a unary call that failed because the method
	// is unhealthy: the breaker rejected it, or its last attempt failed with
	// a failure code (FailureCodes) and retrying stopped, while the caller's
	// context is live. It gets the error the caller would see; it may fill
	// reply and return nil (the call succeeds), or return an error, which the
	// caller sees instead. It is not called for application errors (such as
	// NOT_FOUND) nor for calls the caller canceled. Streams never use it.
	Fallback func(ctx context.Context, method string, req, reply any, err error) error

	// Hedge, if MaxAttempts is set, hedges the calls instead of retrying
	// them (gRFC A6: a method has a retry or a hedging policy): Retry's
	// MaxAttempts must then be 0 or 1; its AttemptTimeout bounds each
	// attempt of a unary call.
	Hedge HedgePolicy
}

// codeSet is a set of status codes below 64.
type codeSet uint64

func (s codeSet) has(c codes.Code) bool { return c < 64 && s&(1<<c) != 0 }

func setOf(cs ...codes.Code) codeSet {
	var s codeSet
	for _, c := range cs {
		s |= 1 << c
	}
	return s
}

var (
	defaultRetryable = setOf(codes.Unavailable)
	defaultFailure   = setOf(codes.Unavailable, codes.Internal, codes.Unknown, codes.DataLoss,
		codes.ResourceExhausted, codes.DeadlineExceeded)
)

// policy is a validated Policy, shared by every method it covers.
type policy struct {
	key                string         // the policy map key
	retry              retry.Policy   // normalized
	maxAttempts        int            // retry.MaxAttempts
	cfg                breaker.Config // normalized (Mode Closed for a forced-open policy)
	retryable, failure codeSet
	fallback           func(ctx context.Context, method string, req, reply any, err error) error
	hedge              *hedgePolicy // nil: no hedging
}

func policyError(key, field string, err error) error {
	return &suiteError{"interceptors: policy " + quote(key) + ": " + field, err}
}

// maxQuoted is how many bytes of a user's string an error message quotes.
const maxQuoted = 64

// quote returns s for an error message: at most maxQuoted bytes of it (cut
// at a rune boundary, "..." marking the cut) as a Go string literal, so that
// neither a huge key nor one with newlines or escapes reaches a log as is.
func quote(s string) string {
	if len(s) <= maxQuoted {
		return strconv.Quote(s)
	}
	cut := maxQuoted
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + fmt.Sprintf("... (%d bytes)", len(s))
}

// checkKey validates a policy map key: "/pkg.Svc/Method", "/pkg.Svc/*" or "*".
func checkKey(key string) error {
	if key == "*" {
		return nil
	}
	if i := strings.IndexFunc(key, func(r rune) bool { return r <= ' ' || r == 0x7f }); i >= 0 {
		return policyError(key, fmt.Sprintf("key has a space or control character at byte %d", i), nil)
	}
	svc, m, ok := strings.Cut(strings.TrimPrefix(key, "/"), "/")
	switch {
	case !strings.HasPrefix(key, "/") || !ok:
		return policyError(key, `key must be "/pkg.Service/Method", "/pkg.Service/*" or "*"`, nil)
	case svc == "" || svc == "*" || strings.Contains(svc, "*"):
		return policyError(key, "key has no service name", nil)
	case m == "" || strings.Contains(m, "/") || (m != "*" && strings.Contains(m, "*")):
		return policyError(key, `key must name one method or "*"`, nil)
	}
	return nil
}

// WithStrictKeys makes New and Update reject a policy key whose service, or
// method, is not in the proto registry (protoregistry.GlobalFiles, where
// generated code registers its services). Without it, New warns through the
// logger (WithLogger) once per such key: a client whose stubs are not
// generated Go code may well call services the registry does not know.
func WithStrictKeys() Option { return optionFunc(func(o *options) { o.strictKeys = true }) }

// checkKeyName returns the problem of a well-formed policy key beyond its
// syntax: a Unicode space (an ASCII one is a syntax error already) or, if
// registry, a service or method the proto registry does not know.
func checkKeyName(key string, registry bool) error {
	if i := strings.IndexFunc(key, unicode.IsSpace); i >= 0 {
		return policyError(key, fmt.Sprintf("key has a space or control character at byte %d", i), nil)
	}
	if registry {
		if problem := unregistered(key); problem != "" {
			return policyError(key, problem, nil)
		}
	}
	return nil
}

// unregistered says what of a well-formed key the proto registry lacks: ""
// if nothing (or the key is "*").
func unregistered(key string) string {
	if key == "*" {
		return ""
	}
	svc, m, _ := strings.Cut(key[1:], "/")
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
	sd, ok := d.(protoreflect.ServiceDescriptor)
	switch {
	case err != nil || !ok:
		return "service " + quote(svc) + " is not in the proto registry"
	case m != "*" && sd.Methods().ByName(protoreflect.Name(m)) == nil:
		return "method " + quote(m) + " is not in service " + quote(svc) + " of the proto registry"
	}
	return ""
}

// warnUnregistered warns once per key of keys that the proto registry does
// not know (see WithStrictKeys).
func (s *Suite) warnUnregistered(keys []string) {
	for _, key := range keys {
		if problem := unregistered(key); problem != "" {
			s.o.logger.Log(context.Background(), logging.LevelWarn, "policy key not in the proto registry",
				logging.ComponentFieldKey, "client", "policy.key", key, "problem", problem)
		}
	}
}

// resolvePolicy validates p (under key) and returns it resolved.
func resolvePolicy(key string, p Policy) (*policy, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	r, err := p.Retry.Normalize()
	if err != nil {
		return nil, policyError(key, "Retry."+strings.TrimPrefix(err.Error(), "retry: Policy."), err)
	}
	cfg, err := p.Breaker.Normalize()
	if err != nil {
		return nil, policyError(key, "Breaker."+strings.TrimPrefix(err.Error(), "breaker: Config."), err)
	}
	pol := &policy{key: key, retry: r, maxAttempts: r.MaxAttempts, cfg: cfg, fallback: p.Fallback}
	if pol.retryable, err = codeList(key, "RetryableCodes", p.RetryableCodes, defaultRetryable); err != nil {
		return nil, err
	}
	if pol.failure, err = codeList(key, "FailureCodes", p.FailureCodes, defaultFailure); err != nil {
		return nil, err
	}
	if err := resolveHedge(key, p, pol); err != nil {
		return nil, err
	}
	return pol, nil
}

// codeList validates the codes of field, cs, and returns their set (def for
// a nil cs).
func codeList(key, field string, cs []codes.Code, def codeSet) (codeSet, error) {
	if cs == nil {
		return def, nil
	}
	for i, c := range cs {
		if c == codes.OK || c >= 64 {
			return 0, policyError(key, fmt.Sprintf("%s[%d]: must be a non-OK code below 64, got %v", field, i, c), nil)
		}
	}
	return setOf(cs...), nil
}
