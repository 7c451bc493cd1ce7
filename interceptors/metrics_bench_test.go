package interceptors_test

import (
	"context"
	"errors"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
)

// meterProviders are the providers the metrics benchmarks compare: the
// default (the global provider, a no-op while none is installed) and an SDK
// provider with a reader, as an application that exports metrics has.
func meterProviders(b *testing.B) []struct {
	name string
	opts []interceptors.Option
} {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	return []struct {
		name string
		opts []interceptors.Option
	}{
		{"default", nil},
		{"sdk", []interceptors.Option{interceptors.WithMeterProvider(mp)}},
	}
}

// BenchmarkUnarySuccessMetrics is BenchmarkUnarySuccess without and with an
// SDK MeterProvider. Goal: the SDK adds <= 5 ns/op and no allocation (a
// call without retries records nothing).
func BenchmarkUnarySuccessMetrics(b *testing.B) {
	for _, p := range meterProviders(b) {
		b.Run(p.name, func(b *testing.B) {
			in := mustSuite(b, map[string]interceptors.Policy{"*": {}}, p.opts...)
			req, reply := new(echov1.UnaryRequest), new(echov1.UnaryResponse)
			run(b, func(ctx context.Context) error {
				return in(ctx, unaryMethod, req, reply, nil, noopInvoker, staticOpts...)
			})
		})
	}
}

// BenchmarkUnaryRejectionMetrics is BenchmarkUnaryRejection without and
// with an SDK MeterProvider: a rejection adds one to a counter with a
// prebuilt attribute set. Goal: 0 allocs/op.
func BenchmarkUnaryRejectionMetrics(b *testing.B) {
	for _, mp := range meterProviders(b) {
		b.Run(mp.name, func(b *testing.B) {
			p := interceptors.Policy{Breaker: breaker.Config{ConsecutiveFailures: 1, RecoveryTime: time.Hour, MaxRecoveryTime: time.Hour}}
			in := mustSuite(b, map[string]interceptors.Policy{"*": p}, mp.opts...)
			errUnavailable := status.Error(codes.Unavailable, "down")
			failing := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
				return errUnavailable
			}
			req, reply := new(echov1.UnaryRequest), new(echov1.UnaryResponse)
			_ = in(context.Background(), unaryMethod, req, reply, nil, failing, staticOpts...)
			if err := in(context.Background(), unaryMethod, req, reply, nil, noopInvoker, staticOpts...); !errors.Is(err, breaker.ErrOpen) {
				b.Fatalf("breaker not open: %v", err)
			}
			run(b, func(ctx context.Context) error {
				return in(ctx, unaryMethod, req, reply, nil, noopInvoker, staticOpts...)
			})
		})
	}
}
