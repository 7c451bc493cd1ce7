package interceptors_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
	"github.com/khive/grpc-resilience/retry"
)

// Issue 7 on the call path: the breaker's decisions must never cost
// availability a plain client would have had. Every test runs with the
// breaker's defaults over real grpc (bufconn in a synctest bubble).

// breakerEnv is a stream env that records the breaker's transitions.
type breakerEnv struct {
	*streamEnv
	mu          sync.Mutex
	transitions []string
}

func newBreakerEnv(t *testing.T, pol interceptors.Policy) *breakerEnv {
	t.Helper()
	be := &breakerEnv{}
	be.streamEnv = newStreamEnv(t, pol, interceptors.WithOnStateChange(func(m string, from, to breaker.State) {
		be.mu.Lock()
		defer be.mu.Unlock()
		be.transitions = append(be.transitions, m+": "+from.String()+" -> "+to.String())
	}))
	return be
}

func (be *breakerEnv) log() []string {
	be.mu.Lock()
	defer be.mu.Unlock()
	return append([]string(nil), be.transitions...)
}

// callKind makes one call of a kind whose first attempt fails with
// UNAVAILABLE (fault key) and whose retry succeeds.
type callKind struct {
	name   string
	method string
	call   func(ctx context.Context, c echov1.EchoServiceClient, key string) error
}

var rescuedKinds = []callKind{
	{"unary", unaryMethod, func(ctx context.Context, c echov1.EchoServiceClient, key string) error {
		_, err := c.Unary(ctx, &echov1.UnaryRequest{Message: "m", Fault: failFirst(key, 1, codes.Unavailable)})
		return err
	}},
	{"server stream", methodServerStream, func(ctx context.Context, c echov1.EchoServiceClient, key string) error {
		st, err := c.ServerStream(ctx, &echov1.ServerStreamRequest{Count: 2, Fault: streamFault(key, codes.Unavailable, 1, 0)})
		if err != nil {
			return err
		}
		idx, err := recvServer(st)
		if err == nil && len(idx) != 2 {
			err = fmt.Errorf("got %v", idx)
		}
		return err
	}},
	{"client stream", methodClientStream, func(ctx context.Context, c echov1.EchoServiceClient, key string) error {
		cs, err := c.ClientStream(ctx)
		if err != nil {
			return err
		}
		resp, err := sendClient(noFail{}, cs, words(3), streamFault(key, codes.Unavailable, 1, 1))
		if err == nil && len(resp.GetMessages()) != 3 {
			err = fmt.Errorf("got %v", resp.GetMessages())
		}
		return err
	}},
	{"bidi stream", methodBidi, func(ctx context.Context, c echov1.EchoServiceClient, key string) error {
		bs, err := c.BidiStream(ctx)
		if err != nil {
			return err
		}
		got, _, sendErr, recvErr := bidiRun(bs, words(3), streamFault(key, codes.Unavailable, 1, 1))
		if err = errors.Join(sendErr, recvErr); err == nil && len(got) != 3 {
			err = fmt.Errorf("got %v", got)
		}
		return err
	}},
}

// noFail is a require.TestingT for helpers run on other goroutines: the
// caller checks the returned error instead.
type noFail struct{}

func (noFail) Errorf(string, ...any) {}
func (noFail) FailNow()              {}

// TestRetriesThatSucceedNeverTripTheBreaker: every call's first attempt
// fails with UNAVAILABLE and its retry succeeds (a rolling restart). With
// the defaults the breaker never opens nor throttles, for unary calls and
// every stream kind, and the calls succeed exactly as with no breaker at
// all: every one of them with 8 concurrent callers; with 32, whose
// concurrent retries outrun the default retry budget's reserve at first,
// as many as without a breaker (a call whose retry the budget refused is
// no outcome for the breaker, as a retry the breaker rejected).
func TestRetriesThatSucceedNeverTripTheBreaker(t *testing.T) {
	for _, k := range rescuedKinds {
		for _, concurrency := range []int{8, 32} {
			t.Run(fmt.Sprintf("%s/%d callers", k.name, concurrency), func(t *testing.T) {
				const calls = 640
				with := rescued(t, k, breaker.Config{}, calls, concurrency)
				without := rescued(t, k, breaker.Config{Mode: breaker.Disabled}, calls, concurrency)
				if concurrency == 8 {
					assert.Equal(t, calls, with, "every call succeeds with the breaker")
					assert.Equal(t, calls, without, "every call succeeds without a breaker")
				} else {
					assert.InDelta(t, without, with, calls/200, "as many successes as without a breaker (0.5 point)")
				}
			})
		}
	}
}

