package resiliencetest_test

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"runtime"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
	"github.com/khive/grpc-resilience/resiliencetest"
	"github.com/khive/grpc-resilience/retry"
)

const (
	unary        = "/khive.echo.v1.EchoService/Unary"
	serverStream = "/khive.echo.v1.EchoService/ServerStream"
	clientStream = "/khive.echo.v1.EchoService/ClientStream"
	bidiStream   = "/khive.echo.v1.EchoService/BidiStream"
)

// serve starts the echo server behind inj's interceptors on a bufconn and
// returns the server (whose counters show what reached the handlers) and a
// client without retries. Inside a synctest bubble, call it from the bubble.
func serve(t *testing.T, inj *resiliencetest.Injector) (*echoserver.Server, echov1.EchoServiceClient) {
	t.Helper()
	srv := echoserver.New(1)
	lis := bufconn.Listen(1 << 20)
	stop := echoserver.Serve(srv, lis, grpc.ChainUnaryInterceptor(inj.Unary()), grpc.ChainStreamInterceptor(inj.Stream()))
	cc, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDisableRetry(),
	)
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = cc.Close()
		stop()
	})
	return srv, echov1.NewEchoServiceClient(cc)
}

func newInjector(t *testing.T, faults ...resiliencetest.Fault) *resiliencetest.Injector {
	t.Helper()
	inj, err := resiliencetest.New(faults, resiliencetest.WithSeed(1))
	require.NoError(t, err)
	return inj
}

func TestNewRejectsBadInput(t *testing.T) {
	unavailable := func(f resiliencetest.Fault) resiliencetest.Fault {
		if f.Method == "" {
			f.Method = "*"
		}
		if f.Code == codes.OK && f.Delay == 0 {
			f.Code = codes.Unavailable
		}
		return f
	}
	for _, tc := range []struct {
		name  string
		fault resiliencetest.Fault
		want  string
	}{
		{"empty method", resiliencetest.Fault{Code: codes.Unavailable}, `Faults[1].Method: "" is not`},
		{"no slash", unavailable(resiliencetest.Fault{Method: "pkg.S/M"}), `Faults[1].Method: "pkg.S/M" is not`},
		{"no method", unavailable(resiliencetest.Fault{Method: "/pkg.S/"}), `Faults[1].Method: "/pkg.S/" is not`},
		{"no service", unavailable(resiliencetest.Fault{Method: "//M"}), `Faults[1].Method`},
		{"too deep", unavailable(resiliencetest.Fault{Method: "/a/b/c"}), `Faults[1].Method`},
		{"service only", unavailable(resiliencetest.Fault{Method: "/pkg.S"}), `Faults[1].Method`},
		{"probability above 1", unavailable(resiliencetest.Fault{Probability: 1.5}), "Faults[1].Probability: 1.5 is not within [0, 1]"},
		{"probability negative", unavailable(resiliencetest.Fault{Probability: -0.1}), "Faults[1].Probability"},
		{"probability NaN", unavailable(resiliencetest.Fault{Probability: math.NaN()}), "Faults[1].Probability: NaN"},
		{"first attempts negative", unavailable(resiliencetest.Fault{FirstAttempts: -1}), "Faults[1].FirstAttempts: -1 is negative"},
		{"code out of range", unavailable(resiliencetest.Fault{Code: 17}), "Faults[1].Code: 17 is not a gRPC status code"},
		{"delay negative", unavailable(resiliencetest.Fault{Delay: -time.Second}), "Faults[1].Delay: -1s is negative"},
		{"pushback fraction", unavailable(resiliencetest.Fault{Pushback: 1500 * time.Microsecond}), "Faults[1].Pushback: 1.5ms is not a whole number of milliseconds"},
		{"after messages negative", unavailable(resiliencetest.Fault{AfterMessages: -2}), "Faults[1].AfterMessages: -2 is negative"},
		{"nil detail", unavailable(resiliencetest.Fault{Details: []proto.Message{&errdetails.RetryInfo{}, nil}}), "Faults[1].Details[1]: is nil"},
		{"does nothing", resiliencetest.Fault{Method: "*"}, "Faults[1].Code: is OK and Delay is 0"},
		{"delay-only with message", resiliencetest.Fault{Method: "*", Delay: time.Second, Message: "x"}, "Faults[1].Message: needs a failure Code"},
		{"delay-only with pushback", resiliencetest.Fault{Method: "*", Delay: time.Second, Pushback: time.Second}, "Faults[1].Pushback: needs a failure Code"},
		{"delay-only after messages", resiliencetest.Fault{Method: "*", Delay: time.Second, AfterMessages: 1}, "Faults[1].AfterMessages: needs a failure Code"},
		{"delay-only trailer", resiliencetest.Fault{Method: "*", Delay: time.Second, Trailer: metadata.Pairs("a", "b")}, "Faults[1].Trailer: needs a failure Code"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok := resiliencetest.Fault{Method: "*", Code: codes.Internal}
			inj, err := resiliencetest.New([]resiliencetest.Fault{ok, tc.fault})
			require.Error(t, err)
			assert.Nil(t, inj)
			assert.Contains(t, err.Error(), "resiliencetest: "+tc.want)
		})
	}
}

