package interceptors_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
)

// budgetPattern draws, for each of callers × calls calls, how many of its
// first attempts fail: each attempt fails independently with probability p
// (a call that fails its first k attempts and then succeeds is exactly what
// independent attempt failures produce). The pattern is fixed by seed, so
// both arms of a comparison see the same calls.
func budgetPattern(seed uint64, callers, calls int, p float64) [][]int32 {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	out := make([][]int32, callers)
	for g := range out {
		out[g] = make([]int32, calls)
		for i := range out[g] {
			k := int32(0)
			for k < 8 && rng.Float64() < p {
				k++
			}
			out[g][i] = k
		}
	}
	return out
}

// runPattern makes the calls of pattern through e, one goroutine per caller,
// each caller's calls one after another, and returns how many succeeded.
// Call i of caller g fails its first pattern[g][i] attempts with UNAVAILABLE.
func runPattern(t *testing.T, e *env, pattern [][]int32) int {
	t.Helper()
	var (
		mu sync.Mutex
		ok int
		wg sync.WaitGroup
	)
	for g, calls := range pattern {
		wg.Go(func() {
			n := 0
			for i, k := range calls {
				var f *echov1.Fault
				if k > 0 {
					f = failFirst(fmt.Sprintf("c%d-%d", g, i), int(k), codes.Unavailable)
				}
				if _, err := e.unary(t.Context(), f); err == nil {
					n++
				}
			}
			mu.Lock()
			ok += n
			mu.Unlock()
		})
	}
	wg.Wait()
	return ok
}

// TestBudgetConcurrentThirtyPercentGRPC: 16 concurrent callers over real
// grpc, 30% independent UNAVAILABLE attempts, 4 attempts (the default), the
// default retry budget: success stays within 0.5 point of the same suite
// without a budget, on the same calls. The breaker is off in both arms so
// that only the budget differs.
//
// The retries wait out the default backoff in the bubble's fake time while
// the calls themselves take none, so nearly every caller is waiting for a
// retry at any instant: 16 retries in flight, most of which will be
// refunded. A fresh budget holds only its reserve (10 retries) and the first
// deposits, so it must count the retries in flight at their expected refund,
// not at full price. The cost of a budget is paid when it starts, so the
// test runs several episodes, each with a fresh suite and its own fixed call
// pattern (16 callers × 50 calls), 9600 calls per arm in all. Counting the
// in-flight retries at full price, a fresh budget refused 2 to 18 retries
// in 6 such starts, 11 to 39 in 12; counting them at their expected
// refund, it refuses none (now and then up to 3, under -race).
func TestBudgetConcurrentThirtyPercentGRPC(t *testing.T) {
	const episodes, callers, calls = 12, 16, 50
	policies := map[string]interceptors.Policy{"*": {Breaker: breaker.Config{Mode: breaker.Disabled}}}
	var want, unlimited, withBudget, refused int
	for ep := range episodes {
		pattern := budgetPattern(uint64(ep+1), callers, calls, 0.3)
		for _, cs := range pattern {
			for _, k := range cs {
				if k < 4 { // unlimited retries rescue every call failing fewer than 4 attempts
					want++
				}
			}
		}
		synctest.Test(t, func(t *testing.T) {
			unlimited += runPattern(t, newEnv(t, policies, withOptions(interceptors.WithoutBudget())), pattern)
			e := newEnv(t, policies)
			withBudget += runPattern(t, e, pattern)
			b := e.suite.Snapshot().Budget
			require.Len(t, b.Targets, 1)
			refused += int(b.Targets[0].Refused)
		})
	}
	total := float64(episodes * callers * calls)
	t.Logf("success: %.2f%% without a budget, %.2f%% with the default budget (%d retries refused)",
		100*float64(unlimited)/total, 100*float64(withBudget)/total, refused)
	require.Equal(t, want, unlimited, "without a budget every call with fewer than 4 failures succeeds")
	assert.LessOrEqual(t, float64(unlimited-withBudget)/total, 0.005,
		"the budget costs more than 0.5 point of success")
	assert.LessOrEqual(t, refused, 6, "a starting budget refuses retries that its retries in flight will refund")
}

// BenchmarkUnarySuccessBudget: the success path with the breaker off, with
// and without the default budget, so the difference is the budget's deposit
// (serial and b.RunParallel).
func BenchmarkUnarySuccessBudget(b *testing.B) {
	off := map[string]interceptors.Policy{"*": {Breaker: breaker.Config{Mode: breaker.Disabled}}}
	req, reply := new(echov1.UnaryRequest), new(echov1.UnaryResponse)
	for _, c := range []struct {
		name string
		opts []interceptors.Option
	}{{"budget", nil}, {"no-budget", []interceptors.Option{interceptors.WithoutBudget()}}} {
		b.Run(c.name, func(b *testing.B) {
			in := mustSuite(b, off, c.opts...)
			run(b, func(ctx context.Context) error {
				return in(ctx, unaryMethod, req, reply, nil, noopInvoker, staticOpts...)
			})
		})
	}
}
