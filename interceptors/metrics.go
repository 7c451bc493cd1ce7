package interceptors

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"

	"github.com/khive/grpc-resilience/breaker"
)

// MeterName is the instrumentation scope of the suite's instruments.
const MeterName = "github.com/khive/grpc-resilience/interceptors"

// MetricPrefix prefixes the names of the suite's own instruments (the
// breaker and budget ones); the per-call retry instruments keep gRFC A96's
// names.
const MetricPrefix = "khive.resilience."

// The names of the suite's instruments (see WithMeterProvider).
const (
	MetricCallRetries    = "grpc.client.call.retries"
	MetricCallRetryDelay = "grpc.client.call.retry_delay"
	MetricCallHedges     = "grpc.client.call.hedges"

	MetricRejections          = MetricPrefix + "rejections"
	MetricBreakerState        = MetricPrefix + "breaker.state"
	MetricBreakerTransitions  = MetricPrefix + "breaker.transitions"
	MetricThrottleProbability = MetricPrefix + "breaker.throttle_probability"
	MetricBudgetBalance       = MetricPrefix + "budget.balance"
	MetricBudgetRefusals      = MetricPrefix + "budget.refusals"
)

// The attribute keys of the suite's instruments.
const (
	AttrMethod       = "grpc.method"
	AttrTarget       = "grpc.target"
	AttrBreaker      = "breaker.name"
	AttrBreakerState = "breaker.state"
	AttrBreakerFrom  = "breaker.from"
	AttrBreakerTo    = "breaker.to"
	AttrRejectReason = "reject.reason"
)

// latencyBounds are gRFC A66's latency buckets, in seconds, which grpc's
// OpenTelemetry plugin uses for its durations.
var latencyBounds = []float64{0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1, 2, 5, 10, 20, 50, 100}

// retryBounds are the buckets of grpc.client.call.retries: one per count up
// to gRFC A6's cap of 5 attempts, as gRFC A45's retries_per_call had.
var retryBounds = []float64{0, 1, 2, 3, 4, 5}

// WithMeterProvider sets the OpenTelemetry MeterProvider of the suite's
// instruments; the default is otel.GetMeterProvider(), a no-op until the
// application installs one with otel.SetMeterProvider (instruments made
// before that follow it).
//
// Per call, as gRFC A96 (attributes grpc.method and grpc.target, the
// connection's cc.Target()), recorded when a call of more than one attempt
// ends: a call of one attempt records nothing.
//
//   - grpc.client.call.retries (histogram, {retry}, buckets 0..5): the
//     attempts after the first, of a retried call.
//   - grpc.client.call.hedges (histogram, {hedge}, buckets 0..5): the
//     attempts after the first, of a hedged call ([HedgePolicy]).
//   - grpc.client.call.retry_delay (histogram, s, gRFC A66's latency
//     buckets): the time the call spent waiting between its attempts.
//
// grpc.method is the method without its leading slash for a call that
// carries grpc.StaticMethod() (generated stubs add it), else "other", as
// grpc's OpenTelemetry plugin does; WithMetricsMethodFilter names more.
// The suite records no transparent retries (grpc makes them below the
// interceptors, unseen).
//
// The suite's own instruments, under MetricPrefix:
//
//   - khive.resilience.rejections (counter, {attempt}; grpc.method,
//     grpc.target, reject.reason): attempts the suite refused to make:
//     first attempts the breaker rejected ("open", which includes forced
//     open, "half-open", "throttled") and retries the breaker ("open",
//     "half-open") or the retry budget ("budget") refused.
//   - khive.resilience.breaker.state (gauge, 1; breaker.name, grpc.target,
//     breaker.state): 1 for the breaker's current state, 0 for its other
//     states (closed, open, half-open, forced-open, disabled, metrics-only).
//   - khive.resilience.breaker.transitions (counter, {transition};
//     breaker.name, grpc.target, breaker.from, breaker.to).
//   - khive.resilience.breaker.throttle_probability (gauge, 1;
//     breaker.name, grpc.target): the adaptive throttle's current reject
//     probability.
//   - khive.resilience.budget.balance (gauge, {retry}; grpc.target): the
//     retries the target's budget allows now (tokens for a token bucket).
//   - khive.resilience.budget.refusals (counter, {retry}; grpc.target):
//     retries the target's budget refused, since the budget was made.
//
// A breaker's breaker.name and grpc.target are its [StateChangeEvent]'s
// Breaker and Target. The gauges and the budget counter read the suite's
// state when the reader collects ([Suite.Snapshot]): a successful call
// records nothing.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(o *options) { o.meterProvider = mp })
}

// WithMetricsMethodFilter records the grpc.method attribute of a call with
// the method's name when f(method) is true (method is the full name,
// "/pkg.Svc/Method"), even without grpc.StaticMethod(). Keep the set small:
// every name is a time series.
func WithMetricsMethodFilter(f func(method string) bool) Option {
	return optionFunc(func(o *options) { o.methodFilter = f })
}

