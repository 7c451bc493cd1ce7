package interceptors_test

import (
	"context"
	"encoding/json"
	"errors"
	"runtime"
	"strconv"
	"strings"
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

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
	"github.com/khive/grpc-resilience/retry"
)

// Tests of the suite's breaker registry (keys, cap, eviction) and of the
// bounds on per-connection state (issue 7: breaker key; issue 11: items 5
// and 6).

// TestBreakerPerTarget: two connections to two servers call the same
// method; one server is down. By default each target has its own breaker,
// so the healthy server's calls all succeed; with one breaker per method
// (the old default, through WithBreakerKey) the down server's breaker
// rejects them too.
func TestBreakerPerTarget(t *testing.T) {
	for _, tc := range []struct {
		name      string
		opts      []interceptors.Option
		healthyOK int // of 20 calls to the healthy server, after the other opened
	}{
		{"default key", nil, 20},
		{"one breaker per method", []interceptors.Option{interceptors.WithBreakerKey(func(_, m string) string { return m })}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				pol := interceptors.Policy{Retry: retry.Policy{MaxAttempts: 1},
					Breaker: breaker.Config{ConsecutiveFailures: 3, RecoveryTime: time.Minute}}
				suite, err := interceptors.New(map[string]interceptors.Policy{"*": pol}, tc.opts...)
				require.NoError(t, err)
				down, up := echoserver.New(1), echoserver.New(2)
				down.SetDown(true)
				toDown := echov1.NewEchoServiceClient(rlConn(t, suite, down, "passthrough:///down"))
				toUp := echov1.NewEchoServiceClient(rlConn(t, suite, up, "passthrough:///up"))
				ctx := t.Context()
				req := &echov1.UnaryRequest{Message: "m"}
				for range 3 {
					_, err := toDown.Unary(ctx, req)
					require.Error(t, err)
				}
				_, err = toDown.Unary(ctx, req)
				rlCircuitOpen(t, err)
				ok := 0
				for range 20 {
					if _, err := toUp.Unary(ctx, req); err == nil {
						ok++
					} else {
						rlCircuitOpen(t, err)
					}
				}
				assert.Equal(t, tc.healthyOK, ok)
				assert.Equal(t, tc.healthyOK, up.Calls(echoserver.Unary))
				assert.Equal(t, 3, down.Calls(echoserver.Unary))

				var got []string
				for _, m := range suite.Snapshot().Methods {
					got = append(got, m.Method+"@"+m.Target+"="+m.State)
				}
				if tc.opts == nil {
					assert.Equal(t, []string{rlUnary + "@passthrough:///down=open", rlUnary + "@passthrough:///up=closed"}, got)
				} else {
					assert.Equal(t, []string{rlUnary + "@=open"}, got)
				}
			})
		})
	}
}