func TestNewAcceptsEveryMethodForm(t *testing.T) {
	for _, m := range []string{"*", "/pkg.S/*", "/pkg.S/M"} {
		_, err := resiliencetest.New([]resiliencetest.Fault{{Method: m, Code: codes.Unavailable}})
		assert.NoError(t, err, m)
	}
	inj, err := resiliencetest.New(nil)
	require.NoError(t, err, "no faults: an injector for outages only")
	require.NotNil(t, inj)
}

func TestFirstAttemptsFailThenPass(t *testing.T) {
	inj := newInjector(t, resiliencetest.Fault{Method: unary, Code: codes.Unavailable, FirstAttempts: 2})
	srv, c := serve(t, inj)
	for range 2 {
		_, err := c.Unary(t.Context(), &echov1.UnaryRequest{Message: "m"})
		require.Equal(t, codes.Unavailable, status.Code(err))
		assert.Equal(t, "resiliencetest: injected fault", status.Convert(err).Message())
	}
	resp, err := c.Unary(t.Context(), &echov1.UnaryRequest{Message: "m"})
	require.NoError(t, err)
	assert.Equal(t, "m", resp.GetMessage())
	assert.Equal(t, 3, inj.Calls(unary))
	assert.Equal(t, 2, inj.Injected(unary))
	assert.Equal(t, 1, srv.Calls(echoserver.Unary), "struck calls never reach the handler")
}

func TestMethodMatching(t *testing.T) {
	for _, tc := range []struct {
		method string
		struck []string
	}{
		{unary, []string{unary}},
		{"/khive.echo.v1.EchoService/*", []string{unary, serverStream}},
		{"/other.Service/*", nil},
		{"/khive.echo.v1.EchoService/Unar", nil},
		{"*", []string{unary, serverStream}},
	} {
		t.Run(tc.method, func(t *testing.T) {
			inj := newInjector(t, resiliencetest.Fault{Method: tc.method, Code: codes.NotFound})
			_, c := serve(t, inj)
			_, err := c.Unary(t.Context(), &echov1.UnaryRequest{})
			gotUnary := status.Code(err)
			st, err := c.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 1})
			require.NoError(t, err)
			_, err = st.Recv()
			gotStream := status.Code(err)

			var struck []string
			for _, got := range []struct {
				method string
				code   codes.Code
			}{{unary, gotUnary}, {serverStream, gotStream}} {
				assert.Equal(t, 1, inj.Calls(got.method))
				if got.code == codes.NotFound {
					struck = append(struck, got.method)
					assert.Equal(t, 1, inj.Injected(got.method))
				} else {
					assert.Equal(t, codes.OK, got.code)
					assert.Equal(t, 0, inj.Injected(got.method))
				}
			}
			assert.Equal(t, tc.struck, struck)
		})
	}
}

// outcomes makes n unary calls and reports which failed.
func outcomes(t *testing.T, c echov1.EchoServiceClient, n int) []bool {
	t.Helper()
	out := make([]bool, n)
	for i := range out {
		_, err := c.Unary(t.Context(), &echov1.UnaryRequest{})
		out[i] = err != nil
	}
	return out
}

func TestProbabilityIsSeededAndNearTheRate(t *testing.T) {
	const n, p = 1000, 0.3
	run := func(seed uint64) []bool {
		inj, err := resiliencetest.New([]resiliencetest.Fault{{Method: "*", Code: codes.Unavailable, Probability: p}}, resiliencetest.WithSeed(seed))
		require.NoError(t, err)
		_, c := serve(t, inj)
		out := outcomes(t, c, n)
		failed := 0
		for _, f := range out {
			if f {
				failed++
			}
		}
		assert.Equal(t, failed, inj.Injected(unary))
		// Binomial(1000, 0.3): sd ~14.5; 5 sd either side.
		assert.InDelta(t, n*p, failed, 72)
		return out
	}
	a, b := run(7), run(7)
	assert.Equal(t, a, b, "the same seed, the same faults")
	assert.NotEqual(t, a, run(8), "another seed, other faults")
}