// metrics holds the suite's instruments.
type metrics struct {
	retries     metric.Int64Histogram
	hedges      metric.Int64Histogram
	retryDelay  metric.Float64Histogram
	transitions metric.Int64Counter
	filter      func(string) bool

	suite atomic.Pointer[Suite] // the observed suite, set by New
	reg   metric.Registration   // the observable instruments' callback (nil if it failed)

	// attrs holds the attribute sets of the calls' measurements, one per
	// grpc.method value (a method with grpc.StaticMethod(), or "other"),
	// target and rejection reason: as many as the time series.
	mu    sync.Mutex
	attrs map[callKey]*attrSet
}

// attrSet is a prebuilt attribute set as the options of Record and Observe
// (slices, so that passing them allocates nothing), and the count of the
// rejections with these attributes.
type attrSet struct {
	rec      []metric.RecordOption
	obs      []metric.ObserveOption
	rejected atomic.Int64 // the rejections counter's value (reason sets only)
}

type callKey struct {
	method, target, reason string
}

// newMetrics makes the suite's instruments from mp (nil: the global
// MeterProvider). Errors go to otel.Handle: an instrument that failed is a
// no-op.
func newMetrics(mp metric.MeterProvider, filter func(string) bool) *metrics {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(MeterName)
	m := &metrics{filter: filter, attrs: map[callKey]*attrSet{}}
	m.retries = handle(meter.Int64Histogram(MetricCallRetries, metric.WithUnit("{retry}"),
		metric.WithDescription("Number of retries during the client call. If there were no retries, 0 is not reported."),
		metric.WithExplicitBucketBoundaries(retryBounds...)))
	m.hedges = handle(meter.Int64Histogram(MetricCallHedges, metric.WithUnit("{hedge}"),
		metric.WithDescription("Number of hedges during the client call. If there were no hedges, 0 is not reported."),
		metric.WithExplicitBucketBoundaries(retryBounds...)))
	m.retryDelay = handle(meter.Float64Histogram(MetricCallRetryDelay, metric.WithUnit("s"),
		metric.WithDescription("Total time of delay while there is no active attempt during the client call."),
		metric.WithExplicitBucketBoundaries(latencyBounds...)))
	// The rejections are counted by the suite (an atomic add on a
	// rejection, which stays cheap) and observed at collection.
	rejections := handle(meter.Int64ObservableCounter(MetricRejections, metric.WithUnit("{attempt}"),
		metric.WithDescription("Attempts the suite refused to make: rejected by the circuit breaker or refused by the retry budget.")))
	m.transitions = handle(meter.Int64Counter(MetricBreakerTransitions, metric.WithUnit("{transition}"),
		metric.WithDescription("Circuit breaker state changes.")))
	state := handle(meter.Int64ObservableGauge(MetricBreakerState, metric.WithUnit("1"),
		metric.WithDescription("Circuit breaker state: 1 for the current state, 0 for the others.")))
	prob := handle(meter.Float64ObservableGauge(MetricThrottleProbability, metric.WithUnit("1"),
		metric.WithDescription("The adaptive throttle's current probability of rejecting a new call.")))
	balance := handle(meter.Float64ObservableGauge(MetricBudgetBalance, metric.WithUnit("{retry}"),
		metric.WithDescription("Retries the target's retry budget allows now (tokens for a token bucket).")))
	refusals := handle(meter.Int64ObservableCounter(MetricBudgetRefusals, metric.WithUnit("{retry}"),
		metric.WithDescription("Retries the target's retry budget refused.")))
	m.reg = handle(meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		m.mu.Lock()
		for k, a := range m.attrs {
			if k.reason != "" {
				o.ObserveInt64(rejections, a.rejected.Load(), a.obs...)
			}
		}
		m.mu.Unlock()
		if s := m.suite.Load(); s != nil {
			observe(s.Snapshot(), o, state, prob, balance, refusals)
		}
		return nil
	}, rejections, state, prob, balance, refusals))
	return m
}

// handle passes err to otel.Handle and returns v (a no-op instrument when
// making it failed).
func handle[T any](v T, err error) T {
	if err != nil {
		otel.Handle(err)
	}
	return v
}

// observe reports snap to o.
func observe(snap Snapshot, o metric.Observer, state metric.Int64ObservableGauge, prob metric.Float64ObservableGauge, balance metric.Float64ObservableGauge, refusals metric.Int64ObservableCounter) {
	for _, b := range snap.Methods {
		name, target := attribute.String(AttrBreaker, b.Method), attribute.String(AttrTarget, b.Target)
		for _, st := range []breaker.State{breaker.Closed, breaker.Open, breaker.HalfOpen, breaker.ForcedOpen,
			breaker.Disabled, breaker.MetricsOnly} {
			v := int64(0)
			if st.String() == b.State {
				v = 1
			}
			o.ObserveInt64(state, v, metric.WithAttributes(name, target, attribute.String(AttrBreakerState, st.String())))
		}
		o.ObserveFloat64(prob, b.ThrottleProbability, metric.WithAttributes(name, target))
	}
	for _, t := range snap.Budget.Targets {
		attrs := metric.WithAttributes(attribute.String(AttrTarget, t.Target))
		o.ObserveFloat64(balance, t.Balance, attrs)
		o.ObserveInt64(refusals, int64(t.Refused), attrs)
	}
}