// TestMaxBreakers: beyond the cap, new methods share their policy's
// overflow breaker (counted); once the cap's breakers have been checked
// twice, the closed idle ones make room, but an open breaker never does,
// however long it stays unused.
func TestMaxBreakers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pol := interceptors.Policy{Retry: retry.Policy{MaxAttempts: 1},
			Breaker: breaker.Config{ConsecutiveFailures: 1, RecoveryTime: time.Hour, MaxRecoveryTime: time.Hour, RecoveryJitter: -1}}
		e := newRLEnv(t, map[string]interceptors.Policy{"*": pol}, interceptors.WithMaxBreakers(3))
		ctx := t.Context()
		cc := rlConn(t, e.suite, e.srv, "passthrough:///bufnet")
		call := func(m string) error { // the server does not know m: UNIMPLEMENTED, a success
			return cc.Invoke(ctx, m, &echov1.UnaryRequest{}, &echov1.UnaryResponse{})
		}
		methods := func() []string {
			var out []string
			for _, m := range e.suite.Snapshot().Methods {
				out = append(out, m.Method+"="+m.State)
			}
			return out
		}
		require.Error(t, e.unary(ctx, rlDown()))
		rlCircuitOpen(t, e.unary(ctx, nil))
		assert.Equal(t, codes.Unimplemented, status.Code(call("/x.S/A")))
		assert.Equal(t, codes.Unimplemented, status.Code(call("/x.S/B")))
		assert.Equal(t, codes.Unimplemented, status.Code(call("/x.S/C"))) // full: overflow
		assert.Equal(t, codes.Unimplemented, status.Code(call("/x.S/C"))) // cached
		snap := e.suite.Snapshot()
		assert.Equal(t, interceptors.SnapshotBreakers{Count: 3, Max: 3, Overflowed: 1}, snap.Breakers)
		assert.Equal(t, []string{"* (overflow)=closed", rlUnary + "=open", "/x.S/A=closed", "/x.S/B=closed"}, methods())
		assert.True(t, snap.Methods[0].Overflow)

		// The first check (at C) noted every breaker's counts; the next one,
		// a second later at the earliest, drops those that did not change.
		time.Sleep(2 * time.Second)
		assert.Equal(t, codes.Unimplemented, status.Code(call("/x.S/A"))) // A is busy
		assert.Equal(t, codes.Unimplemented, status.Code(call("/x.S/D"))) // B was idle: D takes its place
		assert.Equal(t, interceptors.SnapshotBreakers{Count: 3, Max: 3, Overflowed: 1, Evicted: 1}, e.suite.Snapshot().Breakers)
		assert.Equal(t, []string{"* (overflow)=closed", rlUnary + "=open", "/x.S/A=closed", "/x.S/D=closed"}, methods())
		time.Sleep(2 * time.Second)
		assert.Equal(t, codes.Unimplemented, status.Code(call("/x.S/D"))) // D is busy
		assert.Equal(t, codes.Unimplemented, status.Code(call("/x.S/E"))) // A was idle since: E takes its place
		assert.Equal(t, interceptors.SnapshotBreakers{Count: 3, Max: 3, Overflowed: 1, Evicted: 2}, e.suite.Snapshot().Breakers)
		assert.Equal(t, []string{"* (overflow)=closed", rlUnary + "=open", "/x.S/D=closed", "/x.S/E=closed"}, methods())
		// B, called again, gets a new breaker if there is room, else the
		// overflow one: never its old, retired breaker.
		assert.Equal(t, codes.Unimplemented, status.Code(call("/x.S/B")))
		assert.Equal(t, uint64(2), e.suite.Snapshot().Breakers.Overflowed)

		// 45 minutes of sweeps: the idle closed breakers go, the open one
		// stays (and keeps rejecting without a call reaching the server).
		for i := range 30 {
			time.Sleep(90 * time.Second)
			_ = call("/y.S/M" + strconv.Itoa(i))
		}
		assert.Contains(t, methods(), rlUnary+"=open")
		calls := e.srv.Calls(echoserver.Unary)
		rlCircuitOpen(t, e.unary(ctx, nil))
		assert.Equal(t, calls, e.srv.Calls(echoserver.Unary))
		assert.Equal(t, []string{rlUnary + ": closed -> open"}, e.eventLog(), "an evicted breaker reports nothing")
	})
}

