package interceptors_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	gmwretry "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/retry"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
)

// warnings records the messages a suite logs at level warn.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) option() interceptors.Option {
	return interceptors.WithLogger(logging.LoggerFunc(func(_ context.Context, lvl logging.Level, msg string, _ ...any) {
		if lvl == logging.LevelWarn && !strings.HasPrefix(msg, "retries gave up") {
			w.mu.Lock()
			w.msgs = append(w.msgs, msg)
			w.mu.Unlock()
		}
	}))
}

func (w *warnings) list() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.msgs...)
}

// newLayeredClient returns an echo client whose connection chains
// interceptors unary and stream (in order) to a server over bufconn.
func newLayeredClient(t *testing.T, srv *echoserver.Server, unary []grpc.UnaryClientInterceptor, stream []grpc.StreamClientInterceptor) echov1.EchoServiceClient {
	t.Helper()
	cc, stop, err := echoserver.Bufconn(srv, grpc.WithChainUnaryInterceptor(unary...), grpc.WithChainStreamInterceptor(stream...), grpc.WithDisableRetry())
	require.NoError(t, err)
	t.Cleanup(stop)
	return echov1.NewEchoServiceClient(cc)
}

// TestNestedSuitePassesThrough: two suites in one chain, both retrying
// every method 4 times. Without the rule a failing call made 16 attempts;
// the inner suite now passes the outer suite's methods through (4
// attempts, one warning for any number of calls), unary and streaming, and
// still handles a method the outer suite has no policy for, until the outer
// suite covers it too.
func TestNestedSuitePassesThrough(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var outerLog, innerLog warnings
		outer, err := interceptors.New(map[string]interceptors.Policy{unaryMethod: {}, "/khive.echo.v1.EchoService/ServerStream": {}},
			interceptors.WithoutBudget(), outerLog.option())
		require.NoError(t, err)
		inner, err := interceptors.New(map[string]interceptors.Policy{echoService: {}},
			interceptors.WithoutBudget(), innerLog.option())
		require.NoError(t, err)
		srv := echoserver.New(1)
		client := newLayeredClient(t, srv,
			[]grpc.UnaryClientInterceptor{outer.Unary(), inner.Unary()},
			[]grpc.StreamClientInterceptor{outer.Stream(), inner.Stream()})

		for i, key := range []string{"u1", "u2"} {
			_, err := client.Unary(t.Context(), &echov1.UnaryRequest{Fault: failFirst(key, 100, codes.Unavailable)})
			require.Equal(t, codes.Unavailable, status.Code(err), "call %d", i)
			assert.Equal(t, 4, srv.Attempts(key), "call %d: the outer suite's attempts only", i)
		}

		st, err := client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 1, Fault: failFirst("s", 100, codes.Unavailable)})
		require.NoError(t, err)
		_, err = st.Recv()
		require.Equal(t, codes.Unavailable, status.Code(err))
		assert.Equal(t, 4, srv.Attempts("s"), "stream: the outer suite's attempts only")

		// Not covered by the outer suite: the inner one retries it.
		cs, err := client.ClientStream(t.Context())
		require.NoError(t, err)
		require.NoError(t, cs.Send(&echov1.ClientStreamRequest{Message: "m", Fault: failFirst("c", 100, codes.Unavailable)}))
		_, err = cs.CloseAndRecv()
		require.Equal(t, codes.Unavailable, status.Code(err))
		assert.Equal(t, 4, srv.Attempts("c"), "a method only the inner suite covers")

		// Once the outer suite covers it too, the inner one passes it through.
		require.NoError(t, outer.Update(map[string]interceptors.Policy{echoService: {}}))
		cs, err = client.ClientStream(t.Context())
		require.NoError(t, err)
		require.NoError(t, cs.Send(&echov1.ClientStreamRequest{Message: "m", Fault: failFirst("c2", 100, codes.Unavailable)}))
		_, err = cs.CloseAndRecv()
		require.Equal(t, codes.Unavailable, status.Code(err))
		assert.Equal(t, 4, srv.Attempts("c2"), "the outer suite's attempts only, after its Update")

		assert.Empty(t, outerLog.list())
		require.Len(t, innerLog.list(), 1)
		assert.Contains(t, innerLog.list()[0], "nested")
	})
}

// TestGMWRetryAroundSuiteWarns: go-grpc-middleware's retry interceptor
// chained before the suite makes all the suite's attempts again on each of
// its retries (3 × 4 = 12 attempts); the suite warns once, for any number
// of calls, and not for a method it does not handle.
func TestGMWRetryAroundSuiteWarns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var log warnings
		noBreaker := interceptors.Policy{Breaker: breaker.Config{Mode: breaker.Disabled}} // 12 failures in a row would open it
		suite, err := interceptors.New(map[string]interceptors.Policy{unaryMethod: noBreaker}, interceptors.WithoutBudget(), log.option())
		require.NoError(t, err)
		srv := echoserver.New(1)
		gmw := []gmwretry.CallOption{gmwretry.WithMax(3), gmwretry.WithCodes(codes.Unavailable), gmwretry.WithBackoff(gmwretry.BackoffLinear(0))}
		client := newLayeredClient(t, srv,
			[]grpc.UnaryClientInterceptor{gmwretry.UnaryClientInterceptor(gmw...), suite.Unary()},
			[]grpc.StreamClientInterceptor{gmwretry.StreamClientInterceptor(gmw...), suite.Stream()})

		// A method the suite does not handle: gmw retries alone, no warning.
		st, err := client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 1, Fault: failFirst("s", 100, codes.Unavailable)})
		require.NoError(t, err)
		_, err = st.Recv()
		require.Equal(t, codes.Unavailable, status.Code(err))
		assert.Empty(t, log.list())

		for i, key := range []string{"u1", "u2"} {
			_, err := client.Unary(t.Context(), &echov1.UnaryRequest{Fault: failFirst(key, 100, codes.Unavailable)})
			require.Equal(t, codes.Unavailable, status.Code(err), "call %d", i)
			assert.Equal(t, 12, srv.Attempts(key), "call %d: 3 gmw attempts × 4 suite attempts", i)
		}
		require.Len(t, log.list(), 1)
		assert.Contains(t, log.list()[0], "go-grpc-middleware")
	})
}

// TestGMWAttemptKey pins the metadata key go-grpc-middleware's retry
// interceptor uses, which the suite recognizes.
func TestGMWAttemptKey(t *testing.T) {
	assert.Equal(t, "x-retry-attempt", gmwretry.AttemptMetadataKey)
}

// BenchmarkUnarySuccessOnConn is BenchmarkUnarySuccess with a real
// connection, so that the nesting check finds the connection's state.
func BenchmarkUnarySuccessOnConn(b *testing.B) {
	s, err := interceptors.New(map[string]interceptors.Policy{"*": {}})
	require.NoError(b, err)
	cc, stop, err := echoserver.Bufconn(echoserver.New(1))
	require.NoError(b, err)
	defer stop()
	in := s.Unary()
	req, reply := new(echov1.UnaryRequest), new(echov1.UnaryResponse)
	run(b, func(ctx context.Context) error {
		return in(ctx, unaryMethod, req, reply, cc, noopInvoker, staticOpts...)
	})
}
