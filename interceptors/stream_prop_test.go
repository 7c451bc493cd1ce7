package interceptors_test

import (
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"pgregory.net/rapid"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
	"github.com/khive/grpc-resilience/retry"
)

// TestStreamPropertyNoLossNoDuplicateNoReorder drives client and bidi
// streams through random fault schedules: which attempts fail (the first
// failAttempts, or all), after how many messages, with which code, with or
// without response headers first, under a random attempt limit and replay
// buffer. Whatever happens, neither side ever sees a message lost,
// duplicated or reordered:
//
//   - a stream that succeeds delivered exactly the client's messages, in
//     order, to one server attempt (echoserver Received), and, for bidi,
//     the caller received exactly their echoes, in order, from that attempt;
//   - a stream that fails returns the fault's code, no server attempt
//     completed, and the caller received nothing (a failing attempt never
//     echoes);
//   - no more attempts than allowed reached the server, and the breaker
//     recorded exactly one outcome per attempt;
//   - when the replay buffer cannot overflow, the outcome and the number of
//     attempts are exactly those of the A6 rules.
//
// Real clock (1ms backoff, no budget, a breaker that only counts): the
// schedules are counted, never timed.
func TestStreamPropertyNoLossNoDuplicateNoReorder(t *testing.T) {
	pol := interceptors.Policy{
		Retry:   retry.Policy{MaxAttempts: 5, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond},
		Breaker: breaker.Config{Mode: breaker.MetricsOnly},
	}
	t.Run("bufconn", func(t *testing.T) {
		rapid.Check(t, streamProperty(t, newStreamEnv(t, pol, interceptors.WithoutBudget())))
	})
	t.Run("loopback", func(t *testing.T) {
		rapid.Check(t, streamProperty(t, newStreamEnvTCP(t, pol, interceptors.WithoutBudget())))
	})
}

func streamProperty(t *testing.T, e *streamEnv) func(*rapid.T) {
	var runs atomic.Int64
	return func(rt *rapid.T) {
		key := fmt.Sprintf("prop-%d", runs.Add(1))
		bidi := rapid.Bool().Draw(rt, "bidi")
		n := rapid.IntRange(1, 40).Draw(rt, "messages")
		// Big client-stream messages overrun the flow-control window, so a
		// replay can meet the new attempt's failure. (Not for bidi: an echo
		// server answering a replay larger than the windows stalls it, see
		// Suite.Stream.)
		pad := rapid.IntRange(0, 64).Draw(rt, "padding")
		if !bidi && rapid.IntRange(0, 3).Draw(rt, "big") == 0 {
			pad = rapid.IntRange(4<<10, 20<<10).Draw(rt, "bigPadding")
		}
		code := rapid.SampledFrom([]codes.Code{codes.OK, codes.Unavailable, codes.Unavailable, codes.Internal, codes.ResourceExhausted}).Draw(rt, "code")
		failAttempts := rapid.IntRange(0, 6).Draw(rt, "failAttempts") // 0: every attempt fails
		after := rapid.IntRange(0, n+2).Draw(rt, "afterMessages")
		sendHeader := rapid.Bool().Draw(rt, "sendHeader")
		maxAttempts := rapid.IntRange(1, 5).Draw(rt, "maxAttempts")
		limit := rapid.SampledFrom([]int{0, 100, 400, 1 << 20}).Draw(rt, "replayBuffer")
		if limit > 0 && rapid.Bool().Draw(rt, "suiteDefault") {
			limit = interceptors.DefaultReplayBuffer
		}

		msgs := make([]string, n)
		total := 0
		for i := range msgs {
			msgs[i] = fmt.Sprintf("%02d-%s", i, strings.Repeat("p", pad))
			total += max(proto.Size(&echov1.ClientStreamRequest{Message: msgs[i]}), 1)
		}
		f := &echov1.Fault{Code: uint32(code), Key: key, FailAttempts: int32(failAttempts), AfterMessages: int32(after), SendHeader: sendHeader}
		total += proto.Size(&echov1.ClientStreamRequest{Fault: f}) // the first message carries the fault
		opts := []grpc.CallOption{interceptors.MaxAttempts(maxAttempts)}
		if limit != interceptors.DefaultReplayBuffer {
			opts = append(opts, grpc.MaxRetryRPCBufferSize(limit))
		}

		var (
			err  error
			got  []string
			idx  []int32
			resp *echov1.ClientStreamResponse
		)
		method := methodClientStream
		if bidi {
			method = methodBidi
		}
		before := e.breakerCounts(method)
		ctx := t.Context()
		if bidi {
			bs, serr := e.client.BidiStream(ctx, opts...)
			require.NoError(rt, serr)
			var sendErr error
			headerFirst := rapid.Bool().Draw(rt, "headerFirst") // commits only what is committed anyway
			got, idx, sendErr, err = bidiRunHeader(bs, msgs, f, headerFirst)
			if sendErr != nil {
				require.ErrorIs(rt, sendErr, io.EOF, "Send fails only with io.EOF")
			}
		} else {
			cs, serr := e.client.ClientStream(ctx, opts...)
			require.NoError(rt, serr)
			resp, err = sendClient(rt, cs, msgs, f)
		}
		attempts := e.srv.Attempts(key)
		received := e.srv.Received(key)

		// Safety, whatever the timing.
		require.LessOrEqual(rt, attempts, maxAttempts, "attempts")
		now := e.breakerCounts(method)
		outcomes := now.Successes + now.Failures + now.Ignored - before.Successes - before.Failures - before.Ignored
		require.Equal(rt, uint64(attempts), outcomes, "one breaker outcome per attempt")
		if err == nil {
			require.Equal(rt, [][]string{msgs}, received, "the server's successful attempt got every message once, in order")
			if bidi {
				require.Equal(rt, msgs, got, "the caller got every echo once, in order")
				require.Equal(rt, seq(n), idx, "from one attempt")
			} else {
				require.Equal(rt, msgs, resp.GetMessages())
				require.Equal(rt, int32(attempts-1), resp.GetPreviousAttempts())
			}
		} else {
			require.NotEqual(rt, codes.OK, code, "no fault, no failure: %v", err)
			require.Equal(rt, code, status.Code(err), "the fault's code: %v", err)
			require.Empty(rt, received, "no server attempt completed")
			require.Empty(rt, got, "a failing attempt echoes nothing")
		}

		// Liveness, when the buffer cannot overflow (then the commit does
		// not depend on when the failure is noticed).
		if total > limit {
			return
		}
		fails := func(i int) bool { return code != codes.OK && (failAttempts == 0 || i <= failAttempts) }
		retryable := code == codes.Unavailable && !sendHeader
		want := 1
		for fails(want) && retryable && want < maxAttempts {
			want++
		}
		assert.Equal(rt, want, attempts, "attempts")
		assert.Equal(rt, !fails(want), err == nil, "outcome: %v", err)
	}
}
