package interceptors

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"go.opentelemetry.io/otel/metric"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/retry"
)

// DefaultReplayBuffer is the default limit, per call, of the messages a
// client or bidi stream buffers for replay before it commits (as grpc-go).
const DefaultReplayBuffer = 256 << 10

// DefaultAttemptHeader is the default name of the outgoing metadata entry
// that tells the server how many attempts preceded this one (gRFC A6).
const DefaultAttemptHeader = "grpc-previous-rpc-attempts"

// Option configures a Suite.
type Option interface{ apply(*options) }

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

type options struct {
	budget                string             // "ratio", "token-bucket" or "none" (SnapshotBudget.Mode)
	budgetCfg             retry.BudgetConfig // "ratio": normalized by validate
	maxTokens, tokenRatio float64
	replayBytes           int
	header                string
	breakerKey            func(target, method string) string
	maxBreakers           int
	strictKeys            bool // WithStrictKeys

	onRetry       func(RetryEvent)
	onGiveUp      func(GiveUpEvent)
	onReject      func(RejectEvent)
	onStateChange func(method string, from, to breaker.State)
	onStateEvent  func(StateChangeEvent)
	logger        logging.Logger

	meterProvider metric.MeterProvider // nil: otel.GetMeterProvider()
	methodFilter  func(string) bool
	metrics       *metrics // made by New
}

func defaultOptions() options {
	return options{budget: "ratio", replayBytes: DefaultReplayBuffer, header: DefaultAttemptHeader,
		maxBreakers: DefaultMaxBreakers}
}

func (o *options) validate() []error {
	var errs []error
	bad := func(option, msg string, err error) {
		errs = append(errs, &suiteError{"interceptors: " + option + ": " + msg, err})
	}
	var err error
	switch o.budget {
	case "ratio":
		if o.budgetCfg, err = o.budgetCfg.Normalize(); err != nil {
			bad("WithBudget", err.Error(), err)
		}
	case "token-bucket":
		if _, err = retry.NewTokenBucket(o.maxTokens, o.tokenRatio); err != nil {
			bad("WithTokenBucket", err.Error(), err)
		}
	}
	if o.replayBytes < 0 {
		bad("WithReplayBuffer", "must not be negative", nil)
	}
	if o.maxBreakers < 1 {
		bad("WithMaxBreakers", "must be at least 1, got "+strconv.Itoa(o.maxBreakers), nil)
	}
	// grpc fails a call whose outgoing metadata has a malformed key (with
	// INTERNAL, a failure code): caught here, it cannot fail every retry.
	if strings.Trim(o.header, "0123456789abcdefghijklmnopqrstuvwxyz-_.") != "" {
		bad("WithAttemptHeader", quote(o.header)+" is not a metadata key (characters in [0-9a-z-_.])", nil)
	}
	return errs
}

// newBudget returns a new budget as configured (the configuration was
// validated by New).
func (o *options) newBudget() retry.Budget {
	switch o.budget {
	case "ratio":
		b, _ := retry.NewBudget(o.budgetCfg)
		return b
	case "token-bucket":
		b, _ := retry.NewTokenBucket(o.maxTokens, o.tokenRatio)
		return b
	}
	return nil
}

// WithBudget gives each target (cc.Target()) a ratio retry budget configured
// by cfg, shared by every method, unary calls and streams. The default is
// WithBudget(retry.BudgetConfig{}).
func WithBudget(cfg retry.BudgetConfig) Option {
	return optionFunc(func(o *options) { o.budget, o.budgetCfg = "ratio", cfg })
}

// WithTokenBucket gives each target a gRFC A6 retryThrottling token bucket
// ([retry.NewTokenBucket]) instead of the ratio budget.
func WithTokenBucket(maxTokens, tokenRatio float64) Option {
	return optionFunc(func(o *options) { o.budget, o.maxTokens, o.tokenRatio = "token-bucket", maxTokens, tokenRatio })
}

// WithoutBudget turns the retry budget off: only MaxAttempts and the
// deadline limit retries.
func WithoutBudget() Option {
	return optionFunc(func(o *options) { o.budget = "none" })
}

