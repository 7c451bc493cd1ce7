package interceptors

import "google.golang.org/grpc"

// disableRetryOption is the CallOption of DisableRetry.
type disableRetryOption struct{ grpc.EmptyCallOption }

// maxAttemptsOption is the CallOption of MaxAttempts.
type maxAttemptsOption struct {
	grpc.EmptyCallOption
	n int
}

// DisableRetry returns a CallOption that makes one call (or stream) use a
// single attempt; the breaker still applies. The suite removes the option
// before calling the next interceptor.
func DisableRetry() grpc.CallOption { return disableRetryOption{} }

// MaxAttempts returns a CallOption that sets the number of attempts of one
// call (or stream), the first included, overriding its policy's
// Retry.MaxAttempts; n < 1 counts as 1. The suite removes the option before
// calling the next interceptor.
func MaxAttempts(n int) grpc.CallOption { return maxAttemptsOption{n: n} }

// overrides are the per-call settings read from the call options. The last
// option of a kind wins (default call options come first).
type overrides struct {
	maxAttempts  int // 0: the policy's; DisableRetry sets 1
	replayBuffer int // grpc.MaxRetryRPCBufferSize if given, else -1
}

// attempts returns the call's MaxAttempts: the override if any, else def.
func (o overrides) attempts(def int) int {
	if o.maxAttempts > 0 {
		return o.maxAttempts
	}
	return def
}

// replay returns the call's replay-buffer limit: the
// grpc.MaxRetryRPCBufferSize call option if given, else def.
func (o overrides) replay(def int) int {
	if o.replayBuffer >= 0 {
		return o.replayBuffer
	}
	return def
}

// splitCallOptions reads the suite's call options (DisableRetry,
// MaxAttempts) and grpc.MaxRetryRPCBufferSize from opts, and returns opts
// without the suite's own options. When none of the suite's options is
// present it returns opts itself, without allocating. grpc's own options
// (MaxRetryRPCBufferSize included) are kept.
func splitCallOptions(opts []grpc.CallOption) (overrides, []grpc.CallOption) {
	ov := overrides{replayBuffer: -1}
	ours := 0
	for _, o := range opts {
		switch o := o.(type) {
		case disableRetryOption:
			ov.maxAttempts = 1
			ours++
		case maxAttemptsOption:
			ov.maxAttempts = max(o.n, 1)
			ours++
		case grpc.MaxRetryRPCBufferSizeCallOption:
			ov.replayBuffer = max(o.MaxRetryRPCBufferSize, 0)
		}
	}
	if ours == 0 {
		return ov, opts
	}
	out := make([]grpc.CallOption, 0, len(opts)-ours)
	for _, o := range opts {
		switch o.(type) {
		case disableRetryOption, maxAttemptsOption:
		default:
			out = append(out, o)
		}
	}
	return ov, out
}
