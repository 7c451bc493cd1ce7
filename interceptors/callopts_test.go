package interceptors_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
	"github.com/khive/grpc-resilience/retry"
)

// afterOpts are a caller's after-call options (issue 11 item 8): grpc
// documents OnFinish as called once, and its own retry fills Header,
// Trailer and Peer from the final attempt, once.
type afterOpts struct {
	mu       sync.Mutex
	finished []error
	hdr, tlr metadata.MD
	peer     peer.Peer
}

func (a *afterOpts) opts() []grpc.CallOption {
	return []grpc.CallOption{
		grpc.OnFinish(func(err error) {
			a.mu.Lock()
			defer a.mu.Unlock()
			a.finished = append(a.finished, err)
		}),
		grpc.Header(&a.hdr), grpc.Trailer(&a.tlr), grpc.Peer(&a.peer),
	}
}

// once asserts that OnFinish ran exactly once, with an error of code c.
func (a *afterOpts) once(t *testing.T, c codes.Code, msg string) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	require.Len(t, a.finished, 1, "OnFinish runs once: %s", msg)
	assert.Equal(t, c, status.Code(a.finished[0]), msg)
}

func TestUnaryAfterCallOptionsApplyOnceForTheFinalAttempt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, map[string]interceptors.Policy{echoService: {}})

		var ok afterOpts
		_, err := e.unary(t.Context(), &echov1.Fault{Code: uint32(codes.Unavailable), Key: "ok", FailAttempts: 2, Pushback: []string{"1"}}, ok.opts()...)
		require.NoError(t, err)
		assert.Equal(t, 3, e.srv.Attempts("ok"))
		ok.once(t, codes.OK, "a call rescued by retries finishes once, successfully")
		assert.NotNil(t, ok.hdr, "the final attempt's headers")
		assert.Empty(t, ok.tlr.Get("grpc-retry-pushback-ms"), "the final attempt's trailer, not a failed attempt's")
		assert.NotNil(t, ok.peer.Addr, "the final attempt's peer")

		var failed afterOpts
		_, err = e.unary(t.Context(), &echov1.Fault{Code: uint32(codes.Unavailable), Pushback: []string{"1"}}, append(failed.opts(), interceptors.MaxAttempts(3))...)
		require.Equal(t, codes.Unavailable, status.Code(err))
		failed.once(t, codes.Unavailable, "a call that gave up finishes once")
		assert.Equal(t, []string{"1"}, failed.tlr.Get("grpc-retry-pushback-ms"), "the final attempt's trailer")

		var single afterOpts
		_, err = e.unary(t.Context(), fault(codes.Unavailable), append(single.opts(), interceptors.DisableRetry())...)
		require.Error(t, err)
		single.once(t, codes.Unavailable, "a single attempt: grpc applies the options itself")
	})
}

func TestStreamAfterCallOptionsApplyOnceForTheFinalAttempt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{})
		ctx := t.Context()

		var ss afterOpts
		st, err := e.client.ServerStream(ctx, &echov1.ServerStreamRequest{Count: 3, Fault: streamFault("ss", codes.Unavailable, 2, 0)}, ss.opts()...)
		require.NoError(t, err)
		idx, err := recvServer(st)
		require.NoError(t, err)
		assert.Equal(t, seq(3), idx)
		assert.Equal(t, 3, e.srv.Attempts("ss"))
		ss.once(t, codes.OK, "server stream")
		assert.NotNil(t, ss.hdr)
		assert.NotNil(t, ss.peer.Addr)

		var cs afterOpts
		c, err := e.client.ClientStream(ctx, cs.opts()...)
		require.NoError(t, err)
		resp, err := sendClient(t, c, words(3), streamFault("cs", codes.Unavailable, 2, 1))
		require.NoError(t, err)
		assert.Equal(t, words(3), resp.GetMessages())
		cs.once(t, codes.OK, "client stream")

		var bidi afterOpts
		b, err := e.client.BidiStream(ctx, bidi.opts()...)
		require.NoError(t, err)
		got, _, _, recvErr := bidiRun(b, words(3), streamFault("bidi", codes.Unavailable, 2, 1))
		require.NoError(t, recvErr)
		assert.Equal(t, words(3), got)
		bidi.once(t, codes.OK, "bidi stream")

		var failed afterOpts
		st, err = e.client.ServerStream(ctx, &echov1.ServerStreamRequest{Count: 3, Fault: &echov1.Fault{Code: uint32(codes.Unavailable), Pushback: []string{"1"}}},
			append(failed.opts(), interceptors.MaxAttempts(3))...)
		require.NoError(t, err)
		_, err = recvServer(st)
		require.Equal(t, codes.Unavailable, status.Code(err))
		failed.once(t, codes.Unavailable, "a stream that gave up")
		assert.Equal(t, []string{"1"}, failed.tlr.Get("grpc-retry-pushback-ms"))
	})
}

// A committed stream whose caller cancels without reading its end finishes
// once, with the cancellation.
func TestStreamAfterCallOptionsOnCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newStreamEnv(t, interceptors.Policy{})
		ctx, cancel := context.WithCancel(t.Context())
		var a afterOpts
		st, err := e.client.ServerStream(ctx, &echov1.ServerStreamRequest{Count: 2, Fault: &echov1.Fault{DelayMs: 60_000}}, a.opts()...)
		require.NoError(t, err)
		synctest.Wait()
		cancel()
		synctest.Wait()
		a.once(t, codes.Canceled, "canceled before any message")
		_, err = st.Recv()
		require.Equal(t, codes.Canceled, status.Code(err))
		a.once(t, codes.Canceled, "still once after the end is read")
	})
}

// A call the breaker rejects never reaches grpc; its OnFinish still runs,
// once, with the rejection.
func TestRejectedCallsFinishOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pol := interceptors.Policy{
			Retry:   retry.Policy{MaxAttempts: 1},
			Breaker: breaker.Config{ConsecutiveFailures: 1, RecoveryTime: time.Minute},
		}
		e := newStreamEnv(t, pol)
		e.srv.SetDown(true)
		var err error
		for i := 0; i < 20 && !errors.Is(err, breaker.ErrOpen); i++ {
			var st grpc.ServerStreamingClient[echov1.ServerStreamResponse]
			if st, err = e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 1}); err == nil {
				_, err = recvServer(st)
			}
		}
		require.ErrorIs(t, err, breaker.ErrOpen)
		var a afterOpts
		_, err = e.client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Count: 1}, a.opts()...)
		require.ErrorIs(t, err, breaker.ErrOpen)
		a.once(t, codes.Unavailable, "a rejected stream")

		u := newEnv(t, map[string]interceptors.Policy{echoService: pol})
		u.srv.SetDown(true)
		err = nil
		for i := 0; i < 20 && !errors.Is(err, breaker.ErrOpen); i++ {
			_, err = u.unary(t.Context(), nil)
		}
		require.ErrorIs(t, err, breaker.ErrOpen)
		var b afterOpts
		_, err = u.unary(t.Context(), nil, b.opts()...)
		require.ErrorIs(t, err, breaker.ErrOpen)
		b.once(t, codes.Unavailable, "a rejected unary call")
	})
}
