package interceptors_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
	"github.com/khive/grpc-resilience/retry"
)

// The quick start: a policy map, the suite's dial options, a call. The echo
// server fails the first two attempts with UNAVAILABLE; the suite retries
// with backoff and the call succeeds.
func Example_quickStart() {
	suite, err := interceptors.New(map[string]interceptors.Policy{
		// Every method of the echo service: 3 attempts, 10ms initial backoff,
		// a breaker per method that opens after 5 failed attempts in a row.
		"/khive.echo.v1.EchoService/*": {
			Retry:   retry.Policy{MaxAttempts: 3, InitialBackoff: 10 * time.Millisecond},
			Breaker: breaker.Config{ConsecutiveFailures: 5},
		},
		// Every other method (except the health check): the defaults.
		"*": {},
	})
	if err != nil {
		log.Fatal(err)
	}

	// With a real server: grpc.NewClient(target, append(suite.DialOptions(), creds)...).
	cc, stop, err := echoserver.Bufconn(echoserver.New(1), suite.DialOptions()...)
	if err != nil {
		log.Fatal(err)
	}
	defer stop()
	client := echov1.NewEchoServiceClient(cc)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := client.Unary(ctx, &echov1.UnaryRequest{
		Message: "hello",
		Fault:   &echov1.Fault{Code: uint32(codes.Unavailable), Key: "demo", FailAttempts: 2},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s (the server saw %d previous attempts)\n", resp.GetMessage(), resp.GetPreviousAttempts())
	// Output: hello (the server saw 2 previous attempts)
}
