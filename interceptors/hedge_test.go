package interceptors_test

import (
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

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
)

// hedgeStep is what the hedge server does for one attempt: wait delay (or
// until the attempt is canceled), then fail with code (and a pushback
// trailer if set) or answer (a stream: msgs messages).
type hedgeStep struct {
	delay    time.Duration
	code     codes.Code
	pushback string
	msgs     int
	header   bool // a stream sends its headers before the delay
}

// hedgeServer answers each attempt (numbered from the attempt header) as
// its plan says, and records when each started and which were canceled.
type hedgeServer struct {
	echov1.UnimplementedEchoServiceServer
	plan map[int]hedgeStep
	t0   time.Time

	mu       sync.Mutex
	started  map[int]time.Duration // attempt -> start, from t0
	canceled []int                 // attempts whose context the server saw canceled
	attempt  []int                 // interceptors.Attempt as seen by an inner interceptor
}

func (s *hedgeServer) begin(ctx context.Context) (int, hedgeStep) {
	n := 1
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(attemptsName); len(v) == 1 {
			p, _ := strconv.Atoi(v[0])
			n = p + 1
		}
	}
	s.mu.Lock()
	s.started[n] = time.Since(s.t0)
	s.mu.Unlock()
	return n, s.plan[n]
}

func (s *hedgeServer) wait(ctx context.Context, n int, st hedgeStep) error {
	select {
	case <-time.After(st.delay):
	case <-ctx.Done():
		s.mu.Lock()
		s.canceled = append(s.canceled, n)
		s.mu.Unlock()
		return ctx.Err()
	}
	if st.code != codes.OK {
		if st.pushback != "" {
			_ = grpc.SetTrailer(ctx, metadata.Pairs("grpc-retry-pushback-ms", st.pushback))
		}
		return status.Error(st.code, "attempt "+strconv.Itoa(n))
	}
	return nil
}

func (s *hedgeServer) Unary(ctx context.Context, _ *echov1.UnaryRequest) (*echov1.UnaryResponse, error) {
	n, st := s.begin(ctx)
	if err := s.wait(ctx, n, st); err != nil {
		return nil, err
	}
	return &echov1.UnaryResponse{Message: strconv.Itoa(n), PreviousAttempts: int32(n - 1)}, nil
}

func (s *hedgeServer) ServerStream(_ *echov1.ServerStreamRequest, stream grpc.ServerStreamingServer[echov1.ServerStreamResponse]) error {
	ctx := stream.Context()
	n, st := s.begin(ctx)
	if st.header {
		_ = stream.SendHeader(metadata.Pairs("attempt", strconv.Itoa(n)))
	}
	if err := s.wait(ctx, n, st); err != nil {
		return err
	}
	for i := range st.msgs {
		if err := stream.Send(&echov1.ServerStreamResponse{Message: strconv.Itoa(n), Index: int32(i)}); err != nil {
			return err
		}
	}
	return nil
}

func (s *hedgeServer) startedAt() map[int]time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[int]time.Duration, len(s.started))
	for k, v := range s.started {
		out[k] = v
	}
	return out
}

func (s *hedgeServer) canceledAttempts() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int(nil), s.canceled...)
}

// newHedgeEnv serves plan over bufconn to a client with a suite of pol
// under the echo service's key. Call it inside a synctest bubble.
func newHedgeEnv(t *testing.T, pol interceptors.Policy, plan map[int]hedgeStep, opts ...interceptors.Option) (*hedgeServer, echov1.EchoServiceClient) {
	t.Helper()
	srv := &hedgeServer{plan: plan, t0: time.Now(), started: map[int]time.Duration{}}
	suite, err := interceptors.New(map[string]interceptors.Policy{echoService: pol}, opts...)
	require.NoError(t, err)
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	echov1.RegisterEchoServiceServer(gs, srv)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	inner := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, o ...grpc.CallOption) error {
		srv.mu.Lock()
		srv.attempt = append(srv.attempt, interceptors.Attempt(ctx))
		srv.mu.Unlock()
		return invoker(ctx, method, req, reply, cc, o...)
	}
	dial := append([]grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}, suite.DialOptions()...)
	dial = append(dial, grpc.WithChainUnaryInterceptor(inner))
	cc, err := grpc.NewClient("passthrough:///bufnet", dial...)
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = cc.Close()
		gs.Stop()
		<-done
	})
	return srv, echov1.NewEchoServiceClient(cc)
}

