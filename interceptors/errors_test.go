package interceptors_test

import (
	"context"
	"net"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
	resiliencev1 "github.com/khive/grpc-resilience/proto/khive/resilience/v1"
)

// failingClient returns an echo client, through a suite with policy p for
// every method, whose server fails every call with UNAVAILABLE and details.
func failingClient(t *testing.T, p interceptors.Policy, details ...protoadapt.MessageV1) echov1.EchoServiceClient {
	t.Helper()
	suite, err := interceptors.New(map[string]interceptors.Policy{"*": p}, interceptors.WithoutBudget())
	require.NoError(t, err)
	st, err := status.New(codes.Unavailable, "backend down").WithDetails(details...)
	require.NoError(t, err)
	lis := bufconn.Listen(1 << 20)
	stop := echoserver.Serve(echoserver.New(1), lis, grpc.UnaryInterceptor(func(context.Context, any, *grpc.UnaryServerInfo, grpc.UnaryHandler) (any, error) {
		return nil, st.Err()
	}))
	cc, err := grpc.NewClient("passthrough:///bufnet", append([]grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}, suite.DialOptions()...)...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = cc.Close(); stop() })
	return echov1.NewEchoServiceClient(cc)
}

// detailsByType counts err's status details by message name and returns
// them.
func detailsByType(t *testing.T, err error) (map[string]int, []any) {
	t.Helper()
	n := map[string]int{}
	ds := status.Convert(err).Details()
	for _, d := range ds {
		m, ok := d.(proto.Message)
		require.True(t, ok, "detail %v", d)
		n[string(m.ProtoReflect().Descriptor().FullName())]++
	}
	return n, ds
}

// TestGiveUpKeepsServerErrorInfo: a status carries one ErrorInfo (AIP-193)
// and one RetryInfo. When the server's has an ErrorInfo, a give-up (retries
// exhausted, or ended by the open breaker) keeps it and the server's
// RetryInfo, and puts the suite's reason and attempts in a ResilienceInfo;
// without one, the suite adds its ErrorInfo as before.
func TestGiveUpKeepsServerErrorInfo(t *testing.T) {
	serverInfo := &errdetails.ErrorInfo{Reason: "BACKEND_DOWN", Domain: "example.com", Metadata: map[string]string{"shard": "7"}}
	serverRetry := &errdetails.RetryInfo{RetryDelay: durationpb.New(time.Millisecond)}
	openAfter2 := interceptors.Policy{Breaker: breaker.Config{ConsecutiveFailures: 2}}
	for _, tc := range []struct {
		name     string
		policy   interceptors.Policy
		details  []protoadapt.MessageV1
		reason   string
		attempts int
		stop     string
	}{
		{"server ErrorInfo, exhausted", interceptors.Policy{}, []protoadapt.MessageV1{serverInfo, serverRetry}, interceptors.ReasonRetriesExhausted, 4, "exhausted"},
		{"server ErrorInfo, breaker open", openAfter2, []protoadapt.MessageV1{serverRetry, serverInfo}, interceptors.ReasonCircuitOpen, 2, "breaker open"},
		{"no server ErrorInfo", interceptors.Policy{}, []protoadapt.MessageV1{serverRetry}, interceptors.ReasonRetriesExhausted, 4, "exhausted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				client := failingClient(t, tc.policy, tc.details...)
				_, err := client.Unary(t.Context(), &echov1.UnaryRequest{Message: "m"})
				require.Equal(t, codes.Unavailable, status.Code(err))
				n, ds := detailsByType(t, err)
				assert.Equal(t, 1, n["google.rpc.ErrorInfo"], "one ErrorInfo: %v", ds)
				assert.Equal(t, 1, n["google.rpc.RetryInfo"], "one RetryInfo: %v", ds)
				assert.Equal(t, time.Millisecond, retryInfoOf(err).GetRetryDelay().AsDuration())
				ei := errorInfo(err)
				if tc.details[len(tc.details)-1] == serverRetry && len(tc.details) == 1 {
					assert.Equal(t, 0, n["khive.resilience.v1.ResilienceInfo"], "%v", ds)
					assert.Equal(t, interceptors.ErrorDomain, ei.GetDomain())
					assert.Equal(t, tc.reason, ei.GetReason())
					assert.Equal(t, map[string]string{"attempts": "4", "reason": tc.stop}, ei.GetMetadata())
					return
				}
				assert.True(t, proto.Equal(serverInfo, ei), "the server's ErrorInfo, unchanged: %v", ei)
				require.Equal(t, 1, n["khive.resilience.v1.ResilienceInfo"], "%v", ds)
				for _, d := range ds {
					if ri, ok := d.(*resiliencev1.ResilienceInfo); ok {
						assert.True(t, proto.Equal(&resiliencev1.ResilienceInfo{
							Reason: tc.reason, Domain: interceptors.ErrorDomain, Attempts: int32(tc.attempts), RetryReason: tc.stop,
						}, ri), "%v", ri)
					}
				}
			})
		})
	}
}
