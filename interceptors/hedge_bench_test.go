package interceptors_test

import (
	"context"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
	"github.com/khive/grpc-resilience/retry"
)

// longTailServer answers each attempt after 1ms, or 50ms for a share slow
// of the attempts (seeded), and counts the attempts.
type longTailServer struct {
	echov1.UnimplementedEchoServiceServer
	mu       sync.Mutex
	rng      *rand.Rand
	slow     float64
	attempts int
}

func (s *longTailServer) Unary(ctx context.Context, _ *echov1.UnaryRequest) (*echov1.UnaryResponse, error) {
	s.mu.Lock()
	s.attempts++
	d := time.Millisecond
	if s.rng.Float64() < s.slow {
		d = 50 * time.Millisecond
	}
	s.mu.Unlock()
	select {
	case <-time.After(d):
		return &echov1.UnaryResponse{Message: "ok"}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// longTail makes calls sequential calls to a long-tail server (2% of the
// attempts 50x slower) through a suite of pol, and returns the calls'
// latency at quantile 0.5 and 0.99 and the attempts per call.
// settle (synctest.Wait, or nothing) runs after each call.
func longTail(t testing.TB, pol interceptors.Policy, calls int, settle func()) (p50, p99 time.Duration, perCall float64) {
	srv := &longTailServer{rng: rand.New(rand.NewPCG(1, 2)), slow: 0.02}
	suite, err := interceptors.New(map[string]interceptors.Policy{echoService: pol}, interceptors.WithoutBudget())
	require.NoError(t, err)
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	echov1.RegisterEchoServiceServer(gs, srv)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	cc, err := grpc.NewClient("passthrough:///bufnet", append([]grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}, suite.DialOptions()...)...)
	require.NoError(t, err)
	defer func() {
		_ = cc.Close()
		gs.Stop()
		<-done
	}()
	c := echov1.NewEchoServiceClient(cc)
	lat := make([]time.Duration, 0, calls)
	for range calls {
		start := time.Now()
		_, err := c.Unary(t.Context(), &echov1.UnaryRequest{})
		require.NoError(t, err)
		lat = append(lat, time.Since(start))
		settle()
	}
	slices.Sort(lat)
	_ = cc.Close()
	gs.Stop() // the losers' handlers have returned
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return lat[calls/2], lat[calls*99/100], float64(srv.attempts) / float64(calls)
}

var longTailPolicies = []interceptors.Policy{
	{Retry: retry.Policy{MaxAttempts: 1}, Breaker: breaker.Config{Mode: breaker.Disabled}},
	{Hedge: interceptors.HedgePolicy{MaxAttempts: 2, Delay: 3 * time.Millisecond}, Breaker: breaker.Config{Mode: breaker.Disabled}},
	{Hedge: interceptors.HedgePolicy{MaxAttempts: 3, Delay: 3 * time.Millisecond}, Breaker: breaker.Config{Mode: breaker.Disabled}},
}

// BenchmarkHedgeLongTail is TestHedgeLongTailLatency on the real clock
// (run it with -benchtime=2000x or more): p50 and p99 of the calls, and the
// extra attempts per call.
func BenchmarkHedgeLongTail(b *testing.B) {
	for i, name := range []string{"none", "hedge2", "hedge3"} {
		b.Run(name, func(b *testing.B) {
			p50, p99, perCall := longTail(b, longTailPolicies[i], b.N, func() {})
			b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
			b.ReportMetric(perCall-1, "extra-attempts/call")
		})
	}
}

// TestHedgeLongTailLatency measures, on synctest's virtual clock (latency
// is the server's alone), what hedging does to a long-tail server: 2% of
// the attempts take 50ms instead of 1ms. The figures are in the README's
// "Hedging" section.
func TestHedgeLongTailLatency(t *testing.T) {
	const calls = 5000
	for _, tc := range []struct {
		name string
		pol  interceptors.Policy
	}{
		{"no hedging", longTailPolicies[0]},
		{"hedge 2 attempts, 3ms", longTailPolicies[1]},
		{"hedge 3 attempts, 3ms", longTailPolicies[2]},
	} {
		synctest.Test(t, func(t *testing.T) {
			p50, p99, perCall := longTail(t, tc.pol, calls, synctest.Wait)
			t.Logf("%-22s p50 %v  p99 %v  attempts/call %.4f (extra %.4f)", tc.name, p50, p99, perCall, perCall-1)
			if tc.pol.Hedge.MaxAttempts == 0 {
				assert.Equal(t, 50*time.Millisecond, p99)
			} else {
				assert.Less(t, p99, 5*time.Millisecond)
				assert.Less(t, perCall-1, 0.05)
			}
		})
	}
}

// BenchmarkUnaryHedgedSuccess is the cost of the hedged path when the
// first attempt answers at once (no network): the goroutine, the timer and
// the attempt's own reply.
func BenchmarkUnaryHedgedSuccess(b *testing.B) {
	s, err := interceptors.New(map[string]interceptors.Policy{"*": longTailPolicies[1]})
	require.NoError(b, err)
	in := s.Unary()
	ctx := context.Background()
	ok := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	req, reply := &echov1.UnaryRequest{}, &echov1.UnaryResponse{}
	b.ReportAllocs()
	for b.Loop() {
		_ = in(ctx, unaryMethod, req, reply, nil, ok)
	}
}