func hedge(n int, delay time.Duration, nonFatal ...codes.Code) interceptors.Policy {
	return interceptors.Policy{Hedge: interceptors.HedgePolicy{MaxAttempts: n, Delay: delay, NonFatalCodes: nonFatal},
		Breaker: breaker.Config{Mode: breaker.Disabled}}
}

const ms = time.Millisecond

// callHedged makes one unary call and returns its reply, error and
// duration, after every handler returned (synctest.Wait).
func callHedged(t *testing.T, c echov1.EchoServiceClient) (*echov1.UnaryResponse, time.Duration, error) {
	start := time.Now()
	resp, err := c.Unary(t.Context(), &echov1.UnaryRequest{Message: "x"})
	took := time.Since(start)
	synctest.Wait()
	return resp, took, err
}

func TestHedgeFirstResponseWinsAndLosersAreCanceled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newHedgeEnv(t, hedge(3, 10*ms), map[int]hedgeStep{1: {delay: 100 * ms}, 2: {delay: 5 * ms}, 3: {delay: 100 * ms}})
		resp, took, err := callHedged(t, c)
		require.NoError(t, err)
		assert.Equal(t, "2", resp.GetMessage(), "the first response wins")
		assert.Equal(t, 15*ms, took)
		assert.Equal(t, map[int]time.Duration{1: 0, 2: 10 * ms}, srv.startedAt(), "a hedge every Delay")
		assert.Equal(t, []int{1}, srv.canceledAttempts(), "the loser's handler sees its context canceled")
		assert.Equal(t, []int{1, 2}, srv.attempt, "Attempt numbers each hedge")
	})
}

func TestHedgeDelayBetweenHedges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newHedgeEnv(t, hedge(3, 10*ms), map[int]hedgeStep{1: {delay: 100 * ms}, 2: {delay: 100 * ms}, 3: {delay: 100 * ms}})
		resp, took, err := callHedged(t, c)
		require.NoError(t, err)
		assert.Equal(t, "1", resp.GetMessage())
		assert.Equal(t, 100*ms, took)
		assert.Equal(t, map[int]time.Duration{1: 0, 2: 10 * ms, 3: 20 * ms}, srv.startedAt())
		assert.ElementsMatch(t, []int{2, 3}, srv.canceledAttempts())
	})
}

func TestHedgeNonFatalSendsNextAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newHedgeEnv(t, hedge(3, 50*ms, codes.Unavailable),
			map[int]hedgeStep{1: {delay: 2 * ms, code: codes.Unavailable}, 2: {delay: 1 * ms}})
		resp, took, err := callHedged(t, c)
		require.NoError(t, err)
		assert.Equal(t, "2", resp.GetMessage())
		assert.Equal(t, 3*ms, took)
		assert.Equal(t, map[int]time.Duration{1: 0, 2: 2 * ms}, srv.startedAt())
	})
}

func TestHedgeNonFatalAllFail(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newHedgeEnv(t, hedge(3, 50*ms, codes.Unavailable), map[int]hedgeStep{
			1: {delay: ms, code: codes.Unavailable}, 2: {delay: ms, code: codes.Unavailable}, 3: {delay: ms, code: codes.Unavailable}})
		_, took, err := callHedged(t, c)
		assert.Equal(t, codes.Unavailable, status.Code(err))
		assert.Equal(t, 3*ms, took)
		assert.Len(t, srv.startedAt(), 3)
	})
}