func TestFailureCarriesMessageDetailsTrailersAndHeader(t *testing.T) {
	inj := newInjector(t, resiliencetest.Fault{
		Method:   unary,
		Code:     codes.ResourceExhausted,
		Message:  "slow down",
		Details:  []proto.Message{&errdetails.RetryInfo{RetryDelay: durationpb.New(300 * time.Millisecond)}, &errdetails.ErrorInfo{Reason: "QUOTA", Domain: "example.com"}},
		Pushback: 250 * time.Millisecond,
		Header:   metadata.Pairs("x-served-by", "replica-2"),
		Trailer:  metadata.Pairs("x-extra", "1"),
	})
	_, c := serve(t, inj)
	var hdr, tr metadata.MD
	_, err := c.Unary(t.Context(), &echov1.UnaryRequest{}, grpc.Header(&hdr), grpc.Trailer(&tr))
	st := status.Convert(err)
	assert.Equal(t, codes.ResourceExhausted, st.Code())
	assert.Equal(t, "slow down", st.Message())
	require.Len(t, st.Details(), 2)
	assert.Equal(t, 300*time.Millisecond, st.Details()[0].(*errdetails.RetryInfo).GetRetryDelay().AsDuration())
	assert.Equal(t, "QUOTA", st.Details()[1].(*errdetails.ErrorInfo).GetReason())
	assert.Equal(t, []string{"250"}, tr.Get(resiliencetest.PushbackTrailer))
	assert.Equal(t, []string{"1"}, tr.Get("x-extra"))
	assert.Equal(t, []string{"replica-2"}, hdr.Get("x-served-by"))

	// The same on a stream.
	hdr, tr = nil, nil
	inj = newInjector(t, resiliencetest.Fault{Method: serverStream, Code: codes.Unavailable, Pushback: -time.Second, Header: metadata.Pairs("x-served-by", "replica-3")})
	_, c = serve(t, inj)
	s, err := c.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 3})
	require.NoError(t, err)
	_, err = s.Recv()
	assert.Equal(t, codes.Unavailable, status.Code(err))
	hdr, _ = s.Header()
	assert.Equal(t, []string{"replica-3"}, hdr.Get("x-served-by"))
	assert.Equal(t, []string{"-1"}, s.Trailer().Get(resiliencetest.PushbackTrailer), "a negative pushback says: do not retry")
}

func TestFirstStrikingFaultWins(t *testing.T) {
	inj := newInjector(t,
		resiliencetest.Fault{Method: unary, Code: codes.Unavailable, FirstAttempts: 1},
		resiliencetest.Fault{Method: "*", Code: codes.Internal, FirstAttempts: 2},
	)
	_, c := serve(t, inj)
	var got []codes.Code
	for range 3 {
		_, err := c.Unary(t.Context(), &echov1.UnaryRequest{})
		got = append(got, status.Code(err))
	}
	// Call 1: the first fault. Call 2: the first fault is spent; the second
	// fault counted call 1 too, so call 2 is its last. Call 3: none.
	assert.Equal(t, []codes.Code{codes.Unavailable, codes.Internal, codes.OK}, got)
	assert.Equal(t, 2, inj.Injected(unary))
}

func TestFirstAttemptsCountsPerMethod(t *testing.T) {
	inj := newInjector(t, resiliencetest.Fault{Method: "*", Code: codes.Unavailable, FirstAttempts: 1})
	_, c := serve(t, inj)
	for range 2 {
		_, err := c.Unary(t.Context(), &echov1.UnaryRequest{})
		_ = err
	}
	s, err := c.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 1})
	require.NoError(t, err)
	_, err = s.Recv()
	assert.Equal(t, codes.Unavailable, status.Code(err), "the stream method's first call")
	assert.Equal(t, 1, inj.Injected(unary))
	assert.Equal(t, 1, inj.Injected(serverStream))
}

func TestDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		inj := newInjector(t,
			resiliencetest.Fault{Method: unary, Delay: 300 * time.Millisecond},
			resiliencetest.Fault{Method: serverStream, Code: codes.Unavailable, Delay: 200 * time.Millisecond},
		)
		srv, c := serve(t, inj)

		start := time.Now()
		resp, err := c.Unary(t.Context(), &echov1.UnaryRequest{Message: "late"})
		require.NoError(t, err, "a delay-only fault reaches the handler")
		assert.Equal(t, "late", resp.GetMessage())
		assert.Equal(t, 300*time.Millisecond, time.Since(start))
		assert.Equal(t, 1, srv.Calls(echoserver.Unary))

		start = time.Now()
		s, err := c.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 1})
		require.NoError(t, err)
		_, err = s.Recv()
		assert.Equal(t, codes.Unavailable, status.Code(err))
		assert.Equal(t, 200*time.Millisecond, time.Since(start), "the failure comes after the delay")

		start = time.Now()
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		_, err = c.Unary(ctx, &echov1.UnaryRequest{})
		assert.Equal(t, codes.DeadlineExceeded, status.Code(err))
		assert.Equal(t, 100*time.Millisecond, time.Since(start), "the delay ends with the call's context")
	})
}