// WithReplayBuffer sets how many bytes of sent messages a client or bidi
// stream buffers for replay (default [DefaultReplayBuffer]); a stream that
// sends more commits and is no longer retried. A grpc.MaxRetryRPCBufferSize
// call option, if present (also as a default call option), wins.
func WithReplayBuffer(bytes int) Option {
	return optionFunc(func(o *options) { o.replayBytes = bytes })
}

// WithAttemptHeader sets the name of the outgoing metadata entry set on
// retries to the number of preceding attempts (default
// [DefaultAttemptHeader]); "" turns it off. The name is lower-cased; New
// rejects one with characters outside [0-9a-z-_.].
func WithAttemptHeader(name string) Option {
	return optionFunc(func(o *options) { o.header = strings.ToLower(name) })
}

// WithBreakerKey sets the function that names the breaker of a call
// (target is cc.Target()): calls with the same key share a breaker, which
// is named after the key and follows the policy of the first method that
// used the key (see [Suite.Update]), so give methods of different policies
// different keys. The default is one breaker per target and method, named
// after the method: a server that is down does not get the same method's
// calls to another server rejected. Use func(_, m string) string { return m }
// for one breaker per method shared by every target.
func WithBreakerKey(f func(target, method string) string) Option {
	return optionFunc(func(o *options) { o.breakerKey = f })
}

// WithMaxBreakers caps the number of breakers of the suite (default
// [DefaultMaxBreakers]; n must be at least 1), which bounds the memory a
// remote party can make the suite hold by choosing method names. When a new
// breaker key arrives and the suite is full, the breakers that are closed
// and were not used since the previous check (at most one a second) are
// dropped, losing only their closed-state statistics. If the suite is still
// full, the call uses its policy's overflow breaker, shared by every method
// of the policy beyond the cap.
func WithMaxBreakers(n int) Option {
	return optionFunc(func(o *options) { o.maxBreakers = n })
}

// WithOnRetry calls f before each retry's wait, on the caller's goroutine.
func WithOnRetry(f func(RetryEvent)) Option {
	return optionFunc(func(o *options) { o.onRetry = f })
}

// WithOnGiveUp calls f when retrying stops and the call fails with a retry
// annotation (see GiveUpEvent), on the caller's goroutine.
func WithOnGiveUp(f func(GiveUpEvent)) Option {
	return optionFunc(func(o *options) { o.onGiveUp = f })
}

// WithOnStateChange calls f on every state change of every breaker of the
// suite with the breaker's name ([StateChangeEvent.Breaker]). It runs after
// the breaker's lock is released, in transition order, never concurrently
// for one breaker. A breaker an Update or the cap dropped never calls it
// again.
func WithOnStateChange(f func(method string, from, to breaker.State)) Option {
	return optionFunc(func(o *options) { o.onStateChange = f })
}

// WithOnStateChangeEvent is [WithOnStateChange] with the event's target
// and a context (both may be set).
func WithOnStateChangeEvent(f func(StateChangeEvent)) Option {
	return optionFunc(func(o *options) { o.onStateEvent = f })
}

// StateChangeEvent describes a breaker's state change.
type StateChangeEvent struct {
	// Context is context.Background(): a transition has no call (a timer
	// causes open → half-open); it serves handlers written for a context.
	Context context.Context
	// Breaker is the breaker's name: the method by default, the key with
	// WithBreakerKey, "<policy key> (overflow)" for an overflow breaker.
	Breaker string
	// Target is the target (cc.Target()) of a method's breaker; "" for a
	// WithBreakerKey key or an overflow breaker.
	Target   string
	From, To breaker.State
}