func TestHedgeFatalStatusWins(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newHedgeEnv(t, hedge(3, 10*ms, codes.Unavailable),
			map[int]hedgeStep{1: {delay: 100 * ms}, 2: {delay: 5 * ms, code: codes.InvalidArgument}, 3: {delay: 100 * ms}})
		_, took, err := callHedged(t, c)
		assert.Equal(t, codes.InvalidArgument, status.Code(err))
		assert.Equal(t, 15*ms, took)
		assert.Equal(t, []int{1}, srv.canceledAttempts())
		assert.Len(t, srv.startedAt(), 2)
	})
}

func TestHedgePushbackDelaysNextHedge(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newHedgeEnv(t, hedge(3, 10*ms, codes.Unavailable),
			map[int]hedgeStep{1: {delay: ms, code: codes.Unavailable, pushback: "30"}, 2: {delay: ms}})
		resp, took, err := callHedged(t, c)
		require.NoError(t, err)
		assert.Equal(t, "2", resp.GetMessage())
		assert.Equal(t, map[int]time.Duration{1: 0, 2: 31 * ms}, srv.startedAt())
		assert.Equal(t, 32*ms, took)
	})
}

func TestHedgeNegativePushbackStopsHedging(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newHedgeEnv(t, hedge(3, 10*ms, codes.Unavailable),
			map[int]hedgeStep{1: {delay: ms, code: codes.Unavailable, pushback: "-1"}, 2: {delay: ms}})
		_, took, err := callHedged(t, c)
		assert.Equal(t, codes.Unavailable, status.Code(err))
		assert.Equal(t, ms, took)
		assert.Equal(t, map[int]time.Duration{1: 0}, srv.startedAt())
	})
}

func TestHedgeBudgetRefusesHedge(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// A6 tokens: 2, halved by one failure: the bucket throttles.
		srv, c := newHedgeEnv(t, hedge(3, 10*ms, codes.Unavailable),
			map[int]hedgeStep{1: {delay: ms, code: codes.Unavailable}, 2: {delay: ms}},
			interceptors.WithTokenBucket(2, 0.1))
		_, _, err := callHedged(t, c)
		assert.Equal(t, codes.Unavailable, status.Code(err))
		assert.Equal(t, map[int]time.Duration{1: 0}, srv.startedAt(), "the refused hedge is not sent")
	})
}

func TestHedgeEachHedgeIsABreakerAttempt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pol := hedge(3, 10*ms, codes.Unavailable)
		pol.Breaker = breaker.Config{ConsecutiveFailures: 3}
		var mu sync.Mutex
		var opened []string
		srv, c := newHedgeEnv(t, pol, map[int]hedgeStep{
			1: {delay: ms, code: codes.Unavailable}, 2: {delay: ms, code: codes.Unavailable}, 3: {delay: ms, code: codes.Unavailable}},
			interceptors.WithOnStateChange(func(method string, _, to breaker.State) {
				mu.Lock()
				opened = append(opened, method+" "+to.String())
				mu.Unlock()
			}))
		_, _, err := callHedged(t, c)
		assert.Equal(t, codes.Unavailable, status.Code(err))
		assert.Len(t, srv.startedAt(), 3)
		mu.Lock()
		defer mu.Unlock()
		assert.Equal(t, []string{unaryMethod + " open"}, opened, "three failed hedges of one call open a breaker of 3 consecutive failures")
	})
}

func TestHedgeServerStreamFirstMessageWins(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newHedgeEnv(t, hedge(3, 10*ms), map[int]hedgeStep{1: {delay: 100 * ms, msgs: 3}, 2: {delay: 5 * ms, msgs: 3}})
		start := time.Now()
		st, err := c.ServerStream(t.Context(), &echov1.ServerStreamRequest{Message: "x"})
		require.NoError(t, err)
		var got []string
		for {
			m, err := st.Recv()
			if err == io.EOF {
				break
			}
			require.NoError(t, err)
			got = append(got, m.GetMessage()+"/"+strconv.Itoa(int(m.GetIndex())))
		}
		assert.Equal(t, 15*ms, time.Since(start))
		synctest.Wait()
		assert.Equal(t, []string{"2/0", "2/1", "2/2"}, got)
		assert.Equal(t, []int{1}, srv.canceledAttempts())
	})
}

