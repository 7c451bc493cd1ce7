// Package resiliencetest injects faults into a real gRPC server, so that a
// client's retries, circuit breaking and deadlines can be tested against the
// failures they exist for. An [Injector] holds a list of [Fault]s and gives
// a unary and a stream server interceptor that wrap any service:
//
//	inj, err := resiliencetest.New([]resiliencetest.Fault{
//		// The first two calls of Get fail with UNAVAILABLE and a 50ms pushback.
//		{Method: "/pkg.Store/Get", Code: codes.Unavailable, FirstAttempts: 2, Pushback: 50 * time.Millisecond},
//		// One call in ten of every Store method takes 200ms more.
//		{Method: "/pkg.Store/*", Probability: 0.1, Delay: 200 * time.Millisecond},
//	}, resiliencetest.WithSeed(1))
//	...
//	srv := grpc.NewServer(
//		grpc.ChainUnaryInterceptor(inj.Unary()),
//		grpc.ChainStreamInterceptor(inj.Stream()),
//	)
//
// A fault can fail a call with any status code, message and details (such
// as google.rpc.RetryInfo or ErrorInfo), delay it, send gRFC A6's
// grpc-retry-pushback-ms trailer or any other header and trailer, strike at
// random or only the first attempts, and let a stream carry some messages
// before it fails. [Injector.SetOutage] switches an outage on and off at run
// time. [Injector.Calls] and [Injector.Injected] count, per method, the calls
// seen and the calls struck, for the test to assert on.
//
// Probabilistic faults draw from one generator; with [WithSeed], calls that
// arrive in the same order meet the same faults.
package resiliencetest
