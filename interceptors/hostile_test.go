package interceptors_test

import (
	"testing"
	"testing/synctest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/khive/grpc-resilience/interceptors"
	echov1 "github.com/khive/grpc-resilience/proto/khive/echo/v1"
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
