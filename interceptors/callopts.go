package interceptors

import (
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

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

// overrides are the per-call settings read from the call options; the last
// option of a kind wins.
type overrides struct {
	maxAttempts  int // 0: the policy's; DisableRetry sets 1
	replayBuffer int // grpc.MaxRetryRPCBufferSize if given, else -1
	after        int // how many options act after the call (isAfterOption)
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
		case grpc.HeaderCallOption, grpc.TrailerCallOption, grpc.PeerCallOption, grpc.OnFinishCallOption:
			ov.after++ // isAfterOption's types, in this switch: one type switch, not two
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

// isAfterOption reports whether o is one of grpc's call options that act
// when an attempt ends (Header, Trailer, Peer, OnFinish). A call that may
// retry takes them out of its attempts' options and applies them once, at
// its end (applyAfter), as grpc-go's own retry does.
func isAfterOption(o grpc.CallOption) bool {
	switch o.(type) {
	case grpc.HeaderCallOption, grpc.TrailerCallOption, grpc.PeerCallOption, grpc.OnFinishCallOption:
		return true
	}
	return false
}

// wantsPeer reports whether after holds a grpc.Peer option.
func wantsPeer(after []grpc.CallOption) bool {
	for _, o := range after {
		if _, ok := o.(grpc.PeerCallOption); ok {
			return true
		}
	}
	return false
}

// applyAfter applies the after-call options in after, once, for a call
// that ended with err, as grpc does for the final attempt: Header and
// Trailer get hdr and tlr (nil if it received none), Peer gets p unless p
// is nil (no attempt reached a server), then finishOptions runs.
func applyAfter(after []grpc.CallOption, hdr, tlr metadata.MD, p *peer.Peer, err error) {
	for _, o := range after {
		switch o := o.(type) {
		case grpc.HeaderCallOption:
			*o.HeaderAddr = hdr
		case grpc.TrailerCallOption:
			*o.TrailerAddr = tlr
		case grpc.PeerCallOption:
			if p != nil {
				*o.PeerAddr = *p
			}
		}
	}
	finishOptions(after, err)
}

// finishOptions calls the OnFinish callbacks among opts with err (io.EOF
// counts as nil): for a call that ends without an attempt reaching grpc
// (the breaker rejected it), so that OnFinish still runs once.
func finishOptions(opts []grpc.CallOption, err error) {
	if err == io.EOF {
		err = nil
	}
	for _, o := range opts {
		if o, ok := o.(grpc.OnFinishCallOption); ok {
			o.OnFinish(err)
		}
	}
}
