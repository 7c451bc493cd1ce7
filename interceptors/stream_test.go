package interceptors_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
	"github.com/khive/grpc-resilience/retry"
)

// Timing: every test that waits (backoff, pushback, attempt timeouts) runs in
// a testing/synctest bubble over bufconn, so its clock is fake and exact. The
// loopback TCP tests cannot use a bubble (network I/O does not block durably);
// they use a 1ms backoff and a generous deadline, and assert only on counts
// and order.

const (
	methodServerStream = "/khive.echo.v1.EchoService/ServerStream"
	methodClientStream = "/khive.echo.v1.EchoService/ClientStream"
	methodBidi         = "/khive.echo.v1.EchoService/BidiStream"
	echoServiceKey     = "/khive.echo.v1.EchoService/*"
)

// streamEnv is a suite installed on a connection to an echo server.
type streamEnv struct {
	srv    *echoserver.Server
	suite  *interceptors.Suite
	client echov1.EchoServiceClient
}

// newStreamEnv serves an echo server over bufconn behind a suite that gives
// every echo method pol. Inside a synctest bubble, call it from the bubble.
func newStreamEnv(t *testing.T, pol interceptors.Policy, opts ...interceptors.Option) *streamEnv {
	t.Helper()
	return newStreamEnvOn(t, echoserver.Bufconn, pol, opts...)
}

// newStreamEnvTCP is newStreamEnv over loopback TCP.
func newStreamEnvTCP(t *testing.T, pol interceptors.Policy, opts ...interceptors.Option) *streamEnv {
	t.Helper()
	return newStreamEnvOn(t, echoserver.Loopback, pol, opts...)
}

func newStreamEnvOn(t *testing.T, dial func(*echoserver.Server, ...grpc.DialOption) (*grpc.ClientConn, func(), error),
	pol interceptors.Policy, opts ...interceptors.Option,
) *streamEnv {
	t.Helper()
	suite, err := interceptors.New(map[string]interceptors.Policy{echoServiceKey: pol}, opts...)
	require.NoError(t, err)
	srv := echoserver.New(1)
	cc, stop, err := dial(srv, suite.DialOptions()...)
	require.NoError(t, err)
	t.Cleanup(stop)
	return &streamEnv{srv: srv, suite: suite, client: echov1.NewEchoServiceClient(cc)}
}

// breakerCounts returns the state and counts of method's breaker (zero
// before its first call).
func (e *streamEnv) breakerCounts(method string) interceptors.SnapshotMethod {
	for _, m := range e.suite.Snapshot().Methods {
		if m.Method == method {
			return m
		}
	}
	return interceptors.SnapshotMethod{}
}

// fastPolicy retries up to n attempts with a 1ms backoff and no breaker.
func fastPolicy(n int) interceptors.Policy {
	return interceptors.Policy{
		Retry:   retry.Policy{MaxAttempts: n, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond},
		Breaker: breaker.Config{Mode: breaker.Disabled},
	}
}

// streamFault fails the first failAttempts attempts carrying key with code,
// after `after` stream messages.
func streamFault(key string, code codes.Code, failAttempts, after int) *echov1.Fault {
	return &echov1.Fault{Code: uint32(code), Key: key, FailAttempts: int32(failAttempts), AfterMessages: int32(after)}
}

func words(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("m%02d", i)
	}
	return out
}

// recvServer reads a server stream to its end and returns the indices seen.
func recvServer(st grpc.ServerStreamingClient[echov1.ServerStreamResponse]) ([]int32, error) {
	var idx []int32
	for {
		m, err := st.Recv()
		if err == io.EOF {
			return idx, nil
		}
		if err != nil {
			return idx, err
		}
		idx = append(idx, m.GetIndex())
	}
}

// sendClient sends msgs on a client stream (the fault in the first) and
// closes it.
func sendClient(t require.TestingT, cs grpc.ClientStreamingClient[echov1.ClientStreamRequest, echov1.ClientStreamResponse],
	msgs []string, f *echov1.Fault,
) (*echov1.ClientStreamResponse, error) {
	if h, ok := t.(interface{ Helper() }); ok {
		h.Helper()
	}
	for i, m := range msgs {
		req := &echov1.ClientStreamRequest{Message: m}
		if i == 0 {
			req.Fault = f
		}
		if err := cs.Send(req); err != nil {
			require.ErrorIs(t, err, io.EOF, "Send fails only with io.EOF")
			break
		}
	}
	return cs.CloseAndRecv()
}

// bidiRun sends msgs (the fault in the first) on one goroutine while it
// receives on the caller's, as a bidi client does, and returns what it
// received and the receive error (nil at io.EOF).
func bidiRun(bs grpc.BidiStreamingClient[echov1.BidiStreamRequest, echov1.BidiStreamResponse],
	msgs []string, f *echov1.Fault,
) (got []string, idx []int32, sendErr, recvErr error) {
	return bidiRunHeader(bs, msgs, f, false)
}

// bidiRunHeader is bidiRun whose receiver first waits for the response
// headers if headerFirst.
func bidiRunHeader(bs grpc.BidiStreamingClient[echov1.BidiStreamRequest, echov1.BidiStreamResponse],
	msgs []string, f *echov1.Fault, headerFirst bool,
) (got []string, idx []int32, sendErr, recvErr error) {
	var wg sync.WaitGroup
	wg.Go(func() {
		for i, m := range msgs {
			req := &echov1.BidiStreamRequest{Message: m}
			if i == 0 {
				req.Fault = f
			}
			if sendErr = bs.Send(req); sendErr != nil {
				break
			}
		}
		_ = bs.CloseSend()
	})
	if headerFirst {
		_, _ = bs.Header()
	}
	for {
		m, err := bs.Recv()
		if err != nil {
			if err != io.EOF {
				recvErr = err
			}
			break
		}
		got = append(got, m.GetMessage())
		idx = append(idx, m.GetIndex())
	}
	wg.Wait()
	return got, idx, sendErr, recvErr
}

func seq(n int) []int32 {
	out := make([]int32, n)
	for i := range out {
		out[i] = int32(i)
	}
	return out
}

func TestStreamNoPolicyPassesThrough(t *testing.T) {
	s, err := interceptors.New(map[string]interceptors.Policy{"/other.Svc/*": {}})
	require.NoError(t, err)
	inner := &fakeStream{}
	opts := []grpc.CallOption{interceptors.DisableRetry(), grpc.WaitForReady(true)}
	var gotOpts []grpc.CallOption
	var gotCtx context.Context
	streamer := func(ctx context.Context, _ *grpc.StreamDesc, _ *grpc.ClientConn, _ string, o ...grpc.CallOption) (grpc.ClientStream, error) {
		gotCtx, gotOpts = ctx, o
		return inner, nil
	}
	ctx := t.Context()
	cs, err := s.Stream()(ctx, &grpc.StreamDesc{ServerStreams: true}, nil, methodServerStream, streamer, opts...)
	require.NoError(t, err)
	assert.Same(t, inner, cs, "the streamer's stream is returned as is")
	assert.Equal(t, ctx, gotCtx)
	assert.Equal(t, opts, gotOpts, "call options reach the streamer unchanged, ours included")
}

func TestServerStreamRetriedBeforeFirstMessage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{})
		st, err := e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Message: "m", Count: 3, Fault: streamFault("k", codes.Unavailable, 2, 0)})
		require.NoError(t, err)
		idx, err := recvServer(st)
		require.NoError(t, err)
		assert.Equal(t, seq(3), idx, "each message once, in order")
		assert.Equal(t, 3, e.srv.Attempts("k"))
	})
}

func TestServerStreamNotRetriedAfterFirstMessage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{})
		st, err := e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Message: "m", Count: 3, Fault: streamFault("k", codes.Unavailable, 1, 1)})
		require.NoError(t, err)
		idx, err := recvServer(st)
		assert.Equal(t, []int32{0}, idx, "the caller sees the first message once")
		require.Equal(t, codes.Unavailable, status.Code(err))
		assert.Equal(t, "echoserver: injected fault", status.Convert(err).Message(), "a committed failure is returned unchanged")
		assert.Equal(t, 1, e.srv.Attempts("k"))
	})
}

func TestServerStreamHeadersThenFailureNotRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{})
		f := streamFault("k", codes.Unavailable, 1, 0)
		f.SendHeader = true
		st, err := e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Message: "m", Count: 3, Fault: f})
		require.NoError(t, err)
		idx, err := recvServer(st)
		assert.Empty(t, idx)
		require.Equal(t, codes.Unavailable, status.Code(err))
		assert.Equal(t, 1, e.srv.Attempts("k"))
		md, err := st.Header()
		require.NoError(t, err)
		assert.Equal(t, []string{"sent"}, md.Get("x-echo-header"))
	})
}

func TestServerStreamNonRetryableTriedOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{})
		st, err := e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 3, Fault: streamFault("k", codes.InvalidArgument, 0, 0)})
		require.NoError(t, err)
		_, err = recvServer(st)
		require.Equal(t, codes.InvalidArgument, status.Code(err))
		assert.Equal(t, "echoserver: injected fault", status.Convert(err).Message(), "returned unchanged")
		assert.Equal(t, 1, e.srv.Attempts("k"))
	})
}

func TestServerStreamGiveUpIsAnnotated(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{Retry: retry.Policy{MaxAttempts: 3}})
		st, err := e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 3, Fault: streamFault("k", codes.Unavailable, 0, 0)})
		require.NoError(t, err)
		_, err = recvServer(st)
		require.Equal(t, codes.Unavailable, status.Code(err))
		assert.Contains(t, status.Convert(err).Message(), "gave up after 3 attempts (exhausted)")
		var re *retry.Error
		require.ErrorAs(t, err, &re)
		assert.Equal(t, retry.Exhausted, re.Reason)
		assert.Equal(t, 3, e.srv.Attempts("k"))
		// The stream stays over: later calls see the same end.
		_, err2 := st.Recv()
		assert.Equal(t, err, err2)
	})
}

func TestStreamDisableRetryCallOption(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{})
		st, err := e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 3, Fault: streamFault("k", codes.Unavailable, 1, 0)}, interceptors.DisableRetry())
		require.NoError(t, err)
		_, err = recvServer(st)
		require.Equal(t, codes.Unavailable, status.Code(err))
		assert.Equal(t, 1, e.srv.Attempts("k"))

		cs, err := e.client.ClientStream(t.Context(), interceptors.MaxAttempts(2))
		require.NoError(t, err)
		_, err = sendClient(t, cs, words(3), streamFault("k2", codes.Unavailable, 5, 1))
		require.Equal(t, codes.Unavailable, status.Code(err))
		assert.Equal(t, 2, e.srv.Attempts("k2"))
	})
}

func TestClientStreamRetriedMidwayReplaysInOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{})
		cs, err := e.client.ClientStream(t.Context())
		require.NoError(t, err)
		msgs := words(10)
		resp, err := sendClient(t, cs, msgs, streamFault("k", codes.Unavailable, 2, 3))
		require.NoError(t, err)
		assert.Equal(t, msgs, resp.GetMessages())
		assert.Equal(t, int32(2), resp.GetPreviousAttempts(), "attempt header on the last attempt")
		assert.Equal(t, 3, e.srv.Attempts("k"))
		assert.Equal(t, [][]string{msgs}, e.srv.Received("k"), "the successful attempt received exactly the client's messages, in order")
	})
}

func TestClientStreamSendSeesTheFailureAndRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{})
		cs, err := e.client.ClientStream(t.Context())
		require.NoError(t, err)
		require.NoError(t, cs.Send(&echov1.ClientStreamRequest{Message: "a", Fault: streamFault("k", codes.Unavailable, 1, 1)}))
		synctest.Wait() // the server has failed the attempt and the client has read its status
		require.Equal(t, 1, e.srv.Attempts("k"))
		// This send meets the ended attempt (io.EOF inside): it reads the
		// status, retries and replays, and reports success.
		require.NoError(t, cs.Send(&echov1.ClientStreamRequest{Message: "b"}))
		synctest.Wait()
		assert.Equal(t, 2, e.srv.Attempts("k"), "the retry happened inside SendMsg")
		require.NoError(t, cs.Send(&echov1.ClientStreamRequest{Message: "c"}))
		resp, err := cs.CloseAndRecv()
		require.NoError(t, err)
		assert.Equal(t, []string{"a", "b", "c"}, resp.GetMessages())
		assert.Equal(t, [][]string{{"a", "b", "c"}}, e.srv.Received("k"))
	})
}

func TestClientStreamAttemptFailingDuringTheReplayIsRetried(t *testing.T) {
	// 12 messages of 20 KiB: more than the flow-control windows hold, so
	// the second attempt's replay is still sending when that attempt fails
	// (after one message); the third attempt gets everything.
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{})
		msgs := make([]string, 12)
		for i := range msgs {
			msgs[i] = fmt.Sprintf("%02d", i) + strings.Repeat("x", 20<<10)
		}
		cs, err := e.client.ClientStream(t.Context())
		require.NoError(t, err)
		resp, err := sendClient(t, cs, msgs, streamFault("k", codes.Unavailable, 2, 1))
		require.NoError(t, err)
		assert.Equal(t, msgs, resp.GetMessages())
		assert.Equal(t, 3, e.srv.Attempts("k"))
		assert.Equal(t, [][]string{msgs}, e.srv.Received("k"))
	})
}

func TestClientStreamSendSeesACommittedEnd(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{})
		cs, err := e.client.ClientStream(t.Context())
		require.NoError(t, err)
		f := streamFault("k", codes.Unavailable, 1, 1)
		f.SendHeader = true
		require.NoError(t, cs.Send(&echov1.ClientStreamRequest{Message: "a", Fault: f}))
		synctest.Wait()
		assert.ErrorIs(t, cs.Send(&echov1.ClientStreamRequest{Message: "b"}), io.EOF, "headers came: no retry, the status is for Recv")
		_, err = cs.CloseAndRecv()
		require.Equal(t, codes.Unavailable, status.Code(err))
		assert.Equal(t, 1, e.srv.Attempts("k"))
	})
}

func TestClientStreamHeadersThenFailureNotRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{})
		cs, err := e.client.ClientStream(t.Context())
		require.NoError(t, err)
		f := streamFault("k", codes.Unavailable, 1, 2)
		f.SendHeader = true
		_, err = sendClient(t, cs, words(4), f)
		require.Equal(t, codes.Unavailable, status.Code(err))
		assert.Equal(t, 1, e.srv.Attempts("k"))
	})
}

func TestBidiRetriedMidwayReplaysInOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{})
		bs, err := e.client.BidiStream(t.Context())
		require.NoError(t, err)
		msgs := words(20)
		got, idx, sendErr, recvErr := bidiRun(bs, msgs, streamFault("k", codes.Unavailable, 2, 5))
		require.NoError(t, sendErr)
		require.NoError(t, recvErr)
		assert.Equal(t, msgs, got, "every echo once, in order")
		assert.Equal(t, seq(len(msgs)), idx, "all echoes come from one attempt")
		assert.Equal(t, 3, e.srv.Attempts("k"))
		assert.Equal(t, [][]string{msgs}, e.srv.Received("k"))
	})
}

func TestBidiConcurrentSendRecvUnderRace(t *testing.T) {
	// Many messages, the failure in the middle of the sends, sender and
	// receiver on their own goroutines: run with -race.
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, fastPolicy(6), interceptors.WithoutBudget())
		for i, after := range []int{1, 7, 50, 199, 250} {
			key := fmt.Sprintf("k%d", i)
			bs, err := e.client.BidiStream(t.Context())
			require.NoError(t, err)
			msgs := words(200)
			got, idx, sendErr, recvErr := bidiRun(bs, msgs, streamFault(key, codes.Unavailable, 3, after))
			require.NoError(t, sendErr)
			require.NoError(t, recvErr)
			require.Equal(t, msgs, got)
			require.Equal(t, seq(len(msgs)), idx)
			require.Equal(t, 4, e.srv.Attempts(key))
			require.Equal(t, [][]string{msgs}, e.srv.Received(key))
		}
	})
}