// heapInUse returns the live heap after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestManyMethodNamesBoundedMemory (issue 11, item 5): a remote party
// choosing 100,000 method names under a "*" policy gets at most the cap's
// breakers; the memory held stays bounded, also after an Update, and so
// does the Snapshot.
func TestManyMethodNamesBoundedMemory(t *testing.T) {
	const names = 100000
	s, err := interceptors.New(map[string]interceptors.Policy{"*": {}})
	require.NoError(t, err)
	in := s.Unary()
	ctx := context.Background()
	ok := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	before := heapInUse()
	for i := range names {
		require.NoError(t, in(ctx, "/proxy.v1.Any/M"+strconv.Itoa(i), nil, nil, nil, ok))
	}
	grown := int64(heapInUse()) - int64(before)
	snap := s.Snapshot()
	// Each name got a breaker (still there, or evicted once idle) or the
	// overflow breaker.
	assert.LessOrEqual(t, snap.Breakers.Count, interceptors.DefaultMaxBreakers)
	assert.Equal(t, uint64(names), uint64(snap.Breakers.Count)+snap.Breakers.Overflowed+snap.Breakers.Evicted)
	js, err := json.Marshal(snap)
	require.NoError(t, err)
	t.Logf("heap +%d KiB for %d names (%d breakers); snapshot %d KiB of JSON", grown>>10, names, snap.Breakers.Count, len(js)>>10)
	assert.Less(t, grown, int64(32<<20), "was +266 MiB before the cap")
	assert.Less(t, len(js), 8<<20, "was 60 MiB before the cap")

	require.NoError(t, s.Update(map[string]interceptors.Policy{"*": {Retry: retry.Policy{MaxAttempts: 2}}}))
	for i := range names {
		require.NoError(t, in(ctx, "/proxy.v1.Other/M"+strconv.Itoa(i), nil, nil, nil, ok))
	}
	grown = int64(heapInUse()) - int64(before)
	assert.Less(t, grown, int64(32<<20), "after an Update")
	assert.LessOrEqual(t, s.Snapshot().Breakers.Count, interceptors.DefaultMaxBreakers)
}

