package config_test

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
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

	"github.com/khive/grpc-resilience/config"
	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
)

// These tests load realistic grpc service configs (no field of ours) and
// check that calls through the resulting interceptors make the attempts
// gRFC A6 prescribes: a6Model below is A6's retry decision as grpc-go
// implements it (stream.go shouldRetry and the retryThrottler).
//
// Timing: every test runs in a testing/synctest bubble (server, connection
// and calls inside it), so backoff delays are measured exactly on the
// bubble's clock, as the server sees the attempts arrive.
//
// Out of A6's scope, the documents also get this library's default circuit
// breaker and (without retryThrottling) its default ratio budget; the
// scenarios stay below their thresholds (fewer than 12 failures in a row,
// fewer than 20 outcomes per window, at most 10 retries per window).

// a6Model is gRFC A6's client retry decision (grpc-go stream.go shouldRetry,
// clientconn.go retryThrottler).
type a6Model struct {
	maxAttempts int
	retryable   []codes.Code
	// Throttling; maxTokens 0 means none.
	maxTokens, tokenRatio, tokens float64
}

// call returns the attempts A6 makes for a call whose attempt n (from 1)
// ends with code(n) (codes.OK = success), and the call's final code.
func (m *a6Model) call(code func(n int) codes.Code) (int, codes.Code) {
	for n := 1; ; n++ {
		c := code(n)
		if c == codes.OK {
			if m.maxTokens > 0 {
				m.tokens = min(m.maxTokens, m.tokens+m.tokenRatio) // successfulRPC
			}
			return n, c
		}
		retryable := false
		for _, r := range m.retryable {
			retryable = retryable || r == c
		}
		if !retryable {
			return n, c // not retryable: no throttle()
		}
		if m.maxTokens > 0 {
			m.tokens = max(0, m.tokens-1) // throttle()
			if m.tokens <= m.maxTokens/2 {
				return n, c
			}
		}
		if n >= m.maxAttempts {
			return n, c
		}
	}
}

// failFirst: attempts 1..k fail with c, later ones succeed (k < 0: all fail).
func failFirst(k int, c codes.Code) func(int) codes.Code {
	return func(n int) codes.Code {
		if k < 0 || n <= k {
			return c
		}
		return codes.OK
	}
}

// a6Env is an echo server over bufconn, reached through a suite built from a
// config, with the arrival time of every attempt recorded by the server.
type a6Env struct {
	srv    *echoserver.Server
	client echov1.EchoServiceClient
	suite  *interceptors.Suite

	mu       sync.Mutex
	arrivals map[string][]time.Time // by fault key ("" for requests without one)
}

// newA6Env must run inside the synctest bubble of the test.
func newA6Env(t *testing.T, cfg *config.Config) *a6Env {
	t.Helper()
	suite, err := cfg.NewSuite()
	require.NoError(t, err)
	e := &a6Env{srv: echoserver.New(1), suite: suite, arrivals: map[string][]time.Time{}}
	lis := bufconn.Listen(1 << 20)
	stop := echoserver.Serve(e.srv, lis,
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			e.arrive(req.(*echov1.UnaryRequest).GetFault().GetKey())
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			e.arrive(info.FullMethod)
			return h(srv, ss)
		}))
	cc, err := grpc.NewClient("passthrough:///bufnet", append([]grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}, suite.DialOptions()...)...)
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = cc.Close()
		stop()
	})
	e.client = echov1.NewEchoServiceClient(cc)
	return e
}

func (e *a6Env) arrive(key string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.arrivals[key] = append(e.arrivals[key], time.Now())
}

// gaps returns the delays between the attempts of key.
func (e *a6Env) gaps(key string) []time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	ts := e.arrivals[key]
	var out []time.Duration
	for i := 1; i < len(ts); i++ {
		out = append(out, ts[i].Sub(ts[i-1]))
	}
	return out
}

func (e *a6Env) attempts(key string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.arrivals[key])
}

// unary calls Unary with a fault: attempts 1..k fail with c (k < 0: all).
func (e *a6Env) unary(ctx context.Context, key string, k int, c codes.Code) error {
	f := &echov1.Fault{Code: uint32(c), Key: key}
	if k >= 0 {
		f.FailAttempts = int32(k)
	}
	_, err := e.client.Unary(ctx, &echov1.UnaryRequest{Message: "m", Fault: f})
	return err
}

