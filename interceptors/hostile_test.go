package interceptors_test

import (
	"context"
	"io"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
	"github.com/khive/grpc-resilience/retry"
)

// Issue 11: hostile servers and careless callers, over real grpc.

// methodCounts returns the snapshot of method's breaker.
func methodCounts(t *testing.T, s *interceptors.Suite, method string) interceptors.SnapshotMethod {
	t.Helper()
	for _, m := range s.Snapshot().Methods {
		if m.Method == method {
			return m
		}
	}
	t.Fatalf("no breaker for %s", method)
	return interceptors.SnapshotMethod{}
}

// A status code outside 0-16 (grpc-status: 99) is a failure (as UNKNOWN),
// never a success: such a server must be able to open the breaker.
func TestStatusCodeOutsideTheRangeIsAFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, map[string]interceptors.Policy{echoService: {}})
		_, err := e.unary(t.Context(), fault(codes.Code(99)))
		require.Error(t, err)
		assert.Equal(t, codes.Code(99), status.Code(err), "the caller gets the server's code")
		m := methodCounts(t, e.suite, unaryMethod)
		assert.Equal(t, uint64(1), m.Failures, "a failure")
		assert.Equal(t, uint64(0), m.Successes, "never a success")
		assert.Equal(t, 1, e.srv.Calls("Unary"), "UNKNOWN is not retryable by default")
	})
}

// A negative RetryInfo delay is no hint: RESOURCE_EXHAUSTED is then not
// retried, and UNAVAILABLE backs off as without a hint.
func TestNegativeRetryInfoIsNoHint(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ev := &events{}
		e := newEnv(t, map[string]interceptors.Policy{echoService: {}}, ev.options())
		f := &echov1.Fault{Code: uint32(codes.ResourceExhausted), HasRetryInfo: true, RetryInfoMs: -1000}
		_, err := e.unary(t.Context(), f)
		require.Equal(t, codes.ResourceExhausted, status.Code(err))
		assert.Equal(t, 1, e.srv.Calls("Unary"), "RESOURCE_EXHAUSTED without a valid hint is not retried")

		f = &echov1.Fault{Code: uint32(codes.Unavailable), HasRetryInfo: true, RetryInfoMs: -1000, Key: "u", FailAttempts: 1}
		_, err = e.unary(t.Context(), f)
		require.NoError(t, err)
		require.Len(t, ev.retryDelays(), 1)
		assert.NotEqual(t, "0s", ev.retryDelays()[0], "backoff, not an immediate retry") // full jitter: 0 has probability 0
	})
}

// hookPolicy retries 3 attempts with a 1ms backoff and the default breaker.
var hookPolicy = interceptors.Policy{Retry: retry.Policy{MaxAttempts: 3, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond}}

// openFailedClientStream opens a client stream whose first attempt fails
// with UNAVAILABLE after its first message, sends that message and waits
// for the failure to reach the client.
func openFailedClientStream(t *testing.T, ctx context.Context, e *streamEnv) grpc.ClientStreamingClient[echov1.ClientStreamRequest, echov1.ClientStreamResponse] {
	t.Helper()
	cs, err := e.client.ClientStream(ctx)
	require.NoError(t, err)
	require.NoError(t, cs.Send(&echov1.ClientStreamRequest{Message: "a", Fault: streamFault("h", codes.Unavailable, 1, 1)}))
	synctest.Wait()
	return cs
}

// An OnRetry hook that panics during a stream's retry must not leave the
// stream locked: the panic reaches the goroutine that ran the hook, and
// every later Send, CloseSend and Recv returns at once (the stream ended
// with the last attempt's error).
func TestStreamHookPanicDoesNotFreezeTheStream(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, hookPolicy, interceptors.WithOnRetry(func(interceptors.RetryEvent) { panic("hook") }))
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		cs := openFailedClientStream(t, ctx, e)

		require.PanicsWithValue(t, "hook", func() { _ = cs.RecvMsg(new(echov1.ClientStreamResponse)) })

		sendDone, recvDone := make(chan error, 1), make(chan error, 1)
		go func() {
			err := cs.Send(&echov1.ClientStreamRequest{Message: "b"})
			_ = cs.CloseSend()
			sendDone <- err
		}()
		go func() { recvDone <- cs.RecvMsg(new(echov1.ClientStreamResponse)) }()
		synctest.Wait()
		select {
		case err := <-sendDone:
			assert.Equal(t, io.EOF, err)
		default:
			t.Fatal("Send or CloseSend blocked after a hook panicked") // the bubble then reports the stuck goroutines
		}
		select {
		case err := <-recvDone:
			assert.Equal(t, codes.Unavailable, status.Code(err), "the last attempt's status")
		default:
			t.Fatal("Recv blocked after a hook panicked")
		}
		assert.Equal(t, 1, e.srv.Attempts("h"), "no retry after the panic")
	})
}