func TestReplayBufferOverflowCommits(t *testing.T) {
	big := strings.Repeat("x", 30) // 32 bytes encoded: the first (with its fault) and two more exceed 100 bytes
	msgs := []string{big, big, big, big, big, big}
	t.Run("WithReplayBuffer", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newStreamEnv(t, interceptors.Policy{}, interceptors.WithReplayBuffer(100))
			cs, err := e.client.ClientStream(t.Context())
			require.NoError(t, err)
			_, err = sendClient(t, cs, msgs, streamFault("k", codes.Unavailable, 1, 5))
			require.Equal(t, codes.Unavailable, status.Code(err), "committed by the overflow: not retried")
			assert.Equal(t, 1, e.srv.Attempts("k"))
		})
	})
	t.Run("call option wins over the suite", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newStreamEnv(t, interceptors.Policy{})
			cs, err := e.client.ClientStream(t.Context(), grpc.MaxRetryRPCBufferSize(100))
			require.NoError(t, err)
			_, err = sendClient(t, cs, msgs, streamFault("k", codes.Unavailable, 1, 5))
			require.Equal(t, codes.Unavailable, status.Code(err))
			assert.Equal(t, 1, e.srv.Attempts("k"))

			e2 := newStreamEnv(t, interceptors.Policy{}, interceptors.WithReplayBuffer(100))
			cs, err = e2.client.ClientStream(t.Context(), grpc.MaxRetryRPCBufferSize(1<<20))
			require.NoError(t, err)
			resp, err := sendClient(t, cs, msgs, streamFault("k", codes.Unavailable, 1, 5))
			require.NoError(t, err)
			assert.Equal(t, msgs, resp.GetMessages())
			assert.Equal(t, 2, e2.srv.Attempts("k"))
		})
	})
	t.Run("bidi", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newStreamEnv(t, interceptors.Policy{}, interceptors.WithReplayBuffer(100))
			bs, err := e.client.BidiStream(t.Context())
			require.NoError(t, err)
			got, _, _, recvErr := bidiRun(bs, msgs, streamFault("k", codes.Unavailable, 1, 5))
			require.Equal(t, codes.Unavailable, status.Code(recvErr))
			assert.Empty(t, got)
			assert.Equal(t, 1, e.srv.Attempts("k"))
		})
	})
}

func TestStreamBreakerOpenRejectsCreationLocally(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{
			Retry:   retry.Policy{MaxAttempts: 1},
			Breaker: breaker.Config{ConsecutiveFailures: 3, RecoveryTime: time.Minute},
		})
		e.srv.SetDown(true)
		for range 3 {
			st, err := e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 1})
			require.NoError(t, err)
			_, err = recvServer(st)
			require.Equal(t, codes.Unavailable, status.Code(err))
		}
		calls := e.srv.Calls(echoserver.ServerStream) + e.srv.Calls(echoserver.ClientStream) + e.srv.Calls(echoserver.BidiStream)

		_, err := e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 1})
		requireCircuitOpen(t, err, methodServerStream)
		// One breaker per method: the other methods are still closed, so
		// open theirs too, then check they reject locally as well.
		_, err = e.client.ClientStream(t.Context())
		require.NoError(t, err, "another method's breaker is closed")
		synctest.Wait()
		assert.Equal(t, calls, e.srv.Calls(echoserver.ServerStream)+e.srv.Calls(echoserver.ClientStream)+e.srv.Calls(echoserver.BidiStream),
			"a rejected stream never reaches the server; an unused one sends nothing yet")
	})
}

func requireCircuitOpen(t *testing.T, err error, method string) {
	t.Helper()
	require.Error(t, err)
	require.Equal(t, codes.Unavailable, status.Code(err))
	require.ErrorIs(t, err, breaker.ErrOpen)
	var info *errdetails.ErrorInfo
	var ri *errdetails.RetryInfo
	for _, d := range status.Convert(err).Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			info = d
		case *errdetails.RetryInfo:
			ri = d
		}
	}
	require.NotNil(t, info)
	assert.Equal(t, "CIRCUIT_OPEN", info.GetReason())
	assert.Equal(t, "khive.grpc-resilience", info.GetDomain())
	assert.Equal(t, method, info.GetMetadata()["method"])
	assert.NotNil(t, ri, "RetryInfo detail")
}

func TestStreamAttemptsEachPassTheBreaker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// One stream's failed attempts are recorded one by one: the third
		// opens the breaker, and the next stream is rejected locally.
		e := newStreamEnv(t, interceptors.Policy{
			Retry:   retry.Policy{MaxAttempts: 3},
			Breaker: breaker.Config{ConsecutiveFailures: 3, RecoveryTime: time.Minute},
		})
		e.srv.SetDown(true)
		cs, err := e.client.ClientStream(t.Context())
		require.NoError(t, err)
		_, err = sendClient(t, cs, words(2), nil)
		require.Equal(t, codes.Unavailable, status.Code(err))
		require.Equal(t, 3, e.srv.Calls(echoserver.ClientStream))
		_, err = e.client.ClientStream(t.Context())
		requireCircuitOpen(t, err, methodClientStream)
		assert.Equal(t, 3, e.srv.Calls(echoserver.ClientStream))
	})
}

func TestStreamOpenBreakerEndsTheRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		retries := 0
		e := newStreamEnv(t, interceptors.Policy{
			Retry:   retry.Policy{MaxAttempts: 5},
			Breaker: breaker.Config{ConsecutiveFailures: 2, RecoveryTime: time.Minute},
		}, interceptors.WithOnRetry(func(interceptors.RetryEvent) { retries++ }))
		e.srv.SetDown(true)
		start := time.Now()
		bs, err := e.client.BidiStream(t.Context())
		require.NoError(t, err)
		_, _, _, err = bidiRun(bs, words(3), nil)
		require.Equal(t, codes.Unavailable, status.Code(err))
		require.ErrorIs(t, err, breaker.ErrOpen)
		var re *retry.Error
		require.ErrorAs(t, err, &re)
		assert.Equal(t, interceptors.BreakerOpen, re.Reason)
		assert.Equal(t, 2, re.Attempts)
		assert.Contains(t, err.Error(), "echoserver: down", "the last real error, annotated")
		assert.Equal(t, 2, e.srv.Calls(echoserver.BidiStream))
		assert.Equal(t, 1, retries, "no retry after the second failure opened the breaker")
		assert.Less(t, time.Since(start), 100*time.Millisecond, "fake clock: one backoff (at most 50ms), no wait after the breaker opened")
	})
}

func TestStreamPushback(t *testing.T) {
	for _, tc := range []struct {
		name     string
		pushback []string
		attempts int
		delay    time.Duration
	}{
		{"200ms", []string{"200"}, 2, 200 * time.Millisecond},
		{"0", []string{"0"}, 2, 0},
		{"negative", []string{"-1"}, 1, 0},
		{"garbage", []string{"soon"}, 1, 0},
		{"two values", []string{"10", "20"}, 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var delays []time.Duration
				e := newStreamEnv(t, interceptors.Policy{Retry: retry.Policy{InitialBackoff: time.Hour, MaxBackoff: time.Hour}},
					interceptors.WithOnRetry(func(ev interceptors.RetryEvent) { delays = append(delays, ev.Delay) }))
				f := streamFault("k", codes.Unavailable, 1, 0)
				f.Pushback = tc.pushback
				start := time.Now()
				st, err := e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 2, Fault: f})
				require.NoError(t, err)
				idx, err := recvServer(st)
				assert.Equal(t, tc.attempts, e.srv.Attempts("k"))
				if tc.attempts == 1 {
					require.Equal(t, codes.Unavailable, status.Code(err))
					assert.Empty(t, delays)
					return
				}
				require.NoError(t, err)
				assert.Equal(t, seq(2), idx)
				assert.Equal(t, []time.Duration{tc.delay}, delays, "exactly the server's delay")
				assert.Equal(t, tc.delay, time.Since(start), "fake clock: the wait was the pushback")
			})
		})
	}
}