// rescued runs calls calls of kind k from concurrency callers under a
// policy with breaker cfg, checks that the breaker never changed state nor
// rejected anything, and returns how many calls succeeded.
func rescued(t *testing.T, k callKind, cfg breaker.Config, calls, concurrency int) (ok int) {
	synctest.Test(t, func(t *testing.T) {
		e := newBreakerEnv(t, interceptors.Policy{Breaker: cfg})
		var n atomic.Int64
		var wg sync.WaitGroup
		for g := range concurrency {
			wg.Go(func() {
				for i := g; i < calls; i += concurrency {
					err := k.call(t.Context(), e.client, fmt.Sprintf("%s-%d", k.name, i))
					if err == nil {
						n.Add(1)
						continue
					}
					if re := (*retry.Error)(nil); !errors.As(err, &re) || re.Reason != retry.BudgetExhausted {
						t.Errorf("a call failed otherwise than by the retry budget: %v", err)
					}
				}
			})
		}
		wg.Wait()
		ok = int(n.Load())
		assert.Empty(t, e.log(), "the breaker never changes state")
		if cfg.Mode != breaker.Disabled {
			m := e.breakerCounts(k.method)
			assert.Equal(t, "closed", m.State)
			assert.Zero(t, m.Rejections, "nothing rejected or throttled")
		}
	})
	return ok
}

// TestWatchStreamsCutAtARestartDoNotOpenTheBreaker: 12 healthy watch
// streams (server streams that answered) are cut with UNAVAILABLE at once
// when the server restarts. A committed stream's end does not count
// against the breaker: it stays closed and the reconnects are admitted.
func TestWatchStreamsCutAtARestartDoNotOpenTheBreaker(t *testing.T) {
	for _, mode := range []breaker.State{breaker.Closed, breaker.Disabled} {
		t.Run(mode.String(), func(t *testing.T) { testWatchStreamsCut(t, mode) })
	}
}

func testWatchStreamsCut(t *testing.T, mode breaker.State) {
	synctest.Test(t, func(t *testing.T) {
		e := newBreakerEnv(t, interceptors.Policy{Breaker: breaker.Config{Mode: mode}})
		const watchers = 12
		var wg sync.WaitGroup
		errs := make([]error, watchers)
		for i := range watchers {
			wg.Go(func() {
				// One message, then, a second later, UNAVAILABLE: the restart.
				st, err := e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 5,
					Fault: &echov1.Fault{Code: uint32(codes.Unavailable), AfterMessages: 1, DelayMs: 1000}})
				if err == nil {
					_, err = recvServer(st)
				}
				errs[i] = err
			})
		}
		wg.Wait()
		for _, err := range errs {
			require.Equal(t, codes.Unavailable, status.Code(err), "the watch was cut")
		}
		assert.Equal(t, watchers, e.srv.Calls(echoserver.ServerStream), "committed: not retried")
		assert.Empty(t, e.log(), "the breaker stays closed")
		if mode == breaker.Closed {
			m := e.breakerCounts(methodServerStream)
			assert.Equal(t, uint64(watchers), m.Successes, "each watch counted once, as a success, when it committed")
			assert.Zero(t, m.Failures)
		}

		for range watchers { // the reconnects
			st, err := e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 1})
			require.NoError(t, err)
			_, err = recvServer(st)
			require.NoError(t, err)
		}
	})
}

// TestHalfOpenHerd: 200 callers arrive together when the open period ends
// (each call's attempt takes 100ms). When the server has recovered they
// wait for the probe's verdict and then nearly all succeed; when it is
// still down at most HalfOpenMaxCalls attempts reach it. Every caller
// returns within its deadline.
func TestHalfOpenHerd(t *testing.T) {
	for _, c := range []struct {
		recovered bool
		mode      breaker.State
	}{{true, breaker.Closed}, {false, breaker.Closed}, {true, breaker.Disabled}, {false, breaker.Disabled}} {
		recovered, withBreaker := c.recovered, c.mode == breaker.Closed
		t.Run(fmt.Sprintf("recovered=%v/%v", recovered, c.mode), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, map[string]interceptors.Policy{echoService: {Breaker: breaker.Config{Mode: c.mode}}})
				e.srv.SetDown(true)
				if withBreaker {
					var err error
					for i := 0; i < 100 && !errors.Is(err, breaker.ErrOpen); i++ {
						_, err = e.unary(t.Context(), nil)
					}
					require.ErrorIs(t, err, breaker.ErrOpen)
				}
				e.srv.SetDown(!recovered)
				time.Sleep(1300 * time.Millisecond) // the first open period: 1s +-20%
				synctest.Wait()
				if withBreaker {
					require.Equal(t, []string{unaryMethod + ": closed -> open", unaryMethod + ": open -> half-open"}, e.transitionLog())
				}

				const callers, deadline = 200, 2 * time.Second
				before := e.srv.Calls(echoserver.Unary)
				var ok, late atomic.Int64
				var wg sync.WaitGroup
				for range callers {
					wg.Go(func() {
						ctx, cancel := context.WithTimeout(t.Context(), deadline)
						defer cancel()
						start := time.Now()
						if _, err := e.unary(ctx, &echov1.Fault{DelayMs: 100}); err == nil {
							ok.Add(1)
						}
						if time.Since(start) > deadline {
							late.Add(1)
						}
					})
				}
				wg.Wait()
				assert.Zero(t, late.Load(), "every caller returns within its deadline")
				switch {
				case recovered && withBreaker:
					assert.GreaterOrEqual(t, ok.Load(), int64(190), "the herd waits for the probe, then proceeds")
				case recovered:
					assert.Equal(t, int64(callers), ok.Load(), "no breaker: every call succeeds")
				case withBreaker:
					assert.Zero(t, ok.Load())
					assert.LessOrEqual(t, e.srv.Calls(echoserver.Unary)-before, 1, "a still-down server sees at most HalfOpenMaxCalls attempts")
				default:
					assert.Zero(t, ok.Load())
					assert.Greater(t, e.srv.Calls(echoserver.Unary)-before, callers, "no breaker: every caller's attempts reach the down server")
				}
			})
		})
	}
}