func TestServerStreamAfterMessages(t *testing.T) {
	inj := newInjector(t, resiliencetest.Fault{Method: serverStream, Code: codes.Unavailable, AfterMessages: 2})
	srv, c := serve(t, inj)
	for _, count := range []int32{5, 1} {
		s, err := c.ServerStream(t.Context(), &echov1.ServerStreamRequest{Message: "m", Count: count})
		require.NoError(t, err)
		for i := range min(count, 2) {
			msg, err := s.Recv()
			require.NoError(t, err)
			assert.Equal(t, i, msg.GetIndex())
		}
		_, err = s.Recv()
		assert.Equal(t, codes.Unavailable, status.Code(err), "count %d: the stream fails, even when the handler ends first", count)
	}
	assert.Equal(t, 2, srv.Calls(echoserver.ServerStream), "AfterMessages > 0 reaches the handler")
	assert.Equal(t, 2, inj.Injected(serverStream))
}

func TestStreamFailsBeforeHandlerWithoutAfterMessages(t *testing.T) {
	inj := newInjector(t, resiliencetest.Fault{Method: "/khive.echo.v1.EchoService/*", Code: codes.Unavailable})
	srv, c := serve(t, inj)
	cs, err := c.ClientStream(t.Context())
	require.NoError(t, err)
	_ = cs.Send(&echov1.ClientStreamRequest{Message: "a"})
	_, err = cs.CloseAndRecv()
	assert.Equal(t, codes.Unavailable, status.Code(err))
	assert.Equal(t, 0, srv.Calls(echoserver.ClientStream))
}

func TestClientStreamAfterMessages(t *testing.T) {
	inj := newInjector(t, resiliencetest.Fault{Method: clientStream, Code: codes.Aborted, AfterMessages: 2, FirstAttempts: 1})
	srv, c := serve(t, inj)
	send := func() (*echov1.ClientStreamResponse, error) {
		s, err := c.ClientStream(t.Context())
		require.NoError(t, err)
		for i, m := range []string{"a", "b", "c"} {
			req := &echov1.ClientStreamRequest{Message: m}
			if i == 0 {
				req.Fault = &echov1.Fault{Key: "cs"} // no fault: only a key for srv.Received
			}
			if err := s.Send(req); err != nil {
				break
			}
		}
		return s.CloseAndRecv()
	}
	_, err := send()
	assert.Equal(t, codes.Aborted, status.Code(err))
	assert.Empty(t, srv.Received("cs"), "the handler got the failure instead of the third message")
	resp, err := send()
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b", "c"}, resp.GetMessages())
}

func TestBidiStreamAfterMessages(t *testing.T) {
	inj := newInjector(t, resiliencetest.Fault{Method: bidiStream, Code: codes.Unavailable, AfterMessages: 2, Message: "gone"})
	_, c := serve(t, inj)
	s, err := c.BidiStream(t.Context())
	require.NoError(t, err)
	for _, m := range []string{"x", "y"} {
		require.NoError(t, s.Send(&echov1.BidiStreamRequest{Message: m}))
		resp, err := s.Recv()
		require.NoError(t, err)
		assert.Equal(t, m, resp.GetMessage())
	}
	_ = s.Send(&echov1.BidiStreamRequest{Message: "z"})
	_, err = s.Recv()
	st := status.Convert(err)
	assert.Equal(t, codes.Unavailable, st.Code())
	assert.Equal(t, "gone", st.Message())
}

func TestOutage(t *testing.T) {
	inj := newInjector(t)
	srv, c := serve(t, inj)
	inj.SetOutage(true)
	_, err := c.Unary(t.Context(), &echov1.UnaryRequest{})
	assert.Equal(t, codes.Unavailable, status.Code(err))
	assert.Equal(t, "resiliencetest: outage", status.Convert(err).Message())
	s, err := c.BidiStream(t.Context())
	require.NoError(t, err)
	_ = s.Send(&echov1.BidiStreamRequest{})
	_, err = s.Recv()
	assert.Equal(t, codes.Unavailable, status.Code(err))
	assert.Equal(t, 0, srv.Calls(echoserver.Unary)+srv.Calls(echoserver.BidiStream))

	inj.SetOutage(false)
	_, err = c.Unary(t.Context(), &echov1.UnaryRequest{})
	require.NoError(t, err)
	assert.Equal(t, 2, inj.Calls(unary))
	assert.Equal(t, 1, inj.Injected(unary))
}