func TestStreamRetryInfo(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var delays []time.Duration
		e := newStreamEnv(t, interceptors.Policy{RetryableCodes: []codes.Code{codes.Unavailable}},
			interceptors.WithOnRetry(func(ev interceptors.RetryEvent) { delays = append(delays, ev.Delay) }))
		f := streamFault("k", codes.ResourceExhausted, 1, 2)
		f.HasRetryInfo, f.RetryInfoMs = true, 300
		cs, err := e.client.ClientStream(t.Context())
		require.NoError(t, err)
		resp, err := sendClient(t, cs, words(4), f)
		require.NoError(t, err, "RESOURCE_EXHAUSTED with a delay hint is retried")
		assert.Equal(t, words(4), resp.GetMessages())
		assert.Equal(t, []time.Duration{300 * time.Millisecond}, delays)
	})
}

func TestStreamNoAttemptThatCannotFinish(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{})
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		f := streamFault("k", codes.Unavailable, 1, 0)
		f.Pushback = []string{"500"}
		start := time.Now()
		st, err := e.client.ServerStream(ctx, &echov1.ServerStreamRequest{Count: 1, Fault: f})
		require.NoError(t, err)
		_, err = recvServer(st)
		require.Equal(t, codes.Unavailable, status.Code(err), "the server's error, not the deadline's")
		var re *retry.Error
		require.ErrorAs(t, err, &re)
		assert.Equal(t, retry.Deadline, re.Reason)
		assert.Equal(t, 1, e.srv.Attempts("k"))
		assert.Zero(t, time.Since(start), "fake clock: gave up at once instead of waiting")
	})
}

func TestStreamContextCommits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{})
		st, err := e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 2, Fault: streamFault("k", codes.Unavailable, 1, 0)})
		require.NoError(t, err)
		require.NotNil(t, st.Context())
		_, err = recvServer(st)
		require.Equal(t, codes.Unavailable, status.Code(err), "Context() committed the stream: no retry")
		assert.Equal(t, 1, e.srv.Attempts("k"))
	})
}

func TestScriptedTrailerCommits(t *testing.T) {
	// Scripted: grpc's own Trailer must not be called before the stream
	// ends (its transport would race), which is what this test does.
	synctest.Test(t, func(t *testing.T) {
		s, err := interceptors.New(map[string]interceptors.Policy{"*": {}})
		require.NoError(t, err)
		unavailable := status.Error(codes.Unavailable, "down")
		a1 := &scripted{sendFailAt: -1, status: unavailable}
		cs, err := s.Stream()(t.Context(), &grpc.StreamDesc{ServerStreams: true}, nil, "/x.Y/Z", scriptedStreamer(a1))
		require.NoError(t, err)
		require.NoError(t, cs.SendMsg(&echov1.ClientStreamRequest{Message: "a"}))
		require.NoError(t, cs.CloseSend())
		_ = cs.Trailer() // early, against the contract: it commits, as in grpc-go
		assert.Equal(t, unavailable, cs.RecvMsg(nil), "no retry after Trailer(): the only attempt's error, unchanged")
	})
}

func TestStreamHeaderWaitsForTheRetriedAttempt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{})
		st, err := e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 2, Fault: streamFault("k", codes.Unavailable, 2, 0)})
		require.NoError(t, err)
		md, err := st.Header()
		require.NoError(t, err)
		require.NotNil(t, md, "the third attempt's headers")
		assert.Equal(t, 3, e.srv.Attempts("k"))
		idx, err := recvServer(st)
		require.NoError(t, err)
		assert.Equal(t, seq(2), idx)
		assert.NotNil(t, st.Trailer())
	})
}

func TestStreamHeaderOfAFailedStreamIsNil(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{Retry: retry.Policy{MaxAttempts: 2}})
		st, err := e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 2, Fault: streamFault("k", codes.Unavailable, 5, 0)})
		require.NoError(t, err)
		md, err := st.Header()
		assert.Nil(t, md)
		assert.NoError(t, err, "as grpc: no headers, and the status comes from RecvMsg")
		_, err = st.Recv()
		require.Equal(t, codes.Unavailable, status.Code(err))
		assert.Contains(t, err.Error(), "gave up after 2 attempts")
		assert.Equal(t, 2, e.srv.Attempts("k"))
	})
}

func TestStreamAttemptTimeoutUntilCommit(t *testing.T) {
	pol := interceptors.Policy{
		Retry:          retry.Policy{MaxAttempts: 3, AttemptTimeout: 100 * time.Millisecond},
		RetryableCodes: []codes.Code{codes.Unavailable, codes.DeadlineExceeded},
	}
	t.Run("uncommitted attempts time out and are retried", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newStreamEnv(t, pol)
			start := time.Now()
			st, err := e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 1, Fault: &echov1.Fault{Key: "k", DelayMs: 1000}})
			require.NoError(t, err)
			_, err = recvServer(st)
			require.Equal(t, codes.DeadlineExceeded, status.Code(err))
			assert.Contains(t, err.Error(), "gave up after 3 attempts")
			assert.Equal(t, 3, e.srv.Attempts("k"))
			assert.Less(t, time.Since(start), time.Second, "fake clock: three 100ms attempts plus backoff, never the server's delay")
		})
	})
	t.Run("not listed: not retried", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := pol
			p.RetryableCodes = nil
			e := newStreamEnv(t, p)
			st, err := e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 1, Fault: &echov1.Fault{Key: "k", DelayMs: 1000}})
			require.NoError(t, err)
			_, err = recvServer(st)
			require.Equal(t, codes.DeadlineExceeded, status.Code(err))
			assert.Equal(t, 1, e.srv.Attempts("k"))
		})
	})
	t.Run("a committed stream outlives the timeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newStreamEnv(t, pol)
			bs, err := e.client.BidiStream(t.Context())
			require.NoError(t, err)
			require.NoError(t, bs.Send(&echov1.BidiStreamRequest{Message: "a", Fault: &echov1.Fault{Key: "k"}}))
			m, err := bs.Recv()
			require.NoError(t, err)
			assert.Equal(t, "a", m.GetMessage())
			time.Sleep(time.Second) // ten attempt timeouts
			require.NoError(t, bs.Send(&echov1.BidiStreamRequest{Message: "b"}))
			m, err = bs.Recv()
			require.NoError(t, err)
			assert.Equal(t, "b", m.GetMessage())
			require.NoError(t, bs.CloseSend())
			_, err = bs.Recv()
			assert.Equal(t, io.EOF, err)
			assert.Equal(t, 1, e.srv.Attempts("k"))
		})
	})
}

func TestStreamCallerCancelIsIgnoredByTheBreaker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var changes []string
		e := newStreamEnv(t, interceptors.Policy{Breaker: breaker.Config{ConsecutiveFailures: 1}},
			interceptors.WithOnStateChange(func(m string, from, to breaker.State) { changes = append(changes, m+" "+to.String()) }))
		for range 3 {
			ctx, cancel := context.WithCancel(t.Context())
			st, err := e.client.ServerStream(ctx, &echov1.ServerStreamRequest{Count: 1, Fault: &echov1.Fault{DelayMs: 10_000}})
			require.NoError(t, err)
			synctest.Wait()
			cancel()
			_, err = recvServer(st)
			require.Equal(t, codes.Canceled, status.Code(err))
		}
		st, err := e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 1})
		require.NoError(t, err)
		_, err = recvServer(st)
		require.NoError(t, err)
		assert.Empty(t, changes, "the breaker never moved")
	})
}