// serverStream reads a server stream whose attempts 1..k fail with c before
// the first message.
func (e *a6Env) serverStream(ctx context.Context, key string, k int, c codes.Code) error {
	f := &echov1.Fault{Code: uint32(c), Key: key}
	if k >= 0 {
		f.FailAttempts = int32(k)
	}
	st, err := e.client.ServerStream(ctx, &echov1.ServerStreamRequest{Message: "m", Count: 2, Fault: f})
	if err != nil {
		return err
	}
	for {
		if _, err := st.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

func load(t *testing.T, doc string) *config.Config {
	t.Helper()
	c, err := config.LoadJSON([]byte(doc))
	require.NoError(t, err)
	return c
}

// assertA6Gaps checks each delay between attempts against A6's backoff:
// retry n waits min(initial*mult^(n-1), max) * U(0.8, 1.2). (This library
// clamps the jittered delay to max; A6 may exceed it by 20%.)
func assertA6Gaps(t *testing.T, gaps []time.Duration, initial, maxB time.Duration, mult float64) {
	t.Helper()
	d := float64(initial)
	for i, g := range gaps {
		base := min(d, float64(maxB))
		assert.GreaterOrEqual(t, float64(g), 0.8*base, "delay before retry %d", i+1)
		assert.LessOrEqual(t, float64(g), min(1.2*base, float64(maxB)), "delay before retry %d", i+1)
		d *= mult
	}
}

// TestA6MethodNamesAndCodeNames: one method named, codes as names.
func TestA6MethodNamesAndCodeNames(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newA6Env(t, load(t, `{
		  "methodConfig": [{
		    "name": [{"service": "khive.echo.v1.EchoService", "method": "Unary"}],
		    "retryPolicy": {
		      "maxAttempts": 3,
		      "initialBackoff": "0.1s",
		      "maxBackoff": "1s",
		      "backoffMultiplier": 2,
		      "retryableStatusCodes": ["UNAVAILABLE", "ABORTED"]
		    }
		  }]
		}`))
		a6 := &a6Model{maxAttempts: 3, retryable: []codes.Code{codes.Unavailable, codes.Aborted}}
		ctx := t.Context()
		for _, tc := range []struct {
			key  string
			k    int
			code codes.Code
		}{
			{"transient", 2, codes.Unavailable},
			{"down", -1, codes.Unavailable},
			{"aborted", -1, codes.Aborted},
			{"internal", -1, codes.Internal},
			{"not-found", -1, codes.NotFound},
			{"ok", 0, codes.OK},
		} {
			wantAttempts, wantCode := a6.call(failFirst(tc.k, tc.code))
			err := e.unary(ctx, tc.key, tc.k, tc.code)
			assert.Equal(t, wantCode, status.Code(err), tc.key)
			assert.Equal(t, wantAttempts, e.attempts(tc.key), tc.key)
		}
		assert.Equal(t, 3, e.attempts("down"))
		assertA6Gaps(t, e.gaps("down"), 100*time.Millisecond, time.Second, 2)

		// The server stream is not named: no policy, one attempt (as in grpc).
		err := e.serverStream(ctx, "stream", 2, codes.Unavailable)
		assert.Equal(t, codes.Unavailable, status.Code(err))
		assert.Equal(t, 1, e.attempts("/khive.echo.v1.EchoService/ServerStream"))
	})
}

// TestA6ServiceNamesAndCodeNumbers: a whole service named, codes as numbers,
// unary calls and a server stream that fails before its first message.
func TestA6ServiceNamesAndCodeNumbers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newA6Env(t, load(t, `{
		  "methodConfig": [{
		    "name": [{"service": "khive.echo.v1.EchoService"}],
		    "retryPolicy": {
		      "maxAttempts": 5,
		      "initialBackoff": "0.05s",
		      "maxBackoff": "0.2s",
		      "backoffMultiplier": 3,
		      "retryableStatusCodes": [14, 10]
		    }
		  }]
		}`))
		a6 := &a6Model{maxAttempts: 5, retryable: []codes.Code{codes.Unavailable, codes.Aborted}}
		ctx := t.Context()

		want, wantCode := a6.call(failFirst(-1, codes.Unavailable))
		err := e.unary(ctx, "down", -1, codes.Unavailable)
		assert.Equal(t, wantCode, status.Code(err))
		assert.Equal(t, want, e.attempts("down"))
		assert.Equal(t, 5, want)
		assertA6Gaps(t, e.gaps("down"), 50*time.Millisecond, 200*time.Millisecond, 3)

		want, wantCode = a6.call(failFirst(-1, codes.Internal))
		err = e.unary(ctx, "internal", -1, codes.Internal)
		assert.Equal(t, wantCode, status.Code(err))
		assert.Equal(t, want, e.attempts("internal"))

		// A server stream failing before its first message: retried (A6).
		want, wantCode = a6.call(failFirst(2, codes.Aborted))
		require.Equal(t, codes.OK, wantCode)
		require.NoError(t, e.serverStream(ctx, "stream", 2, codes.Aborted))
		assert.Equal(t, want, e.attempts("/khive.echo.v1.EchoService/ServerStream"))
		assertA6Gaps(t, e.gaps("/khive.echo.v1.EchoService/ServerStream"), 50*time.Millisecond, 200*time.Millisecond, 3)
	})
}

