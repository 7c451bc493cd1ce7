package retry_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/khive/grpc-resilience/retry"
)

var (
	errUnavailable = errors.New("unavailable")
	errNotFound    = errors.New("not found")
)

// Do with a classifier: unavailable is retried (here the server asked for an immediate retry,
// a pushback of 0), not found is final.
func ExampleDo() {
	classify := func(err error) retry.Decision {
		switch {
		case errors.Is(err, errUnavailable):
			return retry.After(0) // the server's delay: exact, no jitter
		case errors.Is(err, errNotFound):
			return retry.Stop
		}
		return retry.Backoff
	}
	replies := []error{errUnavailable, errUnavailable, errNotFound}
	calls := 0
	err := retry.Do(context.Background(), retry.Policy{MaxAttempts: 5}, func(ctx context.Context) error {
		calls++
		return replies[calls-1]
	}, classify, retry.WithOnRetry(func(attempt int, delay time.Duration, err error) {
		fmt.Printf("attempt %d failed (%v), retrying in %v\n", attempt, err, delay)
	}))

	fmt.Println(err)
	var re *retry.Error
	if errors.As(err, &re) {
		fmt.Println(re.Attempts, re.Reason, errors.Is(err, errNotFound))
	}
	// Output:
	// attempt 1 failed (unavailable), retrying in 0s
	// attempt 2 failed (unavailable), retrying in 0s
	// retry: gave up after 3 attempts (not retryable): not found
	// 3 not retryable true
}

// A retry that cannot finish before the caller's deadline is not started: Do returns the last
// error at once instead of sleeping toward the deadline.
func ExampleDo_deadline() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	p := retry.Policy{InitialBackoff: 2 * time.Second, Jitter: retry.NoJitter}
	err := retry.Do(ctx, p, func(ctx context.Context) error { return errUnavailable }, nil)
	fmt.Println(err)
	fmt.Println(ctx.Err())
	// Output:
	// retry: gave up after 1 attempt (deadline): unavailable
	// <nil>
}

func ExampleDoValue() {
	calls := 0
	v, err := retry.DoValue(context.Background(), retry.Policy{}, func(ctx context.Context) (string, error) {
		calls++
		if calls == 1 {
			return "", errUnavailable
		}
		return "pong", nil
	}, func(error) retry.Decision { return retry.After(0) })
	fmt.Println(v, err, calls)
	// Output: pong <nil> 2
}

// The delay sequence of the default policy without jitter: 25ms doubling, capped at 5s. The
// cap comes before jitter, so FullJitter draws from [0, 5s) from the 9th retry on.
func ExamplePolicy_Delay() {
	p := retry.Policy{Jitter: retry.NoJitter}
	var delays []time.Duration
	for n := range 10 {
		delays = append(delays, p.Delay(n, 0))
	}
	fmt.Println(delays)

	a6 := retry.Policy{Jitter: retry.ProportionalJitter, InitialBackoff: time.Second, MaxBackoff: time.Minute}
	fmt.Println(a6.Delay(0, 0), a6.Delay(0, 0.5), a6.Delay(0, 0.75))
	// Output:
	// [25ms 50ms 100ms 200ms 400ms 800ms 1.6s 3.2s 5s 5s]
	// 800ms 1s 1.1s
}

func ExamplePolicy_Validate() {
	fmt.Println(retry.Policy{MaxAttempts: -2}.Validate())
	fmt.Println(retry.Policy{InitialBackoff: time.Second, MaxBackoff: time.Millisecond}.Validate())
	fmt.Println(retry.Policy{}.Validate())
	// Output:
	// retry: Policy.MaxAttempts: must be at least 1, got -2
	// retry: Policy.MaxBackoff: must be >= InitialBackoff (1s), got 1ms
	// <nil>
}

// A ratio budget: the reserve, then one retry per 5 calls that ended well.
func ExampleNewBudget() {
	b, err := retry.NewBudget(retry.BudgetConfig{}) // Ratio 0.2, 1 retry/s reserve, 10s window
	if err != nil {
		panic(err)
	}
	now := time.Now()
	fmt.Println("reserve:", b.Snapshot().Reserve)
	retries := 0
	for b.AllowAt(now) {
		retries++
	}
	fmt.Println("retries from the reserve:", retries)

	for range 10 {
		b.Succeeded(false) // 10 calls that succeeded at once: 2 retries
	}
	fmt.Println(b.AllowAt(now), b.AllowAt(now), b.AllowAt(now))
	s := b.Snapshot()
	fmt.Println(s.Allowed, s.Refused)
	// Output:
	// reserve: 10
	// retries from the reserve: 10
	// true true false
	// 12 2
}

// gRFC A6 retry throttling: maxTokens 10, tokenRatio 0.1.
func ExampleNewTokenBucket() {
	b, err := retry.NewTokenBucket(10, 0.1)
	if err != nil {
		panic(err)
	}
	for i := 1; i <= 5; i++ {
		b.FailedAt(time.Time{}) // a retryable attempt failed: -1 token (the bucket has no clock)
		fmt.Print(b.AllowAt(time.Time{}), " ")
	}
	fmt.Println(b.Snapshot().Balance)
	b.Succeeded(false) // +0.1
	fmt.Println(b.AllowAt(time.Time{}), b.Snapshot().Balance)
	// Output:
	// true true true true false 5
	// true 5.1
}

// The loop the interceptors run, with Call driven by hand (explicit times, no waiting).
func ExampleCall() {
	p := retry.Policy{MaxAttempts: 3, Jitter: retry.NoJitter, InitialBackoff: 100 * time.Millisecond}
	c := p.NewCall(nil)
	ctx := context.Background()
	now := time.Now()
	for {
		c.Begin()
		err := errUnavailable // the attempt
		delay, stop := c.Next(ctx, err, retry.Backoff, now)
		if stop != nil {
			c.Done(err, true)
			fmt.Println(stop)
			return
		}
		fmt.Println("wait", delay)
		now = now.Add(delay) // retry.Wait(ctx, delay) in real code
	}
	// Output:
	// wait 100ms
	// wait 200ms
	// retry: gave up after 3 attempts (exhausted): unavailable
}