func TestStreamAbandonedProbeIsReleased(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{
			Retry:   retry.Policy{MaxAttempts: 1},
			Breaker: breaker.Config{ConsecutiveFailures: 1, RecoveryTime: time.Second, RecoveryJitter: -1, HalfOpenMaxCalls: 1},
		})
		e.srv.SetDown(true)
		st, err := e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 1})
		require.NoError(t, err)
		_, err = recvServer(st)
		require.Equal(t, codes.Unavailable, status.Code(err))
		_, err = e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 1})
		requireCircuitOpen(t, err, methodServerStream)
		e.srv.SetDown(false)
		time.Sleep(time.Second + time.Millisecond) // half-open

		// The probe: the caller cancels it and does not read its end.
		ctx, cancel := context.WithCancel(t.Context())
		probe, err := e.client.ServerStream(ctx, &echov1.ServerStreamRequest{Count: 1, Fault: &echov1.Fault{DelayMs: 10_000}})
		require.NoError(t, err)
		_, err = e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 1})
		requireCircuitOpen(t, err, methodServerStream) // the probe slot is taken
		cancel()
		synctest.Wait()

		st, err = e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 1})
		require.NoError(t, err, "the abandoned probe gave its slot back")
		_, err = recvServer(st)
		require.NoError(t, err)

		// Reading the probe's end now records nothing more: one outcome per
		// permit.
		_, err = recvServer(probe)
		require.Equal(t, codes.Canceled, status.Code(err))
		c := e.breakerCounts(methodServerStream)
		assert.Equal(t, [3]uint64{1, 1, 1}, [3]uint64{c.Successes, c.Failures, c.Ignored}, "successes, failures, ignored")
	})
}

func TestStreamCreationFailureIsRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, err := interceptors.New(map[string]interceptors.Policy{"*": {}})
		require.NoError(t, err)
		calls := 0
		inner := &fakeStream{}
		streamer := func(ctx context.Context, _ *grpc.StreamDesc, _ *grpc.ClientConn, _ string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
			calls++
			if calls < 3 {
				return nil, status.Error(codes.Unavailable, "no connection")
			}
			md, _ := metadata.FromOutgoingContext(ctx)
			inner.previous = md.Get("grpc-previous-rpc-attempts")
			return inner, nil
		}
		cs, err := s.Stream()(t.Context(), &grpc.StreamDesc{ServerStreams: true}, nil, "/x.Y/Z", streamer)
		require.NoError(t, err)
		assert.Equal(t, 3, calls)
		assert.Equal(t, []string{"2"}, inner.previous)
		assert.Equal(t, io.EOF, cs.RecvMsg(nil))

		calls = -10
		_, err = s.Stream()(t.Context(), &grpc.StreamDesc{ServerStreams: true}, nil, "/x.Y/Z", streamer)
		require.Equal(t, codes.Unavailable, status.Code(err))
		assert.Contains(t, err.Error(), "gave up after 4 attempts (exhausted)")
	})
}

func TestStreamLocalSendErrorIsIgnoredByTheBreaker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var changes []string
		e := newStreamEnv(t, interceptors.Policy{Breaker: breaker.Config{ConsecutiveFailures: 1}},
			interceptors.WithOnStateChange(func(m string, from, to breaker.State) { changes = append(changes, m+" "+to.String()) }))
		cs, err := e.client.ClientStream(t.Context(), grpc.MaxCallSendMsgSize(10))
		require.NoError(t, err)
		err = cs.Send(&echov1.ClientStreamRequest{Message: strings.Repeat("x", 100)})
		require.Equal(t, codes.ResourceExhausted, status.Code(err), "grpc's own local error, unchanged")
		_, err = cs.CloseAndRecv()
		require.Error(t, err)
		assert.Empty(t, changes)
	})
}

func TestStreamOverLoopbackTCP(t *testing.T) {
	e := newStreamEnvTCP(t, fastPolicy(4))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	cs, err := e.client.ClientStream(ctx)
	require.NoError(t, err)
	msgs := words(50)
	resp, err := sendClient(t, cs, msgs, streamFault("c", codes.Unavailable, 2, 10))
	require.NoError(t, err)
	assert.Equal(t, msgs, resp.GetMessages())
	assert.Equal(t, 3, e.srv.Attempts("c"))
	assert.Equal(t, [][]string{msgs}, e.srv.Received("c"))

	bs, err := e.client.BidiStream(ctx)
	require.NoError(t, err)
	got, idx, sendErr, recvErr := bidiRun(bs, msgs, streamFault("b", codes.Unavailable, 3, 20))
	require.NoError(t, sendErr)
	require.NoError(t, recvErr)
	assert.Equal(t, msgs, got)
	assert.Equal(t, seq(len(msgs)), idx)
	assert.Equal(t, 4, e.srv.Attempts("b"))
	assert.Equal(t, [][]string{msgs}, e.srv.Received("b"))

	st, err := e.client.ServerStream(ctx, &echov1.ServerStreamRequest{Count: 5, Fault: streamFault("s", codes.Unavailable, 1, 0)})
	require.NoError(t, err)
	sidx, err := recvServer(st)
	require.NoError(t, err)
	assert.Equal(t, seq(5), sidx)
	assert.Equal(t, 2, e.srv.Attempts("s"))

	st, err = e.client.ServerStream(ctx, &echov1.ServerStreamRequest{Count: 5, Fault: streamFault("s1", codes.Unavailable, 1, 2)})
	require.NoError(t, err)
	sidx, err = recvServer(st)
	require.Equal(t, codes.Unavailable, status.Code(err))
	assert.Equal(t, []int32{0, 1}, sidx, "no duplicate after a message")
	assert.Equal(t, 1, e.srv.Attempts("s1"))
}

// fakeStream is a grpc.ClientStream that ends at once.
type fakeStream struct {
	grpc.ClientStream
	previous []string
}

func (f *fakeStream) Header() (metadata.MD, error) { return metadata.MD{}, nil }
func (f *fakeStream) Trailer() metadata.MD         { return nil }
func (f *fakeStream) CloseSend() error             { return nil }
func (f *fakeStream) Context() context.Context     { return context.Background() }
func (f *fakeStream) SendMsg(any) error            { return nil }
func (f *fakeStream) RecvMsg(any) error            { return io.EOF }

// scripted is one attempt's stream in the scripted tests: it accepts
// messages until sendFailAt (then SendMsg returns sendErr, io.EOF by
// default), answers Header with header once over, RecvMsg with status
// (io.EOF: success) and Trailer with trailer. It never blocks.
type scripted struct {
	grpc.ClientStream
	sendFailAt int // index of the first failing SendMsg; -1: none
	sendErr    error
	header     metadata.MD
	status     error
	trailer    metadata.MD

	sent   []string
	closed bool
}

func (s *scripted) Header() (metadata.MD, error) { return s.header, nil }
func (s *scripted) Trailer() metadata.MD         { return s.trailer }
func (s *scripted) Context() context.Context     { return context.Background() }
func (s *scripted) CloseSend() error             { s.closed = true; return nil }
func (s *scripted) RecvMsg(any) error            { return s.status }
func (s *scripted) SendMsg(m any) error {
	if s.sendFailAt >= 0 && len(s.sent) >= s.sendFailAt {
		if s.sendErr != nil {
			return s.sendErr
		}
		return io.EOF
	}
	s.sent = append(s.sent, m.(*echov1.ClientStreamRequest).GetMessage())
	return nil
}

// scriptedStreamer returns the scripted attempts in turn.
func scriptedStreamer(attempts ...*scripted) grpc.Streamer {
	i := 0
	return func(context.Context, *grpc.StreamDesc, *grpc.ClientConn, string, ...grpc.CallOption) (grpc.ClientStream, error) {
		a := attempts[i]
		i++
		return a, nil
	}
}

var clientStreamDesc = &grpc.StreamDesc{ClientStreams: true}

