package interceptors

import (
	"context"
	"maps"
	"strconv"
	"sync/atomic"

	"google.golang.org/grpc/metadata"
)

// attemptKey is the context key of the attempt number.
type attemptKey struct{}

// Attempt returns the 1-based number of the attempt ctx belongs to, for
// interceptors chained after the suite (which run once per attempt): 1 for a
// first attempt and for calls the suite does not handle, 2 for the first
// retry, and so on.
func Attempt(ctx context.Context) int {
	if n, ok := ctx.Value(attemptKey{}).(int); ok {
		return n
	}
	return 1
}

// prebuiltHeaders is how many attempt-header values are prebuilt per suite.
const prebuiltHeaders = 16

// retryCtx is the context of the retries of one call: the caller's context
// with the attempt number (Attempt) and, if the header is on, the outgoing
// metadata with the attempt header set (one value, replacing any). One
// retryCtx serves all the retries of a call: retryContext updates it in
// place (atomically), so a context kept from an earlier attempt reports the
// latest attempt.
type retryCtx struct {
	context.Context                          // the caller's context
	n               atomic.Int64             // the current attempt, 1-based
	md              atomic.Pointer[mdHolder] // the outgoing metadata, or nil
	base            metadata.MD              // the caller's outgoing metadata (a copy), or nil
}

// Value answers the attempt number and the attempt header's metadata, and
// defers every other key to the caller's context.
func (c *retryCtx) Value(key any) any {
	if _, ok := key.(attemptKey); ok {
		return int(c.n.Load())
	}
	if m := c.md.Load(); m != nil {
		if v := m.ctx.Value(key); v != nil {
			return v
		}
	}
	return c.Context.Value(key)
}

// mdHolder holds a context.Background() child that carries only outgoing
// metadata; retryCtx.Value asks it first, so its metadata replaces the
// caller's.
type mdHolder struct{ ctx context.Context }

func newMDHolder(md metadata.MD) *mdHolder {
	return &mdHolder{ctx: metadata.NewOutgoingContext(context.Background(), md)}
}

// headerContexts prebuilds, for each previous-attempt count n in
// [1, prebuiltHeaders], the metadata {header: n}; index 0 is unused.
func headerContexts(header string) []*mdHolder {
	if header == "" {
		return nil
	}
	out := make([]*mdHolder, prebuiltHeaders+1)
	for n := 1; n <= prebuiltHeaders; n++ {
		out[n] = newMDHolder(metadata.MD{header: {strconv.Itoa(n)}})
	}
	return out
}

// retryContext returns the context for attempt (1-based) of a call whose
// caller's context is ctx. prev is what it returned for the previous attempt
// of the same call (nil before the first retry). For attempt 1 it returns
// ctx itself. For a retry it returns a context derived from ctx that carries
// Attempt and sets the attempt header (WithAttemptHeader) to attempt-1 in
// the outgoing metadata, as one value that replaces the caller's if any.
//
// Cost: one allocation per call on its first retry when the caller's
// context has no outgoing metadata (the value is prebuilt and the context
// object reused); a copy of the caller's metadata per retry otherwise.
// Use the result as the parent of the attempt's context
// (retry.Policy.AttemptContext) for both unary calls and streams.
func (s *Suite) retryContext(ctx, prev context.Context, attempt int) context.Context {
	if attempt <= 1 {
		return ctx
	}
	rc, ok := prev.(*retryCtx)
	if !ok {
		rc = &retryCtx{Context: ctx}
		if s.o.header != "" {
			if md, ok := metadata.FromOutgoingContext(ctx); ok {
				rc.base = md
			}
		}
	}
	rc.n.Store(int64(attempt))
	if s.o.header == "" {
		return rc
	}
	n := attempt - 1
	var m *mdHolder
	if rc.base == nil && n <= prebuiltHeaders {
		m = s.headers[n]
	} else {
		md := maps.Clone(rc.base)
		if md == nil {
			md = metadata.MD{}
		}
		md[s.o.header] = []string{strconv.Itoa(n)}
		m = newMDHolder(md)
	}
	rc.md.Store(m)
	return rc
}
