package interceptors

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"

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

type budgetMode uint8

const (
	budgetRatio budgetMode = iota
	budgetTokens
	budgetNone
)

type options struct {
	budget      budgetMode
	budgetCfg   retry.BudgetConfig
	maxTokens   float64
	tokenRatio  float64
	replayBytes int
	header      string
	breakerKey  func(target, method string) string
	maxBreakers int

	onRetry       func(RetryEvent)
	onGiveUp      func(GiveUpEvent)
	onStateChange func(method string, from, to breaker.State)
	logger        logging.Logger
}

func defaultOptions() options {
	return options{replayBytes: DefaultReplayBuffer, header: DefaultAttemptHeader, maxBreakers: DefaultMaxBreakers}
}

func (o *options) validate() error {
	switch o.budget {
	case budgetRatio:
		if err := o.budgetCfg.Validate(); err != nil {
			return &configError{msg: "interceptors: WithBudget: " + err.Error(), err: err}
		}
	case budgetTokens:
		if _, err := retry.NewTokenBucket(o.maxTokens, o.tokenRatio); err != nil {
			return &configError{msg: "interceptors: WithTokenBucket: " + err.Error(), err: err}
		}
	}
	if o.replayBytes < 0 {
		return errors.New("interceptors: WithReplayBuffer: must not be negative")
	}
	if o.maxBreakers < 1 {
		return fmt.Errorf("interceptors: WithMaxBreakers: must be at least 1, got %d", o.maxBreakers)
	}
	// grpc fails a call whose outgoing metadata has a malformed key (with
	// INTERNAL, a failure code): caught here, it cannot fail every retry.
	for i := 0; i < len(o.header); i++ {
		if c := o.header[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("interceptors: WithAttemptHeader: %s is not a metadata key (characters in [0-9a-z-_.])", quote(o.header))
		}
	}
	return nil
}

// newBudget returns a new budget as configured (the configuration was
// validated by New).
func (o *options) newBudget() *retry.Budget {
	var b *retry.Budget
	if o.budget == budgetTokens {
		b, _ = retry.NewTokenBucket(o.maxTokens, o.tokenRatio)
	} else {
		b, _ = retry.NewBudget(o.budgetCfg)
	}
	return b
}

// WithBudget gives each target (cc.Target()) a ratio retry budget configured
// by cfg, shared by every method, unary calls and streams. This is the
// default, with the zero BudgetConfig: retries stay within 20% of calls plus
// one per second, and a retry that succeeds refunds its cost.
func WithBudget(cfg retry.BudgetConfig) Option {
	return optionFunc(func(o *options) { o.budget, o.budgetCfg = budgetRatio, cfg })
}

// WithTokenBucket gives each target a gRFC A6 retryThrottling token bucket
// (maxTokens in (0, 1000], tokenRatio at least 0.001) instead of the ratio
// budget.
func WithTokenBucket(maxTokens, tokenRatio float64) Option {
	return optionFunc(func(o *options) { o.budget, o.maxTokens, o.tokenRatio = budgetTokens, maxTokens, tokenRatio })
}

// WithoutBudget turns the retry budget off: only MaxAttempts and the
// deadline limit retries.
func WithoutBudget() Option {
	return optionFunc(func(o *options) { o.budget = budgetNone })
}

// WithReplayBuffer sets how many bytes of sent messages a client or bidi
// stream buffers for replay (per call, default 256 KiB); a stream that sends
// more commits and is no longer retried. A grpc.MaxRetryRPCBufferSize call
// option, if present (also as a default call option), wins.
func WithReplayBuffer(bytes int) Option {
	return optionFunc(func(o *options) { o.replayBytes = bytes })
}

// WithAttemptHeader sets the name of the outgoing metadata entry set on
// retries to the number of preceding attempts (default
// "grpc-previous-rpc-attempts", as gRFC A6); "" turns it off. The name is
// lower-cased; New rejects one with characters grpc does not allow in a
// metadata key (outside [0-9a-z-_.]).
func WithAttemptHeader(name string) Option {
	return optionFunc(func(o *options) { o.header = strings.ToLower(name) })
}

// WithBreakerKey sets the function that names the breaker of a call
// (target is cc.Target()): calls with the same key share a breaker, which
// is named after the key. The breaker takes its settings from the policy of
// the first method that used the key (and, after an Update, from that
// method's new policy; it is dropped when no policy covers that method any
// more), so give methods of different policies different keys. The default
// is one breaker per target and method, named after the method: a server
// that is down does not get the same method's calls to another server
// rejected. Use func(_, m string) string { return m } for one breaker per
// method shared by every target.
func WithBreakerKey(f func(target, method string) string) Option {
	return optionFunc(func(o *options) { o.breakerKey = f })
}

// WithMaxBreakers caps the number of breakers of the suite (default
// DefaultMaxBreakers, 10,000; n must be at least 1). The cap bounds the
// memory a remote party can make the suite hold by choosing method names
// (a proxy forwarding its clients' methods under a "*" policy). When a new
// breaker key arrives and the suite is full, the breakers that are closed
// and were not used since the previous check (at most one a second) are
// dropped, losing only their closed-state statistics; an open, half-open or
// forced-open breaker is never dropped. If the suite is still full, the
// call uses its policy's overflow breaker, shared by every method of the
// policy beyond the cap and shown in Snapshot (Breakers.Overflowed counts
// the lookups it served).
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
// suite; method is the breaker's name (the method, by default; the key with
// WithBreakerKey). It runs after the breaker's lock is released, in
// transition order, never concurrently for one breaker. A breaker an Update
// or the cap dropped never calls it again.
func WithOnStateChange(f func(method string, from, to breaker.State)) Option {
	return optionFunc(func(o *options) { o.onStateChange = f })
}

// WithLogger logs retries (debug), give-ups (warn) and breaker state changes
// (warn when a breaker opens, info otherwise) to l, a go-grpc-middleware v2
// logging.Logger (adapters exist for slog, zap, zerolog, logrus, ...).
// Fields: "grpc.method", "grpc.attempt", "retry.delay", "retry.reason",
// "grpc.target" (a breaker's target), "breaker.from", "breaker.to",
// "grpc.code", "error".
func WithLogger(l logging.Logger) Option {
	return optionFunc(func(o *options) { o.logger = l })
}

// RetryEvent describes a retry about to happen.
type RetryEvent struct {
	Method  string
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
	Method   string
	Attempts int
	Reason   retry.Reason
	Err      error // the error the caller gets
}

// stateChangeHook returns the function every breaker's OnStateChange calls
// with the breaker's name and target ("" for a WithBreakerKey key or an
// overflow breaker), or nil if no hook or logger wants state changes.
func (o *options) stateChangeHook() func(name, target string, from, to breaker.State) {
	f, l := o.onStateChange, o.logger
	if f == nil && l == nil {
		return nil
	}
	return func(name, target string, from, to breaker.State) {
		if l != nil {
			lvl := logging.LevelInfo
			if to == breaker.Open || to == breaker.ForcedOpen {
				lvl = logging.LevelWarn
			}
			fields := []any{"grpc.method", name}
			if target != "" {
				fields = append(fields, "grpc.target", target)
			}
			l.Log(context.Background(), lvl, "circuit breaker state change",
				append(fields, "breaker.from", from.String(), "breaker.to", to.String())...)
		}
		if f != nil {
			f(name, from, to)
		}
	}
}
