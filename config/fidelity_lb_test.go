package config_test

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/test/bufconn"

	"github.com/khive/grpc-resilience/config"
	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
)

// These tests give loadBalancingConfig and healthCheckConfig to grpc-go
// alone and, loaded by this package, to Config.DialOptions, and compare
// which of two servers answers. Importing google.golang.org/grpc/health is
// what enables client health checking in this test program.

// backend is one of the two servers of a cluster: its echo service counts
// the calls that reached it; its health service records the services a
// client watches.
type backend struct {
	echo    *echoserver.Server
	health  *health.Server
	watched chan string
}

// watchSpy is a health service that reports each Watch it serves.
type watchSpy struct {
	*health.Server
	watched chan<- string
}

func (s watchSpy) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	select {
	case s.watched <- req.GetService():
	default:
	}
	return s.Server.Watch(req, stream)
}

// cluster serves two backends over bufconn and returns them with a client
// whose manual resolver gives both addresses, made with opts.
func cluster(t *testing.T, opts ...grpc.DialOption) ([2]*backend, echov1.EchoServiceClient) {
	t.Helper()
	var backends [2]*backend
	listeners := map[string]*bufconn.Listener{}
	var addrs []resolver.Address
	for i := range backends {
		b := &backend{echo: echoserver.New(1), health: health.NewServer(), watched: make(chan string, 1)}
		gs := grpc.NewServer()
		echov1.RegisterEchoServiceServer(gs, b.echo)
		healthpb.RegisterHealthServer(gs, watchSpy{b.health, b.watched})
		lis := bufconn.Listen(1 << 16)
		done := make(chan struct{})
		go func() { defer close(done); _ = gs.Serve(lis) }()
		t.Cleanup(func() { gs.Stop(); <-done })
		addr := "backend" + strconv.Itoa(i)
		listeners[addr] = lis
		addrs = append(addrs, resolver.Address{Addr: addr})
		backends[i] = b
	}
	r := manual.NewBuilderWithScheme("fidelity")
	r.InitialState(resolver.State{Addresses: addrs})
	dial := []grpc.DialOption{
		grpc.WithResolvers(r),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return listeners[addr].DialContext(ctx) }),
	}
	cc, err := grpc.NewClient("fidelity:///cluster", append(dial, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = cc.Close() })
	return backends, echov1.NewEchoServiceClient(cc)
}

// bothWays returns the dial options of grpc-go alone given doc, and those of
// this package given the same doc: Config.DialOptions, then the suite's.
func bothWays(t *testing.T, doc string) map[string][]grpc.DialOption {
	t.Helper()
	cfg, err := config.LoadJSON([]byte(doc))
	require.NoError(t, err)
	suite, err := cfg.NewSuite()
	require.NoError(t, err)
	return map[string][]grpc.DialOption{
		"grpc":  {grpc.WithDefaultServiceConfig(doc)},
		"suite": append(cfg.DialOptions(), suite.DialOptions()...),
	}
}

// answered returns how many unary calls each backend has served.
func answered(backends [2]*backend) [2]int {
	return [2]int{backends[0].echo.Calls(echoserver.Unary), backends[1].echo.Calls(echoserver.Unary)}
}

// callUntil makes calls (waiting for a ready connection) until backend i
// has answered one; it fails the test at ctx's deadline.
func callUntil(ctx context.Context, t *testing.T, client echov1.EchoServiceClient, backends [2]*backend, i int) {
	t.Helper()
	for answered(backends)[i] == 0 {
		_, err := client.Unary(ctx, &echov1.UnaryRequest{Message: "m"}, grpc.WaitForReady(true))
		require.NoError(t, err, "backend %d never answered", i)
	}
}

// calls makes n calls and returns how many each backend answered.
func calls(ctx context.Context, t *testing.T, client echov1.EchoServiceClient, backends [2]*backend, n int) [2]int {
	t.Helper()
	before := answered(backends)
	for range n {
		_, err := client.Unary(ctx, &echov1.UnaryRequest{Message: "m"}, grpc.WaitForReady(true))
		require.NoError(t, err)
	}
	after := answered(backends)
	return [2]int{after[0] - before[0], after[1] - before[1]}
}

// TestDialOptionsLoadBalancingConfig: loadBalancingConfig round_robin
// spreads calls evenly over both backends once both are ready, as with
// grpc-go alone; without it (pick_first) every call goes to one backend.
func TestDialOptionsLoadBalancingConfig(t *testing.T) {
	const n = 20
	t.Run("round_robin", func(t *testing.T) {
		for who, opts := range bothWays(t, `{"loadBalancingConfig": [{"round_robin": {}}]}`) {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			backends, client := cluster(t, opts...)
			callUntil(ctx, t, client, backends, 0)
			callUntil(ctx, t, client, backends, 1)
			assert.Equal(t, [2]int{n / 2, n / 2}, calls(ctx, t, client, backends, n), who)
		}
	})
	t.Run("pick_first", func(t *testing.T) {
		for who, opts := range bothWays(t, `{}`) {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			backends, client := cluster(t, opts...)
			got := calls(ctx, t, client, backends, n)
			assert.Contains(t, [][2]int{{n, 0}, {0, n}}, got, who)
		}
	})
}

// TestDialOptionsHealthCheckConfig: with healthCheckConfig and round_robin,
// the client watches the named service's health on each backend and sends
// no call to a backend that reports it NOT_SERVING, until it reports
// SERVING, as with grpc-go alone.
func TestDialOptionsHealthCheckConfig(t *testing.T) {
	const n = 20
	doc := `{"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": "x"}}`
	for who, opts := range bothWays(t, doc) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		backends, client := cluster(t, opts...)
		backends[0].health.SetServingStatus("x", healthpb.HealthCheckResponse_NOT_SERVING)
		backends[1].health.SetServingStatus("x", healthpb.HealthCheckResponse_SERVING)
		callUntil(ctx, t, client, backends, 1)
		select {
		case service := <-backends[0].watched:
			assert.Equal(t, "x", service, who)
		case <-ctx.Done():
			require.Fail(t, "no health watch on backend 0", who)
		}
		assert.Equal(t, [2]int{0, n}, calls(ctx, t, client, backends, n), who)

		backends[0].health.SetServingStatus("x", healthpb.HealthCheckResponse_SERVING)
		callUntil(ctx, t, client, backends, 0)
	}
}
