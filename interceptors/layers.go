package interceptors

import (
	"context"
	"runtime"
	"sync"
	"weak"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// gmwAttemptKey is the outgoing metadata key that go-grpc-middleware's retry
// interceptor sets on its retries (its retry.AttemptMetadataKey).
const gmwAttemptKey = "x-retry-attempt"

// chainKey names the unary or the stream interceptor chain of a connection.
type chainKey struct {
	cc     weak.Pointer[grpc.ClientConn]
	stream bool
}

// chains maps each chainKey to the first suite that served a call through
// that chain (a weak.Pointer[Suite]): every call of a chain reaches its
// outermost suite first, so that suite is the outer one. An entry goes when
// its connection is garbage.
var chains sync.Map

// layer is what a suite knows of a chain of one of its connections: the
// outer suite of the chain, or nil if it is the outermost.
type layer struct{ outer *Suite }

// outermost is the layer of a suite that is the first of its chain.
var outermost = &layer{}

// layered reports whether the call of method on c through its chain i (0
// unary, 1 stream) passes through untouched, because a suite earlier in the
// same chain has a policy for method. It warns once per suite about that,
// and checks for go-grpc-middleware's retries (checkGMW).
func (s *Suite) layered(ctx context.Context, c *conn, method string, i int) bool {
	s.checkGMW(ctx, c.cc, method)
	if c.cc == nil {
		return false
	}
	l := c.layers[i].Load()
	if l == nil {
		l = s.resolveLayer(c, i)
	}
	if l.outer == nil || l.outer.lookup(c.cc, method) == nil {
		return false
	}
	if s.o.logger != nil && s.nestedWarned.CompareAndSwap(false, true) {
		s.o.logger.Log(ctx, logging.LevelWarn,
			"suite nested in another suite's interceptor chain: passing the calls the outer suite handles through untouched",
			callFields(ctx, method, c.name)...)
	}
	return true
}

// resolveLayer finds the outer suite of chain i (0 unary, 1 stream) of c,
// registering s as the chain's outer suite if it is the first.
func (s *Suite) resolveLayer(c *conn, i int) *layer {
	k := chainKey{cc: weak.Make(c.cc), stream: i == 1}
	v, loaded := chains.LoadOrStore(k, weak.Make(s))
	if !loaded {
		runtime.AddCleanup(c.cc, func(k chainKey) { chains.Delete(k) }, k)
	}
	l := outermost
	if o := v.(weak.Pointer[Suite]).Value(); o != nil && o != s {
		l = &layer{outer: o}
	}
	c.layers[i].Store(l)
	return l
}

// checkGMW warns once, if s has a logger, when ctx carries
// go-grpc-middleware's retry attempt metadata on a method s handles: each of
// its retries makes all the suite's attempts again.
func (s *Suite) checkGMW(ctx context.Context, cc *grpc.ClientConn, method string) {
	if s.o.logger == nil || s.gmwWarned.Load() {
		return
	}
	v := metadata.ValueFromOutgoingContext(ctx, gmwAttemptKey)
	if len(v) == 0 || s.lookup(cc, method) == nil || !s.gmwWarned.CompareAndSwap(false, true) {
		return
	}
	s.o.logger.Log(ctx, logging.LevelWarn,
		"go-grpc-middleware retry interceptor around the suite: each of its retries makes the suite's attempts again",
		append(callFields(ctx, method, targetName(cc)), gmwAttemptKey, v[0])...)
}
