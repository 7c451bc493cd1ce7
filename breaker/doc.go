// Package breaker is a circuit breaker: a gRPC-free state machine that stops
// calling a failing dependency and probes it again after a recovery time.
package breaker