func sendAll(t *testing.T, cs grpc.ClientStream, msgs ...string) {
	t.Helper()
	for _, m := range msgs {
		require.NoError(t, cs.SendMsg(&echov1.ClientStreamRequest{Message: m}))
	}
	require.NoError(t, cs.CloseSend())
}

func TestScriptedReplayMeetsTheNewAttemptsEnd(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, err := interceptors.New(map[string]interceptors.Policy{"*": {}})
		require.NoError(t, err)
		unavailable := status.Error(codes.Unavailable, "down")
		a1 := &scripted{sendFailAt: -1, status: unavailable}
		a2 := &scripted{sendFailAt: 1, status: unavailable} // fails during the replay, Trailers-Only
		a3 := &scripted{sendFailAt: -1, status: io.EOF}
		cs, err := s.Stream()(t.Context(), clientStreamDesc, nil, "/x.Y/Z", scriptedStreamer(a1, a2, a3))
		require.NoError(t, err)
		sendAll(t, cs, "a", "b", "c")
		require.Equal(t, io.EOF, cs.RecvMsg(nil))
		assert.Equal(t, []string{"a", "b", "c"}, a1.sent)
		assert.Equal(t, []string{"a"}, a2.sent)
		assert.False(t, a2.closed, "the replay stopped at the end of the attempt")
		assert.Equal(t, []string{"a", "b", "c"}, a3.sent, "the third attempt got everything, in order, once")
		assert.True(t, a3.closed, "CloseSend replayed")
	})
}

func TestScriptedReplayMeetsHeadersAndCommits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, err := interceptors.New(map[string]interceptors.Policy{"*": {}})
		require.NoError(t, err)
		unavailable := status.Error(codes.Unavailable, "down")
		a1 := &scripted{sendFailAt: -1, status: unavailable}
		a2 := &scripted{sendFailAt: 1, header: metadata.MD{}, status: unavailable} // answered with headers, then failed
		cs, err := s.Stream()(t.Context(), clientStreamDesc, nil, "/x.Y/Z", scriptedStreamer(a1, a2))
		require.NoError(t, err)
		sendAll(t, cs, "a", "b")
		err = cs.RecvMsg(nil)
		require.Equal(t, codes.Unavailable, status.Code(err))
		var re *retry.Error
		require.ErrorAs(t, err, &re)
		assert.Equal(t, retry.NotRetryable, re.Reason, "committed by the headers: not retried")
		assert.Equal(t, 2, re.Attempts)
	})
}

func TestScriptedLocalErrorDuringTheReplayEndsTheStream(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var changes []string
		s, err := interceptors.New(map[string]interceptors.Policy{"*": {Breaker: breaker.Config{ConsecutiveFailures: 2}}},
			interceptors.WithOnStateChange(func(m string, _, to breaker.State) { changes = append(changes, to.String()) }))
		require.NoError(t, err)
		local := status.Error(codes.Internal, "grpc: error while marshaling")
		a1 := &scripted{sendFailAt: -1, status: status.Error(codes.Unavailable, "down")}
		a2 := &scripted{sendFailAt: 0, sendErr: local}
		cs, err := s.Stream()(t.Context(), clientStreamDesc, nil, "/x.Y/Z", scriptedStreamer(a1, a2))
		require.NoError(t, err)
		sendAll(t, cs, "a")
		assert.Equal(t, local, cs.RecvMsg(nil))
		assert.Empty(t, changes, "one failure, and the local error does not count: the breaker stays closed")
	})
}

func TestScriptedServerStreamSendNeverReturnsEOF(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, err := interceptors.New(map[string]interceptors.Policy{"*": {}})
		require.NoError(t, err)
		unavailable := status.Error(codes.Unavailable, "down")
		a1 := &scripted{sendFailAt: 0, header: metadata.MD{}, status: unavailable} // answered with headers, then failed
		cs, err := s.Stream()(t.Context(), &grpc.StreamDesc{ServerStreams: true}, nil, "/x.Y/Z", scriptedStreamer(a1))
		require.NoError(t, err)
		require.NoError(t, cs.SendMsg(&echov1.ClientStreamRequest{Message: "a"}), "as grpc: the status comes from RecvMsg")
		require.NoError(t, cs.CloseSend())
		assert.Equal(t, unavailable, cs.RecvMsg(nil), "committed by the headers: returned unchanged")
	})
}

func TestStreamAttemptTimeoutKeepsARealFailure(t *testing.T) {
	// The attempt fails at once with UNAVAILABLE; its AttemptTimeout timer
	// fires while the caller is still composing its next message. The
	// failure is the server's, not a timeout: it is retried, and the second
	// attempt gets both messages.
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{Retry: retry.Policy{AttemptTimeout: 100 * time.Millisecond}})
		cs, err := e.client.ClientStream(t.Context())
		require.NoError(t, err)
		require.NoError(t, cs.Send(&echov1.ClientStreamRequest{Message: "a", Fault: streamFault("k", codes.Unavailable, 1, 1)}))
		time.Sleep(200 * time.Millisecond)
		require.NoError(t, cs.Send(&echov1.ClientStreamRequest{Message: "b"}))
		resp, err := cs.CloseAndRecv()
		require.NoError(t, err)
		assert.Equal(t, []string{"a", "b"}, resp.GetMessages())
		assert.Equal(t, 2, e.srv.Attempts("k"))
	})
}

func TestClientStreamResponseIsABreakerSuccess(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{
			Retry:   retry.Policy{MaxAttempts: 1},
			Breaker: breaker.Config{ConsecutiveFailures: 1, RecoveryTime: time.Second, RecoveryJitter: -1},
		})
		e.srv.SetDown(true)
		cs, err := e.client.ClientStream(t.Context())
		require.NoError(t, err)
		_, err = sendClient(t, cs, words(2), nil)
		require.Equal(t, codes.Unavailable, status.Code(err))
		e.srv.SetDown(false)
		time.Sleep(time.Second + time.Millisecond)

		cs, err = e.client.ClientStream(t.Context()) // the half-open probe
		require.NoError(t, err)
		_, err = sendClient(t, cs, words(2), nil)
		require.NoError(t, err)
		assert.Equal(t, breaker.Closed.String(), e.breakerCounts(methodClientStream).State,
			"the response (CloseAndRecv reads no further) recorded the probe's success")
	})
}

// gatedStream is an attempt's stream whose end the test decides, for the
// concurrency tests. Header blocks until the end unless header is set, as
// grpc's does for a Trailers-Only response; SendMsg accepts sendLimit
// messages (-1: any number), then blocks until the end and returns io.EOF;
// RecvMsg blocks until the end, then returns status (nil: a message; io.EOF:
// success). The end is close(end), or the attempt's context.
type gatedStream struct {
	grpc.ClientStream
	ctx       context.Context
	header    metadata.MD
	sendLimit int
	status    error
	end       chan struct{}

	mu   sync.Mutex
	sent []string
}

func newGated(ctx context.Context, header metadata.MD, sendLimit int, status error) *gatedStream {
	return &gatedStream{ctx: ctx, header: header, sendLimit: sendLimit, status: status, end: make(chan struct{})}
}

func (s *gatedStream) wait() error {
	select {
	case <-s.end:
		return nil
	case <-s.ctx.Done():
		return status.FromContextError(s.ctx.Err()).Err()
	}
}

func (s *gatedStream) Header() (metadata.MD, error) {
	if s.header == nil {
		_ = s.wait()
	}
	return s.header, nil
}
func (s *gatedStream) Trailer() metadata.MD     { return nil }
func (s *gatedStream) Context() context.Context { return s.ctx }
func (s *gatedStream) CloseSend() error         { return nil }
func (s *gatedStream) SendMsg(m any) error {
	s.mu.Lock()
	if s.sendLimit < 0 || len(s.sent) < s.sendLimit {
		s.sent = append(s.sent, m.(interface{ GetMessage() string }).GetMessage())
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	_ = s.wait()
	return io.EOF
}

func (s *gatedStream) RecvMsg(any) error {
	if err := s.wait(); err != nil {
		return err
	}
	return s.status
}

func (s *gatedStream) messages() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.sent...)
}