// Every wait of a stream honours the caller's context: while the goroutine
// resolving a retry is stuck (here in an OnRetry hook that blocks), Send,
// Header and Recv on other goroutines return once the context ends.
func TestStreamWaitsHonourTheCallersContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		entered, release := make(chan struct{}), make(chan struct{})
		e := newStreamEnv(t, hookPolicy, interceptors.WithOnRetry(func(interceptors.RetryEvent) {
			close(entered)
			<-release
		}))
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		cs := openFailedClientStream(t, ctx, e)

		resolver := make(chan error, 1)
		go func() { resolver <- cs.RecvMsg(new(echov1.ClientStreamResponse)) }()
		<-entered

		sendDone, headerDone, recvDone := make(chan error, 1), make(chan error, 1), make(chan error, 1)
		go func() { sendDone <- cs.Send(&echov1.ClientStreamRequest{Message: "b"}) }()
		go func() { _, err := cs.Header(); headerDone <- err }()
		go func() { recvDone <- cs.RecvMsg(new(echov1.ClientStreamResponse)) }()
		synctest.Wait()
		assert.Empty(t, sendDone, "Send waits for the retry while the context is live")

		time.Sleep(2 * time.Second) // past the caller's deadline; the hook is still blocked
		synctest.Wait()
		require.Len(t, sendDone, 1, "Send returned at the caller's deadline")
		assert.Equal(t, io.EOF, <-sendDone)
		require.Len(t, headerDone, 1, "Header returned at the caller's deadline")
		assert.NoError(t, <-headerDone)
		require.Len(t, recvDone, 1, "Recv returned at the caller's deadline")
		assert.Equal(t, codes.DeadlineExceeded, status.Code(<-recvDone))

		close(release)
		assert.Equal(t, codes.DeadlineExceeded, status.Code(<-resolver), "the retry stops: the context ended")
	})
}

// A caller that reuses one request value for every Send (req.Message = i;
// Send(req)) gets what it sent replayed after a retry, not the value's
// latest state: the stream keeps what was sent.
func TestStreamReplaysWhatWasSentNotAReusedRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, hookPolicy)
		{ // client stream
			cs, err := e.client.ClientStream(t.Context())
			require.NoError(t, err)
			req := &echov1.ClientStreamRequest{Fault: streamFault("reuse-c", codes.Unavailable, 1, 5)}
			for i := range 5 {
				req.Message = strconv.Itoa(i)
				require.NoError(t, cs.Send(req))
			}
			resp, err := cs.CloseAndRecv()
			require.NoError(t, err)
			assert.Equal(t, []string{"0", "1", "2", "3", "4"}, resp.GetMessages())
			assert.Equal(t, [][]string{{"0", "1", "2", "3", "4"}}, e.srv.Received("reuse-c"), "the successful attempt got the messages as sent")
			assert.Equal(t, 2, e.srv.Attempts("reuse-c"))
		}
		{ // bidi
			bs, err := e.client.BidiStream(t.Context())
			require.NoError(t, err)
			req := &echov1.BidiStreamRequest{Fault: streamFault("reuse-b", codes.Unavailable, 1, 5)}
			for i := range 5 {
				req.Message = strconv.Itoa(i)
				require.NoError(t, bs.Send(req))
			}
			require.NoError(t, bs.CloseSend())
			var got []string
			for {
				m, err := bs.Recv()
				if err == io.EOF {
					break
				}
				require.NoError(t, err)
				got = append(got, m.GetMessage())
			}
			assert.Equal(t, []string{"0", "1", "2", "3", "4"}, got)
			assert.Equal(t, [][]string{{"0", "1", "2", "3", "4"}}, e.srv.Received("reuse-b"))
		}
	})
}

// headerThenWait is an echo server whose ServerStream answers with response
// headers at once and with its one message only after wait (a watch with
// nothing to report yet).
type headerThenWait struct {
	echov1.UnimplementedEchoServiceServer
	wait  time.Duration
	calls atomic.Int32
}

