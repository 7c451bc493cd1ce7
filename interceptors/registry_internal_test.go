package interceptors

import (
	"context"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/khive/grpc-resilience/breaker"
)

// TestLookupCacheCap: a connection's cache never holds more than
// maxCachedMethods methods: the method that would go past it empties the
// cache and is cached alone. A cached method, covered or passed through,
// resolves without allocating and keeps its prebuilt rejection.
func TestLookupCacheCap(t *testing.T) {
	s, err := New(map[string]Policy{"/cov.S/*": {}})
	require.NoError(t, err)
	in := s.Unary()
	ctx := context.Background()
	ok := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	for i := range maxCachedMethods {
		require.NoError(t, in(ctx, "/cov.S/M"+strconv.Itoa(i), nil, nil, nil, ok))
	}
	c := s.last.Load()
	require.NotNil(t, c)
	assert.Equal(t, int64(maxCachedMethods), c.n.Load())

	covered, pass := "/cov.S/Beyond", "/pass.S/M"
	require.NoError(t, in(ctx, covered, nil, nil, nil, ok))
	assert.Equal(t, int64(1), c.n.Load(), "the full cache was emptied")
	require.NoError(t, in(ctx, pass, nil, nil, nil, ok))
	assert.Equal(t, int64(2), c.n.Load())
	// Other strings each time, so that the fast slots miss.
	covered2, pass2 := string([]byte(covered)), string([]byte(pass))
	assert.Zero(t, testing.AllocsPerRun(100, func() { _ = in(ctx, covered2, nil, nil, nil, ok) }), "covered")
	assert.Zero(t, testing.AllocsPerRun(100, func() { _ = in(ctx, pass2, nil, nil, nil, ok) }), "pass-through")
	assert.Same(t, s.lookup(nil, covered), s.lookup(nil, covered2), "one entry: its rejection is prebuilt once")
	assert.Nil(t, s.lookup(nil, pass2))
	assert.LessOrEqual(t, c.n.Load(), int64(maxCachedMethods))
}

// BenchmarkLookup measures a unary call's routing alone (route): "fast-slot" is the
// common case (the constant method string of a generated stub), "map" the
// connection's method map behind the fast slots (a method string at another
// address, or a slot collision), "beyond-cache" a covered method resolved
// through the registry once the connection's cache is full, "pass-through"
// a method without policy once the cache is full.
func BenchmarkLookup(b *testing.B) {
	s, err := New(map[string]Policy{"/cov.S/*": {}})
	require.NoError(b, err)
	const m = "/cov.S/Method"
	ctx := context.Background()
	s.route(ctx, nil, m, 0)
	tab, c := s.tab.Load(), s.last.Load()
	b.Run("fast-slot", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = s.route(ctx, nil, m, 0)
		}
	})
	b.Run("map", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = s.entryOf(tab, c, m)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				_ = s.route(ctx, nil, m, 0)
			}
		})
	})
	for i := range maxCachedMethods {
		s.lookup(nil, "/cov.S/M"+strconv.Itoa(i))
	}
	beyond, pass := "/cov.S/Beyond", "/pass.S/Method"
	s.route(ctx, nil, beyond, 0)
	s.route(ctx, nil, pass, 0)
	b.Run("beyond-cache", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = s.entryOf(tab, c, beyond)
		}
	})
	b.Run("pass-through", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = s.route(ctx, nil, pass, 0)
		}
	})
}

// TestUpdateReconfiguresChangedBreakersOnly: Update compares normalized
// breaker settings: a policy written differently but normalizing alike
// leaves its breakers alone; a changed setting or forced-open state
// reconfigures them.
func TestUpdateReconfiguresChangedBreakersOnly(t *testing.T) {
	s, err := New(map[string]Policy{"*": {}})
	require.NoError(t, err)
	s.lookup(nil, "/a.S/M")
	pending := func(p Policy) int {
		tab, errs := s.resolve(map[string]Policy{"*": p})
		require.Nil(t, errs)
		s.reg.mu.Lock()
		defer s.reg.mu.Unlock()
		n := len(s.reg.reconfigure(tab))
		s.tab.Store(tab)
		return n
	}
	assert.Zero(t, pending(Policy{}), "the same policy")
	assert.Equal(t, 1, pending(Policy{Breaker: breaker.Config{ThrottleK: -5}}), "throttle off")
	assert.Zero(t, pending(Policy{Breaker: breaker.Config{ThrottleK: -1, ConsecutiveFailures: breaker.DefaultConsecutiveFailures}}),
		"written differently, normalized alike")
	assert.Equal(t, 1, pending(Policy{Breaker: breaker.Config{ThrottleK: -1, ConsecutiveFailures: 3}}))
	assert.Equal(t, 1, pending(Policy{Breaker: breaker.Config{ThrottleK: -1, ConsecutiveFailures: 3, Mode: breaker.ForcedOpen}}), "forced open")
}
