package interceptors

import (
	"context"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/khive/grpc-resilience/internal/echoserver"
)

// chainCount returns the number of entries of chains.
func chainCount() int {
	n := 0
	chains.Range(func(any, any) bool { n++; return true })
	return n
}

// TestChainsForgetCollectedConnections: the registry of chains holds its
// connections weakly: an entry goes with its connection, once the suite
// has dropped the closed connection (at a Snapshot).
func TestChainsForgetCollectedConnections(t *testing.T) {
	before := chainCount()
	s, err := New(map[string]Policy{"*": {}})
	require.NoError(t, err)
	func() {
		cc, stop, err := echoserver.Bufconn(echoserver.New(1))
		require.NoError(t, err)
		ok := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
		require.NoError(t, s.unary(t.Context(), "/x.S/M", nil, nil, cc, ok))
		require.Equal(t, before+1, chainCount())
		stop()
	}()
	s.Snapshot() // drops the closed connection's state
	for i := 0; i < 100 && chainCount() > before; i++ {
		runtime.GC()
		runtime.Gosched()
	}
	require.Equal(t, before, chainCount())
	runtime.KeepAlive(s)
}