func (s *headerThenWait) ServerStream(_ *echov1.ServerStreamRequest, stream grpc.ServerStreamingServer[echov1.ServerStreamResponse]) error {
	s.calls.Add(1)
	if err := stream.SendHeader(metadata.Pairs("x-watch", "ok")); err != nil {
		return err
	}
	t := time.NewTimer(s.wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-stream.Context().Done():
		return status.FromContextError(stream.Context().Err()).Err()
	}
	return stream.Send(&echov1.ServerStreamResponse{Message: "late"})
}

// A stream attempt that received response headers is answering: its
// AttemptTimeout no longer applies, even before any message arrives, and
// without the caller calling Header.
func TestStreamAttemptTimeoutStopsAtHeaders(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		suite, err := interceptors.New(map[string]interceptors.Policy{echoServiceKey: {
			Retry: retry.Policy{MaxAttempts: 3, AttemptTimeout: 100 * time.Millisecond},
		}})
		require.NoError(t, err)
		srv := &headerThenWait{wait: time.Second}
		lis := bufconn.Listen(1 << 20)
		gs := grpc.NewServer()
		echov1.RegisterEchoServiceServer(gs, srv)
		go func() { _ = gs.Serve(lis) }()
		defer gs.Stop()
		cc, err := grpc.NewClient("passthrough:///bufnet", append(suite.DialOptions(),
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithTransportCredentials(insecure.NewCredentials()))...)
		require.NoError(t, err)
		defer cc.Close()

		st, err := echov1.NewEchoServiceClient(cc).ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 1})
		require.NoError(t, err)
		m, err := st.Recv()
		require.NoError(t, err, "a stream that answered with headers is not cut by the attempt timeout")
		assert.Equal(t, "late", m.GetMessage())
		_, err = st.Recv()
		assert.Equal(t, io.EOF, err)
		assert.Equal(t, int32(1), srv.calls.Load())
	})
}

// An inner interceptor that panics while the stream opens its retry
// attempt (or replays on it) must not leave the stream locked either: the
// panic reaches the goroutine that retried, every later call returns the
// first attempt's error at once, and the retry's permit, which never
// reached the server, is recorded as ignored (the breaker gets every
// outcome: one per admitted attempt).
func TestStreamPanicOpeningTheRetryEndsTheStream(t *testing.T) {
	for _, where := range []string{"open", "replay"} {
		t.Run(where, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s, err := interceptors.New(map[string]interceptors.Policy{"*": {Breaker: breaker.Config{Mode: breaker.MetricsOnly}}})
				require.NoError(t, err)
				calls := 0
				streamer := func(ctx context.Context, _ *grpc.StreamDesc, _ *grpc.ClientConn, _ string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
					calls++
					if calls == 1 {
						return &scripted{sendFailAt: -1, status: status.Error(codes.Unavailable, "down")}, nil
					}
					if where == "open" {
						panic("inner")
					}
					return &panicking{}, nil
				}
				cs, err := s.Stream()(t.Context(), clientStreamDesc, nil, "/x.Y/Z", streamer)
				require.NoError(t, err)
				require.NoError(t, cs.SendMsg(&echov1.ClientStreamRequest{Message: "a"}))
				require.PanicsWithValue(t, "inner", func() { _ = cs.RecvMsg(nil) })

				done := make(chan struct{})
				go func() {
					defer close(done)
					assert.Equal(t, io.EOF, cs.SendMsg(&echov1.ClientStreamRequest{Message: "b"}))
					assert.NoError(t, cs.CloseSend())
					md, _ := cs.Header()
					assert.Nil(t, md)
					assert.Equal(t, codes.Unavailable, status.Code(cs.RecvMsg(nil)), "the first attempt's error")
				}()
				synctest.Wait()
				select {
				case <-done:
				default:
					t.Fatal("the stream is locked after a panic during its retry")
				}
				assert.Equal(t, 2, calls, "no retry after the panic")
				m := s.Snapshot().Methods[0]
				assert.Equal(t, [3]uint64{0, 1, 1}, [3]uint64{m.Successes, m.Failures, m.Ignored}, "successes, failures, ignored")
			})
		})
	}
}

// panicking is an attempt's stream whose SendMsg panics (an inner
// interceptor's bug).
type panicking struct{ grpc.ClientStream }

func (*panicking) SendMsg(any) error { panic("inner") }