// TestA6MostSpecificNameWins: method, service and default entries.
func TestA6MostSpecificNameWins(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newA6Env(t, load(t, `{
		  "methodConfig": [
		    {
		      "name": [{"service": "khive.echo.v1.EchoService", "method": "Unary"}],
		      "retryPolicy": {"maxAttempts": 2, "initialBackoff": "0.01s", "maxBackoff": "0.01s",
		        "backoffMultiplier": 1, "retryableStatusCodes": ["UNAVAILABLE"]}
		    },
		    {
		      "name": [{"service": "khive.echo.v1.EchoService"}],
		      "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.01s", "maxBackoff": "0.01s",
		        "backoffMultiplier": 1, "retryableStatusCodes": ["DATA_LOSS"]}
		    },
		    {
		      "name": [{}],
		      "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.01s",
		        "backoffMultiplier": 1, "retryableStatusCodes": ["UNAVAILABLE"]}
		    }
		  ]
		}`))
		ctx := t.Context()
		method := &a6Model{maxAttempts: 2, retryable: []codes.Code{codes.Unavailable}}
		service := &a6Model{maxAttempts: 4, retryable: []codes.Code{codes.DataLoss}}

		want, _ := method.call(failFirst(-1, codes.Unavailable))
		_ = e.unary(ctx, "unary", -1, codes.Unavailable)
		assert.Equal(t, want, e.attempts("unary"))
		assert.Equal(t, 2, want)

		// The server stream gets the service entry: UNAVAILABLE is not retried...
		want, _ = service.call(failFirst(-1, codes.Unavailable))
		_ = e.serverStream(ctx, "s1", -1, codes.Unavailable)
		assert.Equal(t, want, e.attempts("/khive.echo.v1.EchoService/ServerStream"))
		assert.Equal(t, 1, want)
		// ... DATA_LOSS is, up to 4 attempts.
		want2, _ := service.call(failFirst(-1, codes.DataLoss))
		_ = e.serverStream(ctx, "s2", -1, codes.DataLoss)
		assert.Equal(t, want+want2, e.attempts("/khive.echo.v1.EchoService/ServerStream"))
		assert.Equal(t, 4, want2)
	})
}

// TestA6Throttling: retryThrottling stops retries where A6's token bucket
// does, across calls, and refills with successful calls. The retryPolicy is
// written as grpc-go's own retry tests write it (test/retry_test.go), with
// upper-case field names, which grpc-go's encoding/json accepts.
func TestA6Throttling(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := load(t, `{
		  "methodConfig": [{
		    "name": [{}],
		    "waitForReady": true,
		    "retryPolicy": {"MaxAttempts": 5, "InitialBackoff": ".01s", "MaxBackoff": ".01s",
		      "BackoffMultiplier": 1.0, "RetryableStatusCodes": [ "UNAVAILABLE" ]}
		  }],
		  "retryThrottling": {"maxTokens": 6, "tokenRatio": 0.5}
		}`)
		require.Equal(t, config.TokenBucket, c.Budget.Mode)
		e := newA6Env(t, c)
		a6 := &a6Model{maxAttempts: 5, retryable: []codes.Code{codes.Unavailable}, maxTokens: 6, tokenRatio: 0.5, tokens: 6}
		ctx := t.Context()

		var got, want []int
		call := func(down bool) {
			e.srv.SetDown(down)
			before := e.srv.Calls(echoserver.Unary)
			err := e.unary(ctx, "", 0, codes.OK)
			got = append(got, e.srv.Calls(echoserver.Unary)-before)
			n, code := a6.call(func(int) codes.Code {
				if down {
					return codes.Unavailable
				}
				return codes.OK
			})
			want = append(want, n)
			assert.Equal(t, code, status.Code(err))
		}
		for range 3 {
			call(true) // 3 attempts (tokens 6 -> 3), then 1, 1
		}
		for range 8 {
			call(false) // refill: +0.5 each
		}
		for range 3 {
			call(true)
		}
		assert.Equal(t, want, got)
		assert.Equal(t, []int{3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1}, got)
	})
}

// TestA6Deviations pins where this library knowingly differs from grpc-go
// for the same document (also listed in the package documentation).
func TestA6Deviations(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newA6Env(t, load(t, `{
		  "methodConfig": [{
		    "name": [{"service": "khive.echo.v1.EchoService"}],
		    "retryPolicy": {"maxAttempts": 7, "initialBackoff": "0.01s", "maxBackoff": "0.01s",
		      "backoffMultiplier": 1, "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]}
		  }]
		}`))
		ctx := t.Context()
		// RESOURCE_EXHAUSTED is retried only with a server delay hint, even when listed.
		_ = e.unary(ctx, "exhausted", -1, codes.ResourceExhausted)
		assert.Equal(t, 1, e.attempts("exhausted"))
	})
}