var bidiStreamDesc = &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}

func TestScriptedSendOnAReplacedAttemptSucceeds(t *testing.T) {
	// The sender is inside the first attempt's SendMsg when that attempt
	// fails, and the receiver resolves the failure. The send reports
	// success: its message was buffered before it was sent, and replayed
	// once on the new attempt.
	synctest.Test(t, func(t *testing.T) {
		s, err := interceptors.New(map[string]interceptors.Policy{"*": {}})
		require.NoError(t, err)
		var attempts []*gatedStream
		streamer := func(ctx context.Context, _ *grpc.StreamDesc, _ *grpc.ClientConn, _ string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
			g := newGated(ctx, nil, 1, status.Error(codes.Unavailable, "down"))
			if len(attempts) > 0 {
				g = newGated(ctx, metadata.MD{}, -1, io.EOF)
			}
			attempts = append(attempts, g)
			return g, nil
		}
		cs, err := s.Stream()(t.Context(), bidiStreamDesc, nil, "/x.Y/Z", streamer)
		require.NoError(t, err)
		require.NoError(t, cs.SendMsg(&echov1.BidiStreamRequest{Message: "a"}))
		sent := make(chan error)
		go func() { sent <- cs.SendMsg(&echov1.BidiStreamRequest{Message: "b"}) }()
		received := make(chan error)
		go func() { received <- cs.RecvMsg(nil) }()
		synctest.Wait() // both are inside the first attempt
		close(attempts[0].end)
		require.NoError(t, <-sent, "b went out on the new attempt")
		require.Len(t, attempts, 2)
		assert.Equal(t, []string{"a", "b"}, attempts[1].messages(), "replayed once, in order")
		close(attempts[1].end)
		assert.Equal(t, io.EOF, <-received)
	})
}

func TestScriptedHeaderDisarmsTheAttemptTimeout(t *testing.T) {
	// Header commits the stream: an attempt that has answered with headers
	// is not cut by AttemptTimeout while the caller waits for its first
	// message.
	synctest.Test(t, func(t *testing.T) {
		s, err := interceptors.New(map[string]interceptors.Policy{"*": {Retry: retry.Policy{AttemptTimeout: 100 * time.Millisecond}}})
		require.NoError(t, err)
		var g *gatedStream
		streamer := func(ctx context.Context, _ *grpc.StreamDesc, _ *grpc.ClientConn, _ string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
			g = newGated(ctx, metadata.MD{"h": {"v"}}, -1, nil)
			return g, nil
		}
		cs, err := s.Stream()(t.Context(), &grpc.StreamDesc{ServerStreams: true}, nil, "/x.Y/Z", streamer)
		require.NoError(t, err)
		md, err := cs.Header()
		require.NoError(t, err)
		assert.Equal(t, []string{"v"}, md.Get("h"))
		time.Sleep(time.Second)
		require.NoError(t, g.ctx.Err(), "the committed attempt outlived its timeout")
		close(g.end)
		require.NoError(t, cs.RecvMsg(nil))
	})
}

func TestScriptedAttemptContextsAreReleased(t *testing.T) {
	// With an AttemptTimeout each attempt has a context of its own: the
	// failed attempt's is cancelled before the retry opens the next one,
	// and the last one's when the stream ends.
	synctest.Test(t, func(t *testing.T) {
		s, err := interceptors.New(map[string]interceptors.Policy{"*": {Retry: retry.Policy{AttemptTimeout: time.Hour}}})
		require.NoError(t, err)
		var ctxs []context.Context
		var firstDoneAtRetry bool
		attempts := []*scripted{{sendFailAt: -1, status: status.Error(codes.Unavailable, "down")}, {sendFailAt: -1, status: io.EOF}}
		streamer := func(ctx context.Context, _ *grpc.StreamDesc, _ *grpc.ClientConn, _ string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
			if len(ctxs) == 1 {
				firstDoneAtRetry = ctxs[0].Err() != nil
			}
			ctxs = append(ctxs, ctx)
			return attempts[len(ctxs)-1], nil
		}
		cs, err := s.Stream()(t.Context(), &grpc.StreamDesc{ServerStreams: true}, nil, "/x.Y/Z", streamer)
		require.NoError(t, err)
		require.NoError(t, cs.SendMsg(&echov1.ClientStreamRequest{Message: "a"}))
		require.NoError(t, cs.CloseSend())
		require.Equal(t, io.EOF, cs.RecvMsg(nil))
		require.Len(t, ctxs, 2)
		assert.True(t, firstDoneAtRetry, "the failed attempt's context was cancelled before the retry")
		assert.Error(t, ctxs[1].Err(), "the last attempt's context was cancelled at the end")
		assert.Equal(t, []string{"a"}, attempts[1].sent)
	})
}

func TestScriptedLocalSendErrorIsNeverRetried(t *testing.T) {
	// grpc ends the stream when SendMsg fails locally (a message it cannot
	// marshal or that is too large); the stream ends with that error even
	// when its code is retryable.
	synctest.Test(t, func(t *testing.T) {
		s, err := interceptors.New(map[string]interceptors.Policy{"*": {RetryableCodes: []codes.Code{codes.Unavailable, codes.Internal}}})
		require.NoError(t, err)
		local := status.Error(codes.Internal, "grpc: error while marshaling")
		a1 := &scripted{sendFailAt: 0, sendErr: local, status: local}
		a2 := &scripted{sendFailAt: -1, status: io.EOF}
		cs, err := s.Stream()(t.Context(), clientStreamDesc, nil, "/x.Y/Z", scriptedStreamer(a1, a2))
		require.NoError(t, err)
		assert.Equal(t, local, cs.SendMsg(&echov1.ClientStreamRequest{Message: "a"}))
		assert.Equal(t, local, cs.RecvMsg(nil))
		assert.Empty(t, a2.sent, "no second attempt")
	})
}

func TestScriptedProbeOpenedAsTheCallerCancelsIsReleased(t *testing.T) {
	// A half-open breaker admits two probes. The first attempt (a probe)
	// fails with a code that is retryable but not a breaker failure; the
	// retry takes the second probe slot, and the caller cancels while it
	// opens, then never reads the stream's end. The probe slot comes back
	// at once: the next stream is admitted.
	synctest.Test(t, func(t *testing.T) {
		s, err := interceptors.New(map[string]interceptors.Policy{"*": {
			RetryableCodes: []codes.Code{codes.Aborted},
			Breaker:        breaker.Config{ConsecutiveFailures: 1, RecoveryTime: time.Second, RecoveryJitter: -1, HalfOpenMaxCalls: 2},
		}})
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(t.Context())
		calls := 0
		streamer := func(context.Context, *grpc.StreamDesc, *grpc.ClientConn, string, ...grpc.CallOption) (grpc.ClientStream, error) {
			calls++
			switch calls {
			case 1: // opens the breaker
				return &scripted{sendFailAt: -1, status: status.Error(codes.Unavailable, "down")}, nil
			case 2: // the first probe
				return &scripted{sendFailAt: 1, status: status.Error(codes.Aborted, "conflict")}, nil
			case 3: // the retry, the second probe
				cancel()
				synctest.Wait() // the stream's context callback has run
				return &scripted{sendFailAt: -1, status: io.EOF}, nil
			}
			return &fakeStream{}, nil
		}
		cs, err := s.Stream()(t.Context(), clientStreamDesc, nil, "/x.Y/Z", streamer, interceptors.DisableRetry())
		require.NoError(t, err)
		require.Equal(t, codes.Unavailable, status.Code(cs.RecvMsg(nil)))
		time.Sleep(time.Second + time.Millisecond) // half-open

		cs, err = s.Stream()(ctx, clientStreamDesc, nil, "/x.Y/Z", streamer)
		require.NoError(t, err)
		require.NoError(t, cs.SendMsg(&echov1.ClientStreamRequest{Message: "a"}))
		require.NoError(t, cs.SendMsg(&echov1.ClientStreamRequest{Message: "b"}), "the retry happened inside SendMsg")
		require.Equal(t, 3, calls)

		_, err = s.Stream()(t.Context(), clientStreamDesc, nil, "/x.Y/Z", streamer)
		require.NoError(t, err, "the second probe's slot came back")
	})
}

