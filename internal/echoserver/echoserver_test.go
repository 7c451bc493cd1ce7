package echoserver_test

import (
	"context"
	"io"
	"testing"

	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func client(t *testing.T, s *echoserver.Server) echov1.EchoServiceClient {
	t.Helper()
	cc, closeFn, err := echoserver.Bufconn(s, grpc.WithDisableRetry())
	require.NoError(t, err)
	t.Cleanup(closeFn)
	return echov1.NewEchoServiceClient(cc)
}

func TestUnaryFaults(t *testing.T) {
	s := echoserver.New(1)
	c := client(t, s)
	ctx := t.Context()

	resp, err := c.Unary(ctx, &echov1.UnaryRequest{Message: "hi"})
	require.NoError(t, err)
	assert.Equal(t, "hi", resp.GetMessage())

	f := &echov1.Fault{Code: uint32(codes.Unavailable), Key: "k", FailAttempts: 2, Pushback: []string{"10", "20"}, HasRetryInfo: true, RetryInfoMs: 300}
	for range 2 {
		var tr metadata.MD
		_, err = c.Unary(ctx, &echov1.UnaryRequest{Fault: f}, grpc.Trailer(&tr))
		require.Equal(t, codes.Unavailable, status.Code(err))
		assert.Equal(t, []string{"10", "20"}, tr.Get("grpc-retry-pushback-ms"))
		details := status.Convert(err).Details()
		require.Len(t, details, 1)
		assert.Equal(t, int64(300), details[0].(*errdetails.RetryInfo).GetRetryDelay().AsDuration().Milliseconds())
	}
	_, err = c.Unary(ctx, &echov1.UnaryRequest{Fault: f})
	require.NoError(t, err, "the third attempt of key k passes")
	assert.Equal(t, 3, s.Attempts("k"))
	assert.Equal(t, 4, s.Calls(echoserver.Unary))

	var hdr metadata.MD
	_, err = c.Unary(ctx, &echov1.UnaryRequest{Fault: &echov1.Fault{Code: uint32(codes.Internal), SendHeader: true}}, grpc.Header(&hdr))
	require.Equal(t, codes.Internal, status.Code(err))
	assert.Equal(t, []string{"sent"}, hdr.Get("x-echo-header"))

	s.SetDown(true)
	_, err = c.Unary(ctx, &echov1.UnaryRequest{})
	require.Equal(t, codes.Unavailable, status.Code(err))
}

func TestServerStreamFailsAfterMessages(t *testing.T) {
	c := client(t, echoserver.New(1))
	st, err := c.ServerStream(t.Context(), &echov1.ServerStreamRequest{Message: "m", Count: 5, Fault: &echov1.Fault{Code: uint32(codes.Unavailable), AfterMessages: 2}})
	require.NoError(t, err)
	for i := range 2 {
		msg, err := st.Recv()
		require.NoError(t, err)
		assert.Equal(t, int32(i), msg.GetIndex())
	}
	_, err = st.Recv()
	assert.Equal(t, codes.Unavailable, status.Code(err))
}

func TestClientStreamCollectsInOrder(t *testing.T) {
	s := echoserver.New(1)
	c := client(t, s)
	f := &echov1.Fault{Code: uint32(codes.Unavailable), Key: "cs", FailAttempts: 1, AfterMessages: 2}
	send := func() (*echov1.ClientStreamResponse, error) {
		st, err := c.ClientStream(t.Context())
		require.NoError(t, err)
		for i, m := range []string{"a", "b", "c"} {
			req := &echov1.ClientStreamRequest{Message: m}
			if i == 0 {
				req.Fault = f
			}
			if err := st.Send(req); err != nil {
				break
			}
		}
		return st.CloseAndRecv()
	}
	_, err := send()
	require.Equal(t, codes.Unavailable, status.Code(err))
	resp, err := send()
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b", "c"}, resp.GetMessages())
	assert.Equal(t, [][]string{{"a", "b", "c"}}, s.Received("cs"))
}

func TestBidiEchoes(t *testing.T) {
	c := client(t, echoserver.New(1))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	st, err := c.BidiStream(ctx)
	require.NoError(t, err)
	for i, m := range []string{"x", "y"} {
		require.NoError(t, st.Send(&echov1.BidiStreamRequest{Message: m}))
		resp, err := st.Recv()
		require.NoError(t, err)
		assert.Equal(t, m, resp.GetMessage())
		assert.Equal(t, int32(i), resp.GetIndex())
	}
	require.NoError(t, st.CloseSend())
	_, err = st.Recv()
	assert.Equal(t, io.EOF, err)
}
