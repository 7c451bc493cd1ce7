package interceptors_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"testing/synctest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/stats/opentelemetry"
	"google.golang.org/grpc/test/bufconn"

	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
)

// TestChainOrderWithGRPCOpenTelemetry pins the README's "Chain order":
// grpc's OpenTelemetry plugin (stats/opentelemetry.DialOption) installed
// before the suite's options sees each call once; installed after, its
// interceptor runs once per attempt and counts every attempt as a call.
// 10 calls, 4 of which fail once with UNAVAILABLE and succeed on their
// retry: 14 attempts either way, 10 calls only in the right order.
func TestChainOrderWithGRPCOpenTelemetry(t *testing.T) {
	for _, tc := range []struct {
		name      string
		otelFirst bool
		calls     uint64
	}{
		{"plugin before the suite", true, 10},
		{"plugin after the suite", false, 14},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				reader := sdkmetric.NewManualReader()
				mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
				defer func() { _ = mp.Shutdown(context.Background()) }()
				suite, err := interceptors.New(map[string]interceptors.Policy{echoService: {}}, interceptors.WithoutBudget())
				require.NoError(t, err)
				plugin := opentelemetry.DialOption(opentelemetry.Options{MetricsOptions: opentelemetry.MetricsOptions{MeterProvider: mp}})
				var dial []grpc.DialOption
				if tc.otelFirst {
					dial = append(append(dial, plugin), suite.DialOptions()...)
				} else {
					dial = append(suite.DialOptions(), plugin)
				}
				client := bufClient(t, dial...)
				for i := range 10 {
					var f *echov1.Fault
					if i%5 < 2 { // 4 of 10
						f = failFirst(fmt.Sprint("k", i), 1, codes.Unavailable)
					}
					_, err := client.Unary(t.Context(), &echov1.UnaryRequest{Message: "m", Fault: f})
					require.NoError(t, err)
				}
				var rm metricdata.ResourceMetrics
				require.NoError(t, reader.Collect(context.Background(), &rm))
				var calls, attempts uint64
				for _, sm := range rm.ScopeMetrics {
					for _, m := range sm.Metrics {
						switch m.Name {
						case "grpc.client.call.duration":
							for _, p := range m.Data.(metricdata.Histogram[float64]).DataPoints {
								calls += p.Count
							}
						case "grpc.client.attempt.started":
							for _, p := range m.Data.(metricdata.Sum[int64]).DataPoints {
								attempts += uint64(p.Value)
							}
						}
					}
				}
				assert.Equal(t, uint64(14), attempts, "attempts")
				assert.Equal(t, tc.calls, calls, "calls (grpc.client.call.duration's count)")
			})
		})
	}
}

// bufClient starts the echo server on bufconn and returns a client
// connected with dial; the test's cleanup stops both.
func bufClient(t *testing.T, dial ...grpc.DialOption) echov1.EchoServiceClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	echov1.RegisterEchoServiceServer(gs, echoserver.New(1))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	dial = append([]grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}, dial...)
	cc, err := grpc.NewClient("passthrough:///bufnet", dial...)
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = cc.Close()
		gs.Stop()
		<-done
	})
	return echov1.NewEchoServiceClient(cc)
}