// methodAttr returns the grpc.method attribute of a call of method with
// opts, as [WithMeterProvider] and [WithMetricsMethodFilter] state.
func (m *metrics) methodAttr(method string, opts []grpc.CallOption) string {
	if hasStaticMethod(opts) || m.filter != nil && m.filter(method) {
		return strings.TrimLeft(method, "/")
	}
	return "other"
}

// callAttrs returns the attribute set of a call's measurements (reason ""
// for the retry instruments), cached.
func (m *metrics) callAttrs(method, target, reason string) *attrSet {
	k := callKey{method, target, reason}
	m.mu.Lock()
	defer m.mu.Unlock()
	if a, ok := m.attrs[k]; ok {
		return a
	}
	kv := []attribute.KeyValue{attribute.String(AttrMethod, method), attribute.String(AttrTarget, target)}
	if reason != "" {
		kv = append(kv, attribute.String(AttrRejectReason, reason))
	}
	o := metric.WithAttributeSet(attribute.NewSet(kv...))
	a := &attrSet{rec: []metric.RecordOption{o}, obs: []metric.ObserveOption{o}}
	m.attrs[k] = a
	return a
}

// callStats is what a call that may retry tracks for its metrics and
// events.
type callStats struct {
	opts   []grpc.CallOption // the call's options (grpc.StaticMethod)
	target string            // the connection's cc.Target()
	waited time.Duration     // time spent waiting between attempts
	hedged bool              // a hedged call: its attempts count as hedges
}

// RejectReason is why the suite refused to make an attempt (RejectEvent,
// the reject.reason attribute).
type RejectReason string

// The reasons of a rejection.
const (
	RejectOpen      RejectReason = "open"      // the breaker is open or forced open
	RejectHalfOpen  RejectReason = "half-open" // the breaker is half-open with every probe slot taken
	RejectThrottled RejectReason = "throttled" // the breaker's adaptive throttle shed a new call
	RejectBudget    RejectReason = "budget"    // the retry budget refused a retry
)

// RejectEvent describes an attempt the suite refused to make (WithOnReject).
type RejectEvent struct {
	// Context is the call's context.
	Context context.Context
	Method  string
	Target  string // the connection's cc.Target()
	Reason  RejectReason
	// Attempt is the attempt refused, 1-based: 1 for a call rejected before
	// any attempt, more for a retry.
	Attempt int
	Err     error // the error the caller gets
}

// WithOnReject calls f for every attempt the suite refuses to make (a call
// the breaker rejects, a retry the breaker or the retry budget refuses), on
// the caller's goroutine.
func WithOnReject(f func(RejectEvent)) Option {
	return optionFunc(func(o *options) { o.onReject = f })
}

// reasonOfRejection returns the reason of a breaker's rejection err.
func reasonOfRejection(err error) RejectReason {
	var oe *breaker.OpenError
	switch x := err.(type) {
	case *rejectError:
		oe = x.oe
	case *breaker.OpenError:
		oe = x
	}
	if oe != nil {
		switch {
		case oe.Throttled():
			return RejectThrottled
		case oe.State() == breaker.HalfOpen:
			return RejectHalfOpen
		}
	}
	return RejectOpen
}

// rejectAttrs are the prebuilt attribute sets of a rejection error's
// measurements: for a call with grpc.StaticMethod() and without.
type rejectAttrs struct {
	static, other *attrSet
}

// attrs returns the attribute set of a rejection of a call with opts,
// built on the first rejection of the error's period (which is the
// rejection of one method on one target), so that a rejection allocates
// nothing.
func (r *rejectError) attrs(m *metrics, method, target string, reason RejectReason, opts []grpc.CallOption) *attrSet {
	ra := r.ma.Load()
	if ra == nil {
		ra = &rejectAttrs{
			static: m.callAttrs(strings.TrimLeft(method, "/"), target, string(reason)),
			other:  m.callAttrs(m.methodAttr(method, nil), target, string(reason)),
		}
		r.ma.Store(ra)
	}
	if hasStaticMethod(opts) {
		return ra.static
	}
	return ra.other
}

// hasStaticMethod reports whether opts hold grpc.StaticMethod().
func hasStaticMethod(opts []grpc.CallOption) bool {
	for _, o := range opts {
		if _, ok := o.(grpc.StaticMethodCallOption); ok {
			return true
		}
	}
	return false
}

// transition records a breaker's state change.
func (m *metrics) transition(name, target string, from, to breaker.State) {
	m.transitions.Add(context.Background(), 1, metric.WithAttributes(
		attribute.String(AttrBreaker, name), attribute.String(AttrTarget, target),
		attribute.String(AttrBreakerFrom, from.String()), attribute.String(AttrBreakerTo, to.String())))
}
