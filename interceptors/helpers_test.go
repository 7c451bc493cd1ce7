package interceptors_test

import (
	"context"
	"net"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
)

const (
	unaryMethod  = "/khive.echo.v1.EchoService/Unary"
	echoService  = "/khive.echo.v1.EchoService/*"
	healthCheck  = "/grpc.health.v1.Health/Check"
	attemptsName = "grpc-previous-rpc-attempts"
)

// env is a suite installed on a connection, over bufconn, to a grpc server
// serving the fault-injecting echo service and the standard health service.
type env struct {
	srv    *echoserver.Server
	suite  *interceptors.Suite
	cc     *grpc.ClientConn
	client echov1.EchoServiceClient
	health healthpb.HealthClient

	mu          sync.Mutex
	transitions []string      // "method: from -> to", from WithOnStateChange
	requests    []metadata.MD // the incoming metadata of each unary request the server saw
}

type envConfig struct {
	seed  uint64
	opts  []interceptors.Option
	inner []grpc.UnaryClientInterceptor // chained after the suite: they run once per attempt
}

type envOption func(*envConfig)

func withSeed(seed uint64) envOption { return func(c *envConfig) { c.seed = seed } }
func withOptions(opts ...interceptors.Option) envOption {
	return func(c *envConfig) { c.opts = append(c.opts, opts...) }
}
func withInner(f grpc.UnaryClientInterceptor) envOption {
	return func(c *envConfig) { c.inner = append(c.inner, f) }
}

// newEnv starts the server and connects to it through a suite built from
// policies. Inside a synctest bubble, call it from the bubble, so that the
// server, the connection and their goroutines and timers belong to it; the
// cleanup (registered with t.Cleanup) stops them.
func newEnv(t *testing.T, policies map[string]interceptors.Policy, eopts ...envOption) *env {
	t.Helper()
	cfg := envConfig{seed: 1}
	for _, o := range eopts {
		o(&cfg)
	}
	e := &env{srv: echoserver.New(cfg.seed)}
	opts := append([]interceptors.Option{interceptors.WithOnStateChange(e.recordTransition)}, cfg.opts...)
	suite, err := interceptors.New(policies, opts...)
	require.NoError(t, err)
	e.suite = suite

	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer(grpc.UnaryInterceptor(e.recordHeaders))
	echov1.RegisterEchoServiceServer(gs, e.srv)
	healthpb.RegisterHealthServer(gs, health.NewServer())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	dial := []grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}
	dial = append(dial, suite.DialOptions()...)
	if len(cfg.inner) > 0 {
		dial = append(dial, grpc.WithChainUnaryInterceptor(cfg.inner...))
	}
	cc, err := grpc.NewClient("passthrough:///bufnet", dial...)
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = cc.Close()
		gs.Stop()
		<-done
	})
	e.cc = cc
	e.client = echov1.NewEchoServiceClient(cc)
	e.health = healthpb.NewHealthClient(cc)
	return e
}

func (e *env) recordTransition(method string, from, to breaker.State) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.transitions = append(e.transitions, method+": "+from.String()+" -> "+to.String())
}

func (e *env) recordHeaders(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	e.mu.Lock()
	e.requests = append(e.requests, md.Copy())
	e.mu.Unlock()
	return h(ctx, req)
}

func (e *env) transitionLog() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.transitions)
}

// headerLog returns the values of metadata key in each request the server
// saw, in order.
func (e *env) headerLog(key string) [][]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([][]string, len(e.requests))
	for i, md := range e.requests {
		out[i] = md.Get(key)
	}
	return out
}

// unary calls Unary with message "m" and fault f.
func (e *env) unary(ctx context.Context, f *echov1.Fault, opts ...grpc.CallOption) (*echov1.UnaryResponse, error) {
	return e.client.Unary(ctx, &echov1.UnaryRequest{Message: "m", Fault: f}, opts...)
}

// fault fails every attempt with code c.
func fault(c codes.Code) *echov1.Fault { return &echov1.Fault{Code: uint32(c)} }

// failFirst fails the first n attempts carrying key with code c.
func failFirst(key string, n int, c codes.Code) *echov1.Fault {
	return &echov1.Fault{Code: uint32(c), Key: key, FailAttempts: int32(n)}
}

// errorInfo returns the ErrorInfo detail of err's status, or nil.
func errorInfo(err error) *errdetails.ErrorInfo {
	for _, d := range status.Convert(err).Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei
		}
	}
	return nil
}

// retryInfoOf returns the RetryInfo detail of err's status, or nil.
func retryInfoOf(err error) *errdetails.RetryInfo {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri
		}
	}
	return nil
}

// events records the suite's hooks.
type events struct {
	mu      sync.Mutex
	retries []interceptors.RetryEvent
	giveUps []interceptors.GiveUpEvent
}

func (ev *events) options() envOption {
	return withOptions(
		interceptors.WithOnRetry(func(r interceptors.RetryEvent) {
			ev.mu.Lock()
			defer ev.mu.Unlock()
			ev.retries = append(ev.retries, r)
		}),
		interceptors.WithOnGiveUp(func(g interceptors.GiveUpEvent) {
			ev.mu.Lock()
			defer ev.mu.Unlock()
			ev.giveUps = append(ev.giveUps, g)
		}),
	)
}

func (ev *events) retryDelays() []string {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	var out []string
	for _, r := range ev.retries {
		out = append(out, r.Delay.String())
	}
	return out
}

// step is the scripted answer to one attempt (see script).
type step struct {
	code     codes.Code // codes.OK: call the server
	pushback []string   // trailer values of grpc-retry-pushback-ms
	header   bool       // report response headers (a committed attempt)
}

// script returns an interceptor, to chain after the suite, that answers
// attempt n (interceptors.Attempt) with steps[n-1]: an error with that code,
// trailers and headers (delivered through the grpc.Header and grpc.Trailer
// call options, as grpc does), or, for codes.OK, the real call. Attempts
// beyond the script call the server.
func script(steps ...step) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		n := interceptors.Attempt(ctx)
		if n > len(steps) || steps[n-1].code == codes.OK {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		s := steps[n-1]
		for _, o := range opts {
			switch o := o.(type) {
			case grpc.TrailerCallOption:
				if s.pushback != nil {
					*o.TrailerAddr = metadata.MD{"grpc-retry-pushback-ms": s.pushback}
				}
			case grpc.HeaderCallOption:
				if s.header {
					*o.HeaderAddr = metadata.MD{}
				}
			}
		}
		return status.Error(s.code, "scripted")
	}
}
