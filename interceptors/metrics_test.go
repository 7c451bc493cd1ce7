package interceptors_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc/codes"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
	"github.com/khive/grpc-resilience/retry"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

const bufTarget = "passthrough:///bufnet"

// collect returns the metrics r holds now, by name.
func collect(t *testing.T, r sdkmetric.Reader) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, r.Collect(context.Background(), &rm))
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != interceptors.MeterName {
			continue
		}
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// attrMap is a data point's attributes as a map.
func attrMap(s attribute.Set) map[string]string {
	out := map[string]string{}
	for _, kv := range s.ToSlice() {
		out[string(kv.Key)] = kv.Value.String()
	}
	return out
}

// matches reports whether the attributes hold every pair of want.
func matches(s attribute.Set, want map[string]string) bool {
	got := attrMap(s)
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// histPoint returns the int64 or float64 histogram point of m whose
// attributes hold want: its count and sum.
func histPoint(t *testing.T, m metricdata.Metrics, want map[string]string) (count uint64, sum float64, bounds []float64) {
	t.Helper()
	switch d := m.Data.(type) {
	case metricdata.Histogram[int64]:
		for _, p := range d.DataPoints {
			if matches(p.Attributes, want) {
				return p.Count, float64(p.Sum), p.Bounds
			}
		}
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			if matches(p.Attributes, want) {
				return p.Count, p.Sum, p.Bounds
			}
		}
	default:
		t.Fatalf("%s: not a histogram: %T", m.Name, m.Data)
	}
	return 0, 0, nil
}

// value returns the value of the sum or gauge point of m whose attributes
// hold want, and whether there is one.
func value(t *testing.T, m metricdata.Metrics, want map[string]string) (float64, bool) {
	t.Helper()
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			if matches(p.Attributes, want) {
				return float64(p.Value), true
			}
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			if matches(p.Attributes, want) {
				return float64(p.Value), true
			}
		}
	case metricdata.Gauge[float64]:
		for _, p := range d.DataPoints {
			if matches(p.Attributes, want) {
				return p.Value, true
			}
		}
	default:
		t.Fatalf("%s: unexpected data %T", m.Name, m.Data)
	}
	return 0, false
}

// attrKeys returns the attribute keys of every data point of m, sorted and
// deduplicated, joined by ",".
func attrKeys(m metricdata.Metrics) string {
	var keys []string
	add := func(s attribute.Set) {
		var ks []string
		for _, kv := range s.ToSlice() {
			ks = append(ks, string(kv.Key))
		}
		keys = append(keys, strings.Join(ks, ","))
	}
	switch d := m.Data.(type) {
	case metricdata.Histogram[int64]:
		for _, p := range d.DataPoints {
			add(p.Attributes)
		}
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			add(p.Attributes)
		}
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			add(p.Attributes)
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			add(p.Attributes)
		}
	case metricdata.Gauge[float64]:
		for _, p := range d.DataPoints {
			add(p.Attributes)
		}
	}
	slices.Sort(keys)
	return strings.Join(slices.Compact(keys), " | ")
}

// kindOf names m's instrument kind as exported.
func kindOf(m metricdata.Metrics) string {
	switch d := m.Data.(type) {
	case metricdata.Histogram[int64]:
		return "histogram[int64]"
	case metricdata.Histogram[float64]:
		return "histogram[float64]"
	case metricdata.Sum[int64]:
		return fmt.Sprintf("sum[int64] monotonic=%v %s", d.IsMonotonic, d.Temporality)
	case metricdata.Gauge[int64]:
		return "gauge[int64]"
	case metricdata.Gauge[float64]:
		return "gauge[float64]"
	}
	return fmt.Sprintf("%T", m.Data)
}

