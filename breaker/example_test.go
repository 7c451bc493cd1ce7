package breaker_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/khive/grpc-resilience/breaker"
)

var errUnavailable = errors.New("unavailable")

// The two-step form, as an interceptor uses it: Allow before the attempt,
// Done with its outcome after.
func Example() {
	b, err := breaker.New(breaker.Config{Name: "payments", ConsecutiveFailures: 3})
	if err != nil {
		panic(err)
	}
	attempt := func(call func() error) error {
		p, err := b.Allow()
		if err != nil {
			return err // rejected: nothing was sent
		}
		err = call()
		if err != nil {
			p.Done(breaker.Failure)
		} else {
			p.Done(breaker.Success)
		}
		return err
	}

	for range 3 {
		fmt.Println(attempt(func() error { return errUnavailable }))
	}
	err = attempt(func() error { return nil })
	var oe *breaker.OpenError
	fmt.Println(errors.Is(err, breaker.ErrOpen), errors.As(err, &oe), oe.Name(), oe.State())
	fmt.Println(b.State(), b.Counts().Rejections)

	b.Reset() // manual control; also stops the open timer
	fmt.Println(b.State(), attempt(func() error { return nil }))
	// Output:
	// unavailable
	// unavailable
	// unavailable
	// true true payments open
	// open 1
	// closed <nil>
}

// Do wraps a function (the Khive @circuit_breaker decorator). The classifier
// decides what counts: here "not found" means the server works (Success) and
// a cancellation is Ignored (Khive's excluded_exceptions).
func ExampleBreaker_Do() {
	errNotFound := errors.New("not found")
	classify := func(err error) breaker.Outcome {
		switch {
		case err == nil, errors.Is(err, errNotFound):
			return breaker.Success
		case errors.Is(err, context.Canceled):
			return breaker.Ignored
		}
		return breaker.Failure
	}
	b, err := breaker.New(breaker.Config{Name: "users"})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	for _, result := range []error{nil, errNotFound, context.Canceled, errUnavailable, errUnavailable} {
		_ = b.Do(ctx, func(context.Context) error { return result }, classify)
	}
	c := b.Counts()
	fmt.Printf("%v: %d successes, %d failures, %d ignored, streak %d\n",
		c.State, c.Successes, c.Failures, c.Ignored, c.ConsecutiveFailures)
	// Output:
	// closed: 2 successes, 2 failures, 1 ignored, streak 2
}

// A Group keeps one breaker per key, such as a gRPC method name.
func ExampleGroup() {
	g, err := breaker.NewGroup(breaker.Config{
		ConsecutiveFailures: 2,
		OnStateChange: func(name string, from, to breaker.State) {
			fmt.Printf("%s: %v -> %v\n", name, from, to)
		},
	})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	fail := func(context.Context) error { return errUnavailable }
	ok := func(context.Context) error { return nil }

	_ = g.Get("/shop.Cart/Add").Do(ctx, ok, nil)
	for range 2 {
		_ = g.Get("/shop.Payment/Charge").Do(ctx, fail, nil)
	}
	g.Range(func(key string, b *breaker.Breaker) bool {
		fmt.Println(key, b.State())
		return true
	})
	g.Get("/shop.Payment/Charge").Reset()
	// Output:
	// /shop.Payment/Charge: closed -> open
	// /shop.Cart/Add closed
	// /shop.Payment/Charge open
	// /shop.Payment/Charge: open -> closed
}