func TestStreamAdversarialConcurrencyOverLoopbackTCP(t *testing.T) {
	// Real concurrency (no bubble): per stream, one goroutine sends, one
	// receives and one calls Header, while the server fails the first
	// attempts after k messages; some streams are cancelled at a random
	// moment too (often in the middle of a replay of large messages).
	// Whatever the interleaving: a stream either succeeds with exactly the
	// client's messages on both sides, or fails with the fault's code or
	// CANCELED and delivered nothing; every attempt opened records exactly
	// one breaker outcome. Counts and order only, never durations.
	var opened atomic.Int64
	count := func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		opened.Add(1)
		return streamer(ctx, desc, cc, method, opts...)
	}
	dial := func(srv *echoserver.Server, opts ...grpc.DialOption) (*grpc.ClientConn, func(), error) {
		return echoserver.Loopback(srv, append(opts, grpc.WithChainStreamInterceptor(count))...)
	}
	e := newStreamEnvOn(t, dial, interceptors.Policy{
		Retry:   retry.Policy{MaxAttempts: 5, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond},
		Breaker: breaker.Config{Mode: breaker.MetricsOnly},
	}, interceptors.WithoutBudget())
	outcomes := func() uint64 {
		var n uint64
		for _, m := range []string{methodClientStream, methodBidi} {
			c := e.breakerCounts(m)
			n += c.Successes + c.Failures + c.Ignored
		}
		return n
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 60 {
		key := fmt.Sprintf("adv-%d", i)
		bidi := i%2 == 0
		n := 1 + rng.IntN(30)
		pad := 16
		if !bidi {
			pad = 8 << 10 // a client stream's replay can be long: up to 240 KiB
		}
		msgs := make([]string, n)
		for j := range msgs {
			msgs[j] = fmt.Sprintf("%02d-%s", j, strings.Repeat("p", pad))
		}
		f := streamFault(key, codes.Unavailable, 1+rng.IntN(3), rng.IntN(n+1))
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		cancelled := i%3 == 0
		var wg sync.WaitGroup
		if cancelled {
			d := time.Duration(rng.IntN(3000)) * time.Microsecond
			wg.Go(func() { time.Sleep(d); cancel() })
		}
		var (
			got     []string
			idx     []int32
			err     error // the stream's, or its creation's
			sendErr error
		)
		if bidi {
			var bs grpc.BidiStreamingClient[echov1.BidiStreamRequest, echov1.BidiStreamResponse]
			if bs, err = e.client.BidiStream(ctx); err == nil {
				wg.Go(func() { _, _ = bs.Header() })
				got, idx, sendErr, err = bidiRun(bs, msgs, f)
				if sendErr != nil {
					require.ErrorIs(t, sendErr, io.EOF)
				}
			}
		} else {
			var cs grpc.ClientStreamingClient[echov1.ClientStreamRequest, echov1.ClientStreamResponse]
			if cs, err = e.client.ClientStream(ctx); err == nil {
				wg.Go(func() { _, _ = cs.Header() })
				var resp *echov1.ClientStreamResponse
				resp, err = sendClient(t, cs, msgs, f)
				got = resp.GetMessages()
				idx = seq(len(got))
			}
		}
		wg.Wait()
		cancel()
		received := e.srv.Received(key)
		if err == nil {
			requireLabels(t, msgs, got, "%s: every message once, in order", key)
			require.Equal(t, seq(n), idx, "%s: from one attempt", key)
			require.Len(t, received, 1, "%s: one server attempt completed", key)
			requireLabels(t, msgs, received[0], "%s: the server's successful attempt", key)
		} else {
			require.Empty(t, got, "%s: a failing attempt delivers nothing", key)
			if cancelled && status.Code(err) == codes.Canceled {
				// The server may have completed as the caller cancelled.
				require.LessOrEqual(t, len(received), 1, key)
				if len(received) == 1 {
					requireLabels(t, msgs, received[0], "%s: the server's completed attempt", key)
				}
			} else {
				require.Equal(t, codes.Unavailable, status.Code(err), "%s: %v", key, err)
				require.Empty(t, received, "%s: no server attempt completed", key)
			}
		}
		require.Equal(t, uint64(opened.Load()), outcomes(), "%s: one breaker outcome per attempt opened", key)
	}
}

// requireLabels requires got to be want, comparing (and printing) only the
// messages' first three characters, their labels ("00-", "01-", ...).
func requireLabels(t *testing.T, want, got []string, msgAndArgs ...any) {
	t.Helper()
	labels := func(ms []string) []string {
		out := make([]string, len(ms))
		for i, m := range ms {
			out[i] = m[:min(3, len(m))]
		}
		return out
	}
	require.Equal(t, labels(want), labels(got), msgAndArgs...)
	require.Equal(t, want, got, msgAndArgs...)
}

func TestScriptedAttemptEndingOKDuringTheReplayEndsTheStream(t *testing.T) {
	// The second attempt ends with OK (Trailers-Only) in the middle of the
	// replay: the server chose to answer early. The stream ends there,
	// with that attempt's trailer.
	synctest.Test(t, func(t *testing.T) {
		s, err := interceptors.New(map[string]interceptors.Policy{"*": {}})
		require.NoError(t, err)
		a1 := &scripted{sendFailAt: -1, status: status.Error(codes.Unavailable, "down"), trailer: metadata.Pairs("attempt", "1")}
		a2 := &scripted{sendFailAt: 1, status: io.EOF, trailer: metadata.Pairs("attempt", "2")}
		cs, err := s.Stream()(t.Context(), clientStreamDesc, nil, "/x.Y/Z", scriptedStreamer(a1, a2))
		require.NoError(t, err)
		sendAll(t, cs, "a", "b")
		assert.Equal(t, io.EOF, cs.RecvMsg(nil))
		assert.Equal(t, []string{"a"}, a2.sent)
		assert.Equal(t, []string{"2"}, cs.Trailer().Get("attempt"), "the last attempt's trailer")
	})
}

func TestScriptedAbandonedProbeRecordsOnce(t *testing.T) {
	// The caller cancels a half-open probe: it is recorded as ignored at
	// once. Its stream still ends well later (the scripted stream ignores
	// the cancellation), and reading that end records nothing more.
	synctest.Test(t, func(t *testing.T) {
		s, err := interceptors.New(map[string]interceptors.Policy{"*": {
			Breaker: breaker.Config{ConsecutiveFailures: 1, RecoveryTime: time.Second, RecoveryJitter: -1},
		}})
		require.NoError(t, err)
		down := &scripted{sendFailAt: -1, status: status.Error(codes.Unavailable, "down")}
		probe := &scripted{sendFailAt: -1, status: io.EOF}
		cs, err := s.Stream()(t.Context(), clientStreamDesc, nil, "/x.Y/Z", scriptedStreamer(down), interceptors.DisableRetry())
		require.NoError(t, err)
		require.Equal(t, codes.Unavailable, status.Code(cs.RecvMsg(nil)))
		time.Sleep(time.Second + time.Millisecond) // half-open

		ctx, cancel := context.WithCancel(t.Context())
		cs, err = s.Stream()(ctx, &grpc.StreamDesc{ServerStreams: true}, nil, "/x.Y/Z", scriptedStreamer(probe))
		require.NoError(t, err)
		cancel()
		synctest.Wait()
		require.Equal(t, io.EOF, cs.RecvMsg(nil))
		methods := s.Snapshot().Methods
		require.Len(t, methods, 1)
		m := methods[0]
		assert.Equal(t, [3]uint64{0, 1, 1}, [3]uint64{m.Successes, m.Failures, m.Ignored}, "successes, failures, ignored")
	})
}