// TestMetrics runs a script over real grpc (bufconn, in a synctest bubble)
// with an SDK MeterProvider and a ManualReader, and checks every
// instrument's name, unit, kind and attributes after each step: a call
// that succeeds (nothing per call), a call rescued by two retries (gRFC
// A96's per-call metrics), an outage that opens the breaker (transitions,
// state, rejections), and a reload through Suite.Update that disables the
// breaker. The exported set is pinned by testdata/metrics.golden (go test
// -run TestMetrics -update rewrites it).
func TestMetrics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		defer func() { _ = mp.Shutdown(context.Background()) }()
		trip := breaker.Config{ConsecutiveFailures: 3, RecoveryTime: 10 * time.Second, RecoveryJitter: -1, ThrottleK: -1}
		pol := interceptors.Policy{Retry: retry.Policy{MaxAttempts: 3, InitialBackoff: 100 * time.Millisecond, Jitter: retry.NoJitter, Multiplier: 1}, Breaker: trip}
		e := newEnv(t, map[string]interceptors.Policy{echoService: pol}, withOptions(interceptors.WithMeterProvider(mp)))
		ctx := t.Context()
		call := map[string]string{"grpc.method": "khive.echo.v1.EchoService/Unary", "grpc.target": bufTarget}
		brk := map[string]string{"breaker.name": unaryMethod, "grpc.target": bufTarget}
		with := func(m map[string]string, kv ...string) map[string]string {
			out := map[string]string{}
			for k, v := range m {
				out[k] = v
			}
			for i := 0; i < len(kv); i += 2 {
				out[kv[i]] = kv[i+1]
			}
			return out
		}

		// A success records nothing per call; the breaker's state shows.
		_, err := e.unary(ctx, nil)
		require.NoError(t, err)
		got := collect(t, reader)
		assert.NotContains(t, got, interceptors.MetricCallRetries, "a call without retries reports no 0")
		assert.NotContains(t, got, interceptors.MetricCallRetryDelay)
		assert.NotContains(t, got, interceptors.MetricRejections)
		v, ok := value(t, got[interceptors.MetricBreakerState], with(brk, "breaker.state", "closed"))
		require.True(t, ok)
		assert.Equal(t, 1.0, v)
		v, _ = value(t, got[interceptors.MetricBreakerState], with(brk, "breaker.state", "open"))
		assert.Equal(t, 0.0, v)
		v, ok = value(t, got[interceptors.MetricThrottleProbability], brk)
		require.True(t, ok)
		assert.Equal(t, 0.0, v)
		_, ok = value(t, got[interceptors.MetricBudgetBalance], map[string]string{"grpc.target": bufTarget})
		assert.True(t, ok)

		// A call rescued by its second retry: one point of 2 retries and
		// 200ms of waiting (two 100ms backoffs, no jitter).
		_, err = e.unary(ctx, failFirst("rescued", 2, codes.Unavailable))
		require.NoError(t, err)
		got = collect(t, reader)
		m := got[interceptors.MetricCallRetries]
		assert.Equal(t, "{retry}", m.Unit)
		n, sum, bounds := histPoint(t, m, call)
		assert.Equal(t, uint64(1), n)
		assert.Equal(t, 2.0, sum)
		assert.Equal(t, []float64{0, 1, 2, 3, 4, 5}, bounds)
		m = got[interceptors.MetricCallRetryDelay]
		assert.Equal(t, "s", m.Unit)
		n, sum, bounds = histPoint(t, m, call)
		assert.Equal(t, uint64(1), n)
		assert.InDelta(t, 0.2, sum, 1e-9)
		assert.Len(t, bounds, 41, "gRFC A66's latency buckets")

		// An outage: the first call fails its 3 attempts, which opens the
		// breaker (3 consecutive failures); the next call is rejected.
		e.srv.SetDown(true)
		_, err = e.unary(ctx, nil)
		require.Error(t, err)
		_, err = e.unary(ctx, nil)
		require.ErrorIs(t, err, breaker.ErrOpen)
		got = collect(t, reader)
		v, ok = value(t, got[interceptors.MetricBreakerTransitions], with(brk, "breaker.from", "closed", "breaker.to", "open"))
		require.True(t, ok)
		assert.Equal(t, 1.0, v)
		v, _ = value(t, got[interceptors.MetricBreakerState], with(brk, "breaker.state", "open"))
		assert.Equal(t, 1.0, v)
		v, _ = value(t, got[interceptors.MetricBreakerState], with(brk, "breaker.state", "closed"))
		assert.Equal(t, 0.0, v)
		v, ok = value(t, got[interceptors.MetricRejections], with(call, "reject.reason", "open"))
		require.True(t, ok)
		assert.Equal(t, 1.0, v, "the call rejected before any attempt")
		n, sum, _ = histPoint(t, got[interceptors.MetricCallRetries], call)
		assert.Equal(t, uint64(2), n, "the failed call retried twice too")
		assert.Equal(t, 4.0, sum)

		// A reload that disables the breaker: the open breaker switches to
		// disabled, keeps its name, and admits calls again.
		dis := pol
		dis.Breaker.Mode = breaker.Disabled
		require.NoError(t, e.suite.Update(map[string]interceptors.Policy{echoService: dis}))
		e.srv.SetDown(false)
		_, err = e.unary(ctx, nil)
		require.NoError(t, err)
		got = collect(t, reader)
		v, ok = value(t, got[interceptors.MetricBreakerTransitions], with(brk, "breaker.from", "open", "breaker.to", "disabled"))
		require.True(t, ok)
		assert.Equal(t, 1.0, v)
		v, _ = value(t, got[interceptors.MetricBreakerState], with(brk, "breaker.state", "disabled"))
		assert.Equal(t, 1.0, v)
		v, _ = value(t, got[interceptors.MetricBreakerState], with(brk, "breaker.state", "open"))
		assert.Equal(t, 0.0, v)

		checkGolden(t, got)
	})
}

