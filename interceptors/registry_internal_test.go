package interceptors

import (
	"context"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
)

// TestLookupBeyondTheCacheAllocatesNothing: once a connection's cache is
// full, a method that has its own breaker, and a pass-through method, are
// resolved on every call without allocating; the cache itself never grows
// past its bound.
func TestLookupBeyondTheCacheAllocatesNothing(t *testing.T) {
	s, err := New(map[string]Policy{"/cov.S/*": {}})
	require.NoError(t, err)
	in := s.Unary()
	ctx := context.Background()
	ok := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	for i := range maxCachedMethods + 10 {
		require.NoError(t, in(ctx, "/cov.S/M"+strconv.Itoa(i), nil, nil, nil, ok))
	}
	c := s.last.Load()
	require.NotNil(t, c)
	assert.Equal(t, int64(maxCachedMethods), c.n.Load())

	covered, pass := "/cov.S/Beyond", "/pass.S/M"
	require.NoError(t, in(ctx, covered, nil, nil, nil, ok))
	require.NoError(t, in(ctx, pass, nil, nil, nil, ok))
	// Other strings each time, so that the fast slots miss.
	covered2, pass2 := string([]byte(covered)), string([]byte(pass))
	assert.Zero(t, testing.AllocsPerRun(100, func() { _ = in(ctx, covered2, nil, nil, nil, ok) }), "covered")
	assert.Zero(t, testing.AllocsPerRun(100, func() { _ = in(ctx, pass2, nil, nil, nil, ok) }), "pass-through")
	tab := s.tab.Load()
	assert.Zero(t, testing.AllocsPerRun(100, func() { _ = s.entryOf(tab, c, covered2) }), "resolved, past the fast slots")
	assert.Equal(t, int64(maxCachedMethods), c.n.Load())
	assert.Same(t, s.lookup(nil, covered).brk, s.lookup(nil, covered2).brk)
	assert.Nil(t, s.lookup(nil, pass2))
}

// BenchmarkLookup measures the policy lookup alone: "fast-slot" is the
// common case (the constant method string of a generated stub), "map" the
// connection's method map behind the fast slots (a method string at another
// address, or a slot collision), "beyond-cache" a covered method resolved
// through the registry once the connection's cache is full, "pass-through"
// a method without policy once the cache is full.
func BenchmarkLookup(b *testing.B) {
	s, err := New(map[string]Policy{"/cov.S/*": {}})
	require.NoError(b, err)
	const m = "/cov.S/Method"
	s.lookup(nil, m)
	tab, c := s.tab.Load(), s.last.Load()
	b.Run("fast-slot", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = s.lookup(nil, m)
		}
	})
	b.Run("map", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = s.entryOf(tab, c, m)
		}
	})
	for i := range maxCachedMethods {
		s.lookup(nil, "/cov.S/M"+strconv.Itoa(i))
	}
	beyond, pass := "/cov.S/Beyond", "/pass.S/Method"
	s.lookup(nil, beyond)
	b.Run("beyond-cache", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = s.entryOf(tab, c, beyond)
		}
	})
	b.Run("pass-through", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = s.lookup(nil, pass)
		}
	})
}