func TestHedgeServerStreamFatalWins(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newHedgeEnv(t, hedge(3, 10*ms, codes.Unavailable),
			map[int]hedgeStep{1: {delay: 100 * ms, msgs: 1}, 2: {delay: 5 * ms, code: codes.NotFound}})
		st, err := c.ServerStream(t.Context(), &echov1.ServerStreamRequest{Message: "x"})
		require.NoError(t, err)
		_, err = st.Recv()
		assert.Equal(t, codes.NotFound, status.Code(err))
		synctest.Wait()
		assert.Equal(t, []int{1}, srv.canceledAttempts())
	})
}

func TestHedgeCallerCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newHedgeEnv(t, hedge(3, 10*ms), map[int]hedgeStep{1: {delay: 100 * ms}, 2: {delay: 100 * ms}, 3: {delay: 100 * ms}})
		ctx, cancel := context.WithTimeout(t.Context(), 25*ms)
		defer cancel()
		_, err := c.Unary(ctx, &echov1.UnaryRequest{})
		synctest.Wait()
		assert.Equal(t, codes.DeadlineExceeded, status.Code(err))
		assert.ElementsMatch(t, []int{1, 2, 3}, srv.canceledAttempts())
	})
}

func TestHedgePolicyValidation(t *testing.T) {
	for name, tc := range map[string]struct {
		key  string
		pol  interceptors.HedgePolicy
		retr int
		want string
	}{
		"one attempt":   {echoService, interceptors.HedgePolicy{MaxAttempts: 1}, 0, "Hedge.MaxAttempts: must be at least 2"},
		"negative":      {echoService, interceptors.HedgePolicy{MaxAttempts: 2, Delay: -1}, 0, "Hedge.Delay: must be at least 0"},
		"with retry":    {echoService, interceptors.HedgePolicy{MaxAttempts: 2}, 3, "hedges or retries, not both"},
		"code":          {echoService, interceptors.HedgePolicy{MaxAttempts: 2, NonFatalCodes: []codes.Code{codes.OK}}, 0, "Hedge.NonFatalCodes[0]"},
		"client stream": {"/khive.echo.v1.EchoService/ClientStream", interceptors.HedgePolicy{MaxAttempts: 2}, 0, "client-streaming"},
		"idempotent":    {unaryMethod, interceptors.HedgePolicy{MaxAttempts: 2, RequireIdempotent: true}, 0, "Hedge.RequireIdempotent"},
	} {
		t.Run(name, func(t *testing.T) {
			p := interceptors.Policy{Hedge: tc.pol}
			p.Retry.MaxAttempts = tc.retr
			_, err := interceptors.New(map[string]interceptors.Policy{tc.key: p})
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	_, err := interceptors.New(map[string]interceptors.Policy{unaryMethod: {Hedge: interceptors.HedgePolicy{MaxAttempts: 2}}})
	require.NoError(t, err)
}

func TestHedgeMetrics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		defer func() { _ = mp.Shutdown(context.Background()) }()
		_, c := newHedgeEnv(t, hedge(3, 10*ms), map[int]hedgeStep{1: {delay: 100 * ms}, 2: {delay: 5 * ms}},
			interceptors.WithMeterProvider(mp))
		_, _, err := callHedged(t, c)
		require.NoError(t, err)
		got := collect(t, reader)
		m := got[interceptors.MetricCallHedges]
		assert.Equal(t, "{hedge}", m.Unit)
		assert.Equal(t, "histogram[int64]", kindOf(m), "as grpc.client.call.retries (gRFC A96)")
		assert.Equal(t, "grpc.method,grpc.target", attrKeys(m))
		assert.Equal(t, "Number of hedges during the client call. If there were no hedges, 0 is not reported.", m.Description)
		n, sum, _ := histPoint(t, m, map[string]string{"grpc.method": strings.TrimPrefix(unaryMethod, "/")})
		assert.Equal(t, uint64(1), n)
		assert.Equal(t, 1.0, sum, "one hedge after the first attempt")
		_, retried := got[interceptors.MetricCallRetries]
		assert.False(t, retried, "a hedge is not a retry")
	})
}

