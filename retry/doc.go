// Package retry retries a failed operation with capped exponential backoff and jitter, within
// the caller's deadline and a retry budget. It imports nothing from gRPC; the interceptors
// package adapts it.
//
// (Overview in progress.)
package retry