// openStreamBreaker opens the breaker of ServerStream (an outage) and waits
// for the first open period to end: the breaker is half-open.
func openStreamBreaker(t *testing.T, setDown func(bool), client echov1.EchoServiceClient, log func() []string) {
	t.Helper()
	setDown(true)
	var err error
	for i := 0; i < 100 && !errors.Is(err, breaker.ErrOpen); i++ {
		var st grpc.ServerStreamingClient[echov1.ServerStreamResponse]
		if st, err = client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 1}); err == nil {
			_, err = recvServer(st)
		}
	}
	require.ErrorIs(t, err, breaker.ErrOpen)
	setDown(false)
	time.Sleep(1300 * time.Millisecond) // the first open period: 1s +-20%
	synctest.Wait()
	require.Equal(t, []string{methodServerStream + ": closed -> open", methodServerStream + ": open -> half-open"}, log())
}

// TestHalfOpenVerdictFromALongLivedStream: a watch stream admitted as the
// half-open probe gives the breaker its verdict when it commits (its first
// message), not when it ends, and its later end (cut with UNAVAILABLE)
// records nothing.
func TestHalfOpenVerdictFromALongLivedStream(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newBreakerEnv(t, interceptors.Policy{})
		openStreamBreaker(t, e.srv.SetDown, e.client, e.log)

		st, err := e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 5,
			Fault: &echov1.Fault{Code: uint32(codes.Unavailable), AfterMessages: 1, DelayMs: 60_000}})
		require.NoError(t, err)
		_, err = st.Recv()
		require.NoError(t, err)
		synctest.Wait()
		require.Len(t, e.log(), 3, "closed at the probe's first message")
		assert.Equal(t, methodServerStream+": half-open -> closed", e.log()[2])

		time.Sleep(time.Minute) // the watch is cut
		_, err = recvServer(st)
		require.Equal(t, codes.Unavailable, status.Code(err))
		assert.Len(t, e.log(), 3, "the end of a committed stream records nothing")
	})
}

// TestHalfOpenVerdictFromStreamHeaders: a watch stream admitted as the
// half-open probe that answers with headers but has no message yet closes
// the breaker as soon as its headers arrive, without the caller reading.
func TestHalfOpenVerdictFromStreamHeaders(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var transitions []string
		suite, err := interceptors.New(map[string]interceptors.Policy{echoServiceKey: {}},
			interceptors.WithOnStateChange(func(m string, from, to breaker.State) {
				mu.Lock()
				defer mu.Unlock()
				transitions = append(transitions, m+": "+from.String()+" -> "+to.String())
			}))
		require.NoError(t, err)
		log := func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), transitions...) }
		srv := &switchable{up: &headerThenWait{wait: time.Minute}}
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
		client := echov1.NewEchoServiceClient(cc)
		openStreamBreaker(t, srv.down.Store, client, log)

		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		_, err = client.ServerStream(ctx, &echov1.ServerStreamRequest{Count: 1})
		require.NoError(t, err)
		synctest.Wait()
		assert.Equal(t, []string{
			methodServerStream + ": closed -> open", methodServerStream + ": open -> half-open", methodServerStream + ": half-open -> closed",
		}, log(), "closed at the probe's headers")
		cancel()
	})
}

// switchable serves ServerStream from up, or fails it with UNAVAILABLE
// while down.
type switchable struct {
	echov1.UnimplementedEchoServiceServer
	down atomic.Bool
	up   *headerThenWait
}

func (s *switchable) ServerStream(req *echov1.ServerStreamRequest, stream grpc.ServerStreamingServer[echov1.ServerStreamResponse]) error {
	if s.down.Load() {
		return status.Error(codes.Unavailable, "down")
	}
	return s.up.ServerStream(req, stream)
}
