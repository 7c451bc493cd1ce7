package interceptors

import (
	"context"
	"maps"
	"strconv"

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

// retryCtx is the context of one retry (see retryContext); it never
// changes.
type retryCtx struct {
	context.Context           // the caller's context
	n               int       // the attempt, 1-based
	md              *mdHolder // the outgoing metadata, or nil
}

// Value answers the attempt number and the attempt header's metadata, and
// defers every other key to the caller's context.
func (c *retryCtx) Value(key any) any {
	if _, ok := key.(attemptKey); ok {
		return c.n
	}
	if c.md != nil {
		if v := c.md.ctx.Value(key); v != nil {
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

// retryContext returns the parent of the context of attempt (1-based, of at
// most maxAttempts) of a call whose caller's context is ctx: ctx itself for
// attempt 1; for a retry, a context derived from ctx that carries Attempt
// and sets the attempt header (WithAttemptHeader) to attempt-1 in the
// outgoing metadata, one value replacing any. It is taken from *spare, which
// the call keeps across its retries: one allocation per four retries, plus a
// copy of the caller's outgoing metadata per retry if it has any.
func (s *Suite) retryContext(ctx context.Context, attempt, maxAttempts int, spare *[]retryCtx) context.Context {
	if attempt <= 1 {
		return ctx
	}
	if len(*spare) == 0 {
		*spare = make([]retryCtx, min(4, max(maxAttempts-attempt+1, 1)))
	}
	rc := &(*spare)[0]
	*spare = (*spare)[1:]
	*rc = retryCtx{Context: ctx, n: attempt}
	if s.o.header == "" {
		return rc
	}
	n := attempt - 1
	md, ok := metadata.FromOutgoingContext(ctx)
	if !ok && n <= prebuiltHeaders {
		rc.md = s.headers[n]
		return rc
	}
	md = maps.Clone(md)
	if md == nil {
		md = metadata.MD{}
	}
	md[s.o.header] = []string{strconv.Itoa(n)}
	rc.md = newMDHolder(md)
	return rc
}
