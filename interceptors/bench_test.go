package interceptors_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
	"github.com/khive/grpc-resilience/retry"
)

// The micro benchmarks call the interceptor directly with a no-op invoker
// and grpc.StaticMethod() in the call options, as generated stubs pass it.

var staticOpts = []grpc.CallOption{grpc.StaticMethod()}

func noopInvoker(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
	return nil
}

func mustSuite(b *testing.B, policies map[string]interceptors.Policy, opts ...interceptors.Option) grpc.UnaryClientInterceptor {
	b.Helper()
	s, err := interceptors.New(policies, opts...)
	if err != nil {
		b.Fatal(err)
	}
	return s.Unary()
}

// run benchmarks f serially and with b.RunParallel.
func run(b *testing.B, f func(ctx context.Context) error) {
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = f(ctx)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				_ = f(ctx)
			}
		})
	})
}

// BenchmarkUnarySuccess is the hot path: policy lookup, breaker admit and
// record, budget deposit, no retry. Goal: <= 30 ns/op, 0 allocs/op.
func BenchmarkUnarySuccess(b *testing.B) {
	in := mustSuite(b, map[string]interceptors.Policy{"*": {}})
	req, reply := new(echov1.UnaryRequest), new(echov1.UnaryResponse)
	run(b, func(ctx context.Context) error {
		return in(ctx, unaryMethod, req, reply, nil, noopInvoker, staticOpts...)
	})
}

// BenchmarkUnaryFailure: every attempt fails with UNAVAILABLE and the
// backoff is zero (1ns full jitter); 4 attempts per call, no budget. Goal:
// <= 150 ns and <= 1 alloc per attempt. "breaker-disabled" measures the
// retry loop alone; "metrics-only" adds the breaker's failure recording
// (mutex and clock per failure) without ever rejecting.
func BenchmarkUnaryFailure(b *testing.B) {
	errUnavailable := status.Error(codes.Unavailable, "down")
	for _, mode := range []struct {
		name string
		mode breaker.State
	}{{"breaker-disabled", breaker.Disabled}, {"metrics-only", breaker.MetricsOnly}} {
		b.Run(mode.name, func(b *testing.B) {
			p := interceptors.Policy{
				Retry:   retry.Policy{MaxAttempts: 4, InitialBackoff: time.Nanosecond, MaxBackoff: time.Nanosecond},
				Breaker: breaker.Config{Mode: mode.mode},
			}
			in := mustSuite(b, map[string]interceptors.Policy{"*": p}, interceptors.WithoutBudget())
			var attempts atomic.Int64
			invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
				attempts.Add(1)
				return errUnavailable
			}
			req, reply := new(echov1.UnaryRequest), new(echov1.UnaryResponse)
			f := func(ctx context.Context) error {
				return in(ctx, unaryMethod, req, reply, nil, invoker, staticOpts...)
			}
			for _, par := range []bool{false, true} {
				name := "serial"
				if par {
					name = "parallel"
				}
				b.Run(name, func(b *testing.B) {
					b.ReportAllocs()
					attempts.Store(0)
					ctx := context.Background()
					if par {
						b.RunParallel(func(pb *testing.PB) {
							for pb.Next() {
								_ = f(ctx)
							}
						})
					} else {
						for b.Loop() {
							_ = f(ctx)
						}
					}
					n := float64(attempts.Load())
					b.ReportMetric(n/float64(b.N), "attempts/op")
					b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n, "ns/attempt")
				})
			}
		})
	}
}

// BenchmarkUnaryRejection: the breaker is open; every call is rejected
// locally with the prebuilt error. Goal: <= 30 ns/op, 0 allocs/op.
func BenchmarkUnaryRejection(b *testing.B) {
	p := interceptors.Policy{Breaker: breaker.Config{ConsecutiveFailures: 1, RecoveryTime: time.Hour, MaxRecoveryTime: time.Hour}}
	in := mustSuite(b, map[string]interceptors.Policy{"*": p})
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
}

// BenchmarkUnaryThrottled: the breaker is closed and its adaptive throttle
// sheds nearly every call (every call so far failed); a shed call is
// rejected locally with the prebuilt error. Goal: <= 30 ns/op, 0
// allocs/op. About one call in a thousand is admitted and fails, which the
// figure includes.
func BenchmarkUnaryThrottled(b *testing.B) {
	p := interceptors.Policy{Retry: retry.Policy{MaxAttempts: 1}, Breaker: breaker.Config{ConsecutiveFailures: -1}}
	in := mustSuite(b, map[string]interceptors.Policy{"*": p})
	errUnavailable := status.Error(codes.Unavailable, "down")
	failing := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
		return errUnavailable
	}
	req, reply := new(echov1.UnaryRequest), new(echov1.UnaryResponse)
	var err error
	for i := 0; i < 100_000 && !errors.Is(err, breaker.ErrThrottled); i++ {
		err = in(context.Background(), unaryMethod, req, reply, nil, failing, staticOpts...)
	}
	for range 5000 { // fill the window: nearly everything is shed from then on
		_ = in(context.Background(), unaryMethod, req, reply, nil, failing, staticOpts...)
	}
	if !errors.Is(err, breaker.ErrThrottled) {
		b.Fatalf("not throttled: %v", err)
	}
	run(b, func(ctx context.Context) error {
		return in(ctx, unaryMethod, req, reply, nil, failing, staticOpts...)
	})
}

// BenchmarkUnaryEndToEnd calls the echo server over bufconn with and
// without the suite. Goal: no allocation beyond the plain call. Measured:
// four more, all inside grpc, which copies the response's header and
// trailer into the suite's Header and Trailer options (gRFC A6 commit
// detection and pushback need them on every attempt that may be retried).
func BenchmarkUnaryEndToEnd(b *testing.B) {
	for _, withSuite := range []bool{false, true} {
		name := "plain"
		var dial []grpc.DialOption
		if withSuite {
			name = "suite"
			s, err := interceptors.New(map[string]interceptors.Policy{"*": {}})
			if err != nil {
				b.Fatal(err)
			}
			dial = s.DialOptions()
		}
		b.Run(name, func(b *testing.B) {
			cc, stop, err := echoserver.Bufconn(echoserver.New(1), dial...)
			if err != nil {
				b.Fatal(err)
			}
			defer stop()
			client := echov1.NewEchoServiceClient(cc)
			req := &echov1.UnaryRequest{Message: "m"}
			run(b, func(ctx context.Context) error {
				_, err := client.Unary(ctx, req)
				return err
			})
		})
	}
}