// TestHedgeIdempotency: the echo methods declare no idempotency_level, so
// hedging them warns once per method; with RequireIdempotent, under a
// service key, they get a single attempt.
func TestHedgeIdempotency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var warnings []string
		logger := logging.LoggerFunc(func(_ context.Context, level logging.Level, msg string, _ ...any) {
			if level == logging.LevelWarn {
				mu.Lock()
				warnings = append(warnings, msg)
				mu.Unlock()
			}
		})
		plan := map[int]hedgeStep{1: {delay: 100 * ms}, 2: {delay: 5 * ms}}
		srv, c := newHedgeEnv(t, hedge(2, 10*ms), plan, interceptors.WithLogger(logger))
		for range 3 {
			_, _, err := callHedged(t, c)
			require.NoError(t, err)
		}
		assert.Equal(t, []string{"hedging a method not declared idempotent"}, warnings)
		assert.Len(t, srv.startedAt(), 2)

		strict := hedge(2, 10*ms)
		strict.Hedge.RequireIdempotent = true
		srv, c = newHedgeEnv(t, strict, plan)
		resp, took, err := callHedged(t, c)
		require.NoError(t, err)
		assert.Equal(t, "1", resp.GetMessage())
		assert.Equal(t, 100*ms, took, "not hedged: a single attempt")
		assert.Len(t, srv.startedAt(), 1)
	})
}

// TestHedgeNonProtoReply: a reply that is not a proto.Message cannot get a
// message per attempt: the call is a single attempt.
func TestHedgeNonProtoReply(t *testing.T) {
	s, err := interceptors.New(map[string]interceptors.Policy{"*": hedge(3, 0)})
	require.NoError(t, err)
	calls := 0
	invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
		calls++
		return status.Error(codes.Unavailable, "down")
	}
	err = s.Unary()(t.Context(), unaryMethod, nil, new(string), nil, invoker)
	assert.Equal(t, codes.Unavailable, status.Code(err))
	assert.Equal(t, 1, calls)
}

// TestHedgeCallOptions: Header, Trailer and OnFinish options see the
// winner's metadata, once.
func TestHedgeCallOptions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, c := newHedgeEnv(t, hedge(2, 10*ms), map[int]hedgeStep{1: {delay: 100 * ms}, 2: {delay: 5 * ms, pushback: "1"}})
		var hdr, tlr metadata.MD
		finished := 0
		resp, err := c.Unary(t.Context(), &echov1.UnaryRequest{}, grpc.Header(&hdr), grpc.Trailer(&tlr),
			grpc.OnFinish(func(error) { finished++ }))
		synctest.Wait()
		require.NoError(t, err)
		assert.Equal(t, "2", resp.GetMessage())
		assert.NotNil(t, hdr)
		assert.NotNil(t, tlr)
		assert.Equal(t, 1, finished)
	})
}

// TestHedgeServerStreamHeadersCommit: headers commit a stream (gRFC A6):
// no hedge follows them, however late the first message.
func TestHedgeServerStreamHeadersCommit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newHedgeEnv(t, hedge(3, 10*ms), map[int]hedgeStep{1: {delay: 100 * ms, msgs: 1, header: true}, 2: {delay: ms, msgs: 1}})
		st, err := c.ServerStream(t.Context(), &echov1.ServerStreamRequest{Message: "x"})
		require.NoError(t, err)
		m, err := st.Recv()
		require.NoError(t, err)
		assert.Equal(t, "1", m.GetMessage())
		hdr, err := st.Header()
		require.NoError(t, err)
		assert.Equal(t, []string{"1"}, hdr.Get("attempt"))
		_, err = st.Recv()
		assert.Equal(t, io.EOF, err)
		synctest.Wait()
		assert.Equal(t, map[int]time.Duration{1: 0}, srv.startedAt())
	})
}