// checkGolden compares the exported set (name, kind, unit, description,
// attribute keys) with testdata/metrics.golden.
func checkGolden(t *testing.T, got map[string]metricdata.Metrics) {
	t.Helper()
	var names []string
	for n := range got {
		names = append(names, n)
	}
	slices.Sort(names)
	var b strings.Builder
	for _, n := range names {
		m := got[n]
		fmt.Fprintf(&b, "%s\n\tkind: %s\n\tunit: %s\n\tdescription: %s\n\tattributes: %s\n", n, kindOf(m), m.Unit, m.Description, attrKeys(m))
	}
	path := filepath.Join("testdata", "metrics.golden")
	if *update {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o644))
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "run go test -run TestMetrics -update")
	assert.Equal(t, string(want), b.String(), "the exported instruments changed: go test -run TestMetrics -update, and review the diff")
}

// TestMetricsRescuedCalls: a call of every kind (unary, server, client and
// bidi stream) whose first attempt fails with UNAVAILABLE and whose retry
// succeeds records one retry (gRFC A96), under its own grpc.method, and a
// delay equal to the backoff (25ms, no jitter).
func TestMetricsRescuedCalls(t *testing.T) {
	for _, k := range rescuedKinds {
		t.Run(k.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				reader := sdkmetric.NewManualReader()
				mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
				defer func() { _ = mp.Shutdown(context.Background()) }()
				pol := interceptors.Policy{Retry: retry.Policy{InitialBackoff: 25 * time.Millisecond, Jitter: retry.NoJitter}}
				e := newStreamEnv(t, pol, interceptors.WithMeterProvider(mp))
				require.NoError(t, k.call(t.Context(), e.client, "k"))
				got := collect(t, reader)
				want := map[string]string{"grpc.method": strings.TrimPrefix(k.method, "/")}
				n, sum, _ := histPoint(t, got[interceptors.MetricCallRetries], want)
				assert.Equal(t, uint64(1), n)
				assert.Equal(t, 1.0, sum)
				n, sum, _ = histPoint(t, got[interceptors.MetricCallRetryDelay], want)
				assert.Equal(t, uint64(1), n)
				assert.InDelta(t, 0.025, sum, 1e-9)
			})
		})
	}
}

// TestMetricsMethodAttribute: grpc's rule for grpc.method: a call without
// grpc.StaticMethod() (not from a generated stub) is "other", unless
// WithMetricsMethodFilter names its method.
func TestMetricsMethodAttribute(t *testing.T) {
	for _, tc := range []struct {
		name   string
		filter func(string) bool
		want   string
	}{
		{"no filter", nil, "other"},
		{"filter names it", func(m string) bool { return m == unaryMethod }, "khive.echo.v1.EchoService/Unary"},
		{"filter declines", func(string) bool { return false }, "other"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				reader := sdkmetric.NewManualReader()
				mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
				defer func() { _ = mp.Shutdown(context.Background()) }()
				opts := []interceptors.Option{interceptors.WithMeterProvider(mp)}
				if tc.filter != nil {
					opts = append(opts, interceptors.WithMetricsMethodFilter(tc.filter))
				}
				e := newEnv(t, map[string]interceptors.Policy{echoService: {}}, withOptions(opts...))
				req := &echov1.UnaryRequest{Message: "m", Fault: failFirst("k", 1, codes.Unavailable)}
				require.NoError(t, e.cc.Invoke(t.Context(), unaryMethod, req, new(echov1.UnaryResponse)))
				got := collect(t, reader)
				n, _, _ := histPoint(t, got[interceptors.MetricCallRetries], map[string]string{"grpc.method": tc.want, "grpc.target": bufTarget})
				assert.Equal(t, uint64(1), n)
			})
		})
	}
}