// TestOutageSwitchUnderLoad flips the outage while calls run (for -race):
// every call either passes or fails with the outage's status.
func TestOutageSwitchUnderLoad(t *testing.T) {
	inj := newInjector(t)
	_, c := serve(t, inj)
	var wg sync.WaitGroup
	errs := make(chan error, 400)
	for range 4 {
		wg.Go(func() {
			for range 100 {
				_, err := c.Unary(t.Context(), &echov1.UnaryRequest{})
				errs <- err
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for i := 0; ; i++ { // the switch flips for as long as the calls go on
		select {
		case <-done:
		default:
			inj.SetOutage(i%2 == 0)
			runtime.Gosched()
			continue
		}
		break
	}
	close(errs)
	failed := 0
	for err := range errs {
		if err != nil {
			failed++
			assert.Equal(t, codes.Unavailable, status.Code(err))
		}
	}
	assert.Equal(t, 400, inj.Calls(unary))
	assert.Equal(t, failed, inj.Injected(unary))
	assert.Positive(t, failed, "some calls met the outage")
	assert.Less(t, failed, 400, "some calls did not")
}

func TestStreamHandlerSeesTheFault(t *testing.T) {
	// The client closes after one message: the handler's second receive
	// gets the fault, not the end of the stream.
	inj := newInjector(t, resiliencetest.Fault{Method: bidiStream, Code: codes.DataLoss, AfterMessages: 1})
	_, c := serve(t, inj)
	s, err := c.BidiStream(t.Context())
	require.NoError(t, err)
	require.NoError(t, s.Send(&echov1.BidiStreamRequest{Message: "a"}))
	_, err = s.Recv()
	require.NoError(t, err)
	require.NoError(t, s.CloseSend())
	_, err = s.Recv()
	assert.Equal(t, codes.DataLoss, status.Code(err))
	assert.False(t, errors.Is(err, io.EOF))
}

// With this project's client interceptors: a server stream struck before
// its first message is retried; one struck after a message is committed
// (gRFC A6) and fails.
func TestProjectClientRetriesStreamsUntilCommitted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		inj := newInjector(t,
			resiliencetest.Fault{Method: serverStream, Code: codes.Unavailable, FirstAttempts: 2},
			resiliencetest.Fault{Method: serverStream, Code: codes.Unavailable, FirstAttempts: 3, AfterMessages: 1},
		)
		suite, err := interceptors.New(map[string]interceptors.Policy{
			"/khive.echo.v1.EchoService/*": {Retry: retry.Policy{MaxAttempts: 5}},
		})
		require.NoError(t, err)
		srv := echoserver.New(1)
		lis := bufconn.Listen(1 << 20)
		stop := echoserver.Serve(srv, lis, grpc.ChainUnaryInterceptor(inj.Unary()), grpc.ChainStreamInterceptor(inj.Stream()))
		dial := append([]grpc.DialOption{
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
		}, suite.DialOptions()...)
		cc, err := grpc.NewClient("passthrough:///bufnet", dial...)
		require.NoError(t, err)
		t.Cleanup(func() { _ = cc.Close(); stop() })
		c := echov1.NewEchoServiceClient(cc)

		// Attempts 1 and 2 fail before any message (the first fault);
		// attempt 3 sends one message, then fails (the second fault).
		s, err := c.ServerStream(t.Context(), &echov1.ServerStreamRequest{Message: "m", Count: 3})
		require.NoError(t, err)
		_, err = s.Recv()
		require.NoError(t, err)
		_, err = s.Recv()
		assert.Equal(t, codes.Unavailable, status.Code(err), "committed after a message: not retried")
		assert.Equal(t, 3, inj.Calls(serverStream))
		assert.Equal(t, 3, inj.Injected(serverStream))

		// The next call: both faults are spent.
		s, err = c.ServerStream(t.Context(), &echov1.ServerStreamRequest{Message: "m", Count: 3})
		require.NoError(t, err)
		n := 0
		for {
			if _, err := s.Recv(); err != nil {
				require.ErrorIs(t, err, io.EOF)
				break
			}
			n++
		}
		assert.Equal(t, 3, n)
	})
}