// WithLogger logs retries (debug), rejections (debug), give-ups (warn) and
// breaker state changes (warn when a breaker opens, info otherwise) to l, a
// go-grpc-middleware v2 logging.Logger, with that module's field conventions.
//
// A call's event has "grpc.component" ("client"), "grpc.service"
// ("pkg.Svc"), "grpc.method" ("Method"), the fields of
// logging.ExtractFields(ctx) these do not name (so a logging interceptor
// chained before the suite adds its own, trace ids included), then
// "grpc.target", "grpc.attempt" (the attempt that failed or was refused,
// 1-based), "retry.delay_ms" (a float64), "retry.reason", "reject.reason",
// "grpc.code" and "grpc.error". A state change has "grpc.component",
// "breaker.name", "grpc.service" and "grpc.method" when the name is a
// method, "grpc.target" for a target's breaker, "breaker.from" and
// "breaker.to".
func WithLogger(l logging.Logger) Option {
	return optionFunc(func(o *options) { o.logger = l })
}

// RetryEvent describes a retry about to happen.
type RetryEvent struct {
	// Context is the call's context (trace ids, exemplars).
	Context context.Context
	Method  string
	Target  string        // the connection's cc.Target()
	Attempt int           // the attempt that failed, 1-based
	Delay   time.Duration // the wait before the next attempt
	Err     error         // the failed attempt's error
}

// GiveUpEvent describes a call that failed after retrying stopped for
// Reason: the attempts exhausted, the budget, the deadline, an open breaker
// after at least one attempt, a non-retryable error after a retry, or the
// caller canceling during the retries. A first attempt that fails with a
// non-retryable error, or a call with retries off, is not a give-up; neither
// is a call the breaker rejects before any attempt.
type GiveUpEvent struct {
	// Context is the call's context (trace ids, exemplars).
	Context  context.Context
	Method   string
	Target   string // the connection's cc.Target()
	Attempts int
	Reason   retry.Reason
	Err      error // the error the caller gets
}

// stateChangeHook returns the function every breaker's OnStateChange calls
// with the breaker's name and target (as in [StateChangeEvent]): the
// transitions counter, the logger and the hooks.
func (o *options) stateChangeHook() func(name, target string, from, to breaker.State) {
	f, fe, l, m := o.onStateChange, o.onStateEvent, o.logger, o.metrics
	return func(name, target string, from, to breaker.State) {
		if m != nil {
			m.transition(name, target, from, to)
		}
		if l != nil {
			lvl := logging.LevelInfo
			if to == breaker.Open || to == breaker.ForcedOpen {
				lvl = logging.LevelWarn
			}
			fields := logging.Fields{logging.ComponentFieldKey, "client", "breaker.name", name}
			if svc, meth, ok := splitMethod(name); ok {
				fields = append(fields, logging.ServiceFieldKey, svc, logging.MethodFieldKey, meth)
			}
			if target != "" {
				fields = append(fields, "grpc.target", target)
			}
			l.Log(context.Background(), lvl, "circuit breaker state change",
				append(fields, "breaker.from", from.String(), "breaker.to", to.String())...)
		}
		if f != nil {
			f(name, from, to)
		}
		if fe != nil {
			fe(StateChangeEvent{Context: context.Background(), Breaker: name, Target: target, From: from, To: to})
		}
	}
}

// splitMethod splits "/pkg.Svc/Method" into "pkg.Svc" and "Method" (ok
// false for a name that is not a full method).
func splitMethod(full string) (service, method string, ok bool) {
	i := strings.LastIndexByte(full, '/')
	if !strings.HasPrefix(full, "/") || i <= 1 || i == len(full)-1 {
		return "", "", false
	}
	return full[1:i], full[i+1:], true
}

// callFields returns the log fields of an event of a call of method (full
// name) on target: go-grpc-middleware's common client fields, the fields
// of logging.ExtractFields(ctx) that these do not name, and grpc.target.
func callFields(ctx context.Context, method, target string) logging.Fields {
	f := logging.Fields{logging.ComponentFieldKey, "client"}
	if svc, m, ok := splitMethod(method); ok {
		f = append(f, logging.ServiceFieldKey, svc, logging.MethodFieldKey, m)
	} else {
		f = append(f, logging.MethodFieldKey, method)
	}
	f = f.WithUnique(logging.ExtractFields(ctx))
	if target != "" {
		f = f.AppendUnique(logging.Fields{"grpc.target", target})
	}
	return f
}

// millis returns d in milliseconds, a float64 (a log field).
func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
