// Package interceptors adapts the breaker and retry state machines to gRPC:
// client interceptors that give every method its own circuit breaker and
// retries with backoff, decided on gRPC status codes and configured by a
// per-method policy map.
//
// # Quick start
//
//	suite, err := interceptors.New(map[string]interceptors.Policy{
//		"*": {}, // defaults: 4 attempts, 50ms full-jitter backoff, a breaker per method
//	})
//	if err != nil { ... }
//	cc, err := grpc.NewClient(target, append(suite.DialOptions(), creds)...)
//
// # Policies
//
// Keys are "/pkg.Svc/Method", "/pkg.Svc/*" or "*"; a call uses the most
// specific one, and a method without a policy passes through untouched. The
// "*" policy never covers the health check service (/grpc.health.v1.Health).
//
// # Attempts
//
// Every attempt, first or retry, unary or stream, passes the method's
// breaker, is classified by status code, and is recorded in the breaker; an
// open breaker ends the retries at once.
package interceptors