// TestClosedConnectionsAreDropped (issue 11, item 6): 5,000 connections to
// distinct targets, each used for a pass-through and a covered method and
// then closed, leave no per-target state behind: no budget, no closed
// breaker, no cache.
func TestClosedConnectionsAreDropped(t *testing.T) {
	const targets = 5000
	s, err := interceptors.New(map[string]interceptors.Policy{rlSvc: {}})
	require.NoError(t, err)
	in := s.Unary()
	ctx := context.Background()
	ok := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	before := heapInUse()
	for i := range targets {
		cc, err := grpc.NewClient("passthrough:///t"+strconv.Itoa(i), grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		require.NoError(t, in(ctx, "/pass.v1.Through/M", nil, nil, cc, ok))
		require.NoError(t, in(ctx, rlUnary, nil, nil, cc, ok))
		require.NoError(t, cc.Close())
	}
	snap := s.Snapshot()
	grown := int64(heapInUse()) - int64(before)
	t.Logf("heap %+d KiB after %d closed connections", grown>>10, targets)
	assert.Empty(t, snap.Budget.Targets)
	assert.Empty(t, snap.Methods)
	assert.Less(t, grown, int64(1<<20), "was +34.7 MiB for 20,000 targets")

	// A live connection keeps its target's budget and breakers.
	live, err := grpc.NewClient("passthrough:///live", grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer live.Close()
	require.NoError(t, in(ctx, rlUnary, nil, nil, live, ok))
	for i := range 100 {
		cc, err := grpc.NewClient("passthrough:///u"+strconv.Itoa(i), grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		require.NoError(t, in(ctx, rlUnary, nil, nil, cc, ok))
		require.NoError(t, cc.Close())
	}
	snap = s.Snapshot()
	require.Len(t, snap.Budget.Targets, 1)
	assert.Equal(t, "passthrough:///live", snap.Budget.Targets[0].Target)
	require.Len(t, snap.Methods, 1)
	assert.Equal(t, "passthrough:///live", snap.Methods[0].Target)
	assert.Equal(t, uint64(1), snap.Methods[0].Successes)
}

// TestWarmingManyMethodsIsLinear (issue 11, item 6): the first call of each
// of 4096 methods on a connection costs a few allocations, not a copy of
// every method resolved before (which allocated 369 MiB).
func TestWarmingManyMethodsIsLinear(t *testing.T) {
	s, err := interceptors.New(map[string]interceptors.Policy{"*": {}})
	require.NoError(t, err)
	in := s.Unary()
	ctx := context.Background()
	ok := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	names := make([]string, 4096)
	for i := range names {
		names[i] = "/warm.v1.Svc/M" + strconv.Itoa(i)
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	for _, n := range names {
		require.NoError(t, in(ctx, n, nil, nil, nil, ok))
	}
	runtime.ReadMemStats(&m1)
	perMethod := (m1.TotalAlloc - m0.TotalAlloc) / uint64(len(names))
	t.Logf("%d bytes allocated per new method", perMethod)
	assert.Less(t, perMethod, uint64(4096), "a breaker, an entry and a cache slot")
}

// TestErrorsQuoteAndTruncateInput (issue 11, item 11): a huge key, or one
// with newlines, does not reach the error message as is.
func TestErrorsQuoteAndTruncateInput(t *testing.T) {
	huge := "/a.S/" + strings.Repeat("x\n", 1<<20)
	for _, key := range []string{huge, "bad\nkey\r\x1b[31m", strings.Repeat("é", 100)} {
		_, err := interceptors.New(map[string]interceptors.Policy{key: {}})
		require.Error(t, err)
		msg := err.Error()
		assert.Less(t, len(msg), 200, msg)
		assert.NotContains(t, msg, "\n")
		assert.NotContains(t, msg, "\r")
		assert.NotContains(t, msg, "\x1b")
		assert.True(t, strings.HasPrefix(msg, `interceptors: policy "`), msg)
	}
	_, err := interceptors.New(map[string]interceptors.Policy{huge[:200]: {}})
	assert.EqualError(t, err, `interceptors: policy "/a.S/x\nx\nx\nx\nx\nx\nx\nx\nx\nx\nx\nx\nx\nx\nx\nx\nx\nx\nx\nx\nx\nx\nx\nx\nx\nx\nx\nx\nx\nx"... (200 bytes): key has a space or control character at byte 6`)
	long := "/a.S/" + strings.Repeat("M", 1000)
	_, err = interceptors.New(map[string]interceptors.Policy{long: {Retry: retry.Policy{MaxAttempts: -1}}})
	assert.EqualError(t, err, `interceptors: policy "/a.S/`+strings.Repeat("M", 59)+`"... (1005 bytes): Retry.MaxAttempts: must be at least 1, got -1`)
	_, err = interceptors.New(nil, interceptors.WithAttemptHeader(strings.Repeat("X ", 1000)))
	require.Error(t, err)
	assert.Less(t, len(err.Error()), 200)
	_, err = interceptors.New(nil, interceptors.WithMaxBreakers(0))
	assert.EqualError(t, err, "interceptors: WithMaxBreakers: must be at least 1, got 0")
	assert.False(t, errors.Is(err, breaker.ErrOpen))
}

// TestRegistryUnderConcurrency: callers racing on new method names against
// a small cap, while Updates, Snapshots and closing connections run; for
// the race detector, and the cap holds.
func TestRegistryUnderConcurrency(t *testing.T) {
	s, err := interceptors.New(map[string]interceptors.Policy{"*": {}}, interceptors.WithMaxBreakers(50))
	require.NoError(t, err)
	in := s.Unary()
	ctx := context.Background()
	ok := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	ccs := make([]*grpc.ClientConn, 4)
	for i := range ccs {
		ccs[i], err = grpc.NewClient("passthrough:///c"+strconv.Itoa(i), grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
	}
	var callers, updater sync.WaitGroup
	done := make(chan struct{})
	for w := range 8 {
		callers.Go(func() {
			for i := range 500 {
				cc := ccs[(w+i)%len(ccs)]
				if err := in(ctx, "/c.S/M"+strconv.Itoa(i%120), nil, nil, cc, ok); err != nil {
					t.Errorf("call: %v", err)
				}
			}
		})
	}
	updater.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			if err := s.Update(map[string]interceptors.Policy{"*": {Retry: retry.Policy{MaxAttempts: 1 + i%3}}}); err != nil {
				t.Errorf("update: %v", err)
			}
			assert.LessOrEqual(t, s.Snapshot().Breakers.Count, 50)
			if i == 10 {
				_ = ccs[0].Close()
			}
		}
	})
	callers.Wait()
	close(done)
	updater.Wait()
	for _, cc := range ccs {
		_ = cc.Close()
	}
	snap := s.Snapshot()
	assert.LessOrEqual(t, snap.Breakers.Count, 50)
	assert.Empty(t, snap.Budget.Targets)
}
