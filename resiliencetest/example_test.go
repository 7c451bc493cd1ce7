package resiliencetest_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/resiliencetest"
	"github.com/khive/grpc-resilience/retry"
)

const check = "/grpc.health.v1.Health/Check"

// healthServer serves grpc-go's health service behind inj's interceptors on
// an in-memory listener, and dials it with dial added to the dial options.
// Any real service works the same way.
func healthServer(inj *resiliencetest.Injector, dial ...grpc.DialOption) (healthpb.HealthClient, func()) {
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(inj.Unary()), grpc.ChainStreamInterceptor(inj.Stream()))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	dial = append([]grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}, dial...)
	cc, err := grpc.NewClient("passthrough:///bufnet", dial...)
	if err != nil {
		log.Fatal(err)
	}
	return healthpb.NewHealthClient(cc), func() { _ = cc.Close(); srv.Stop(); <-done }
}

// The first two calls fail with UNAVAILABLE; a client without retries sees
// them.
func Example() {
	inj, err := resiliencetest.New([]resiliencetest.Fault{
		{Method: check, Code: codes.Unavailable, FirstAttempts: 2},
	})
	if err != nil {
		log.Fatal(err)
	}
	client, stop := healthServer(inj, grpc.WithDisableRetry())
	defer stop()

	for range 3 {
		resp, err := client.Check(context.Background(), &healthpb.HealthCheckRequest{})
		fmt.Println(resp.GetStatus(), status.Code(err))
	}
	fmt.Printf("calls %d, injected %d\n", inj.Calls(check), inj.Injected(check))
	// Output:
	// UNKNOWN Unavailable
	// UNKNOWN Unavailable
	// SERVING OK
	// calls 3, injected 2
}

// This project's client interceptors retry through injected UNAVAILABLEs:
// the call succeeds on its third attempt.
func Example_clientRetries() {
	inj, err := resiliencetest.New([]resiliencetest.Fault{
		{Method: check, Code: codes.Unavailable, FirstAttempts: 2},
	})
	if err != nil {
		log.Fatal(err)
	}
	suite, err := interceptors.New(map[string]interceptors.Policy{
		// The health service is left alone unless named.
		check: {Retry: retry.Policy{MaxAttempts: 3, InitialBackoff: time.Millisecond}},
	})
	if err != nil {
		log.Fatal(err)
	}
	client, stop := healthServer(inj, grpc.WithDisableRetry(), grpc.WithChainUnaryInterceptor(suite.Unary()))
	defer stop()

	resp, err := client.Check(context.Background(), &healthpb.HealthCheckRequest{})
	fmt.Println(resp.GetStatus(), err)
	fmt.Printf("calls %d, injected %d\n", inj.Calls(check), inj.Injected(check))
	// Output:
	// SERVING <nil>
	// calls 3, injected 2
}

// An outage switched on and off while the server runs.
func ExampleInjector_SetOutage() {
	inj, err := resiliencetest.New(nil)
	if err != nil {
		log.Fatal(err)
	}
	client, stop := healthServer(inj, grpc.WithDisableRetry())
	defer stop()

	inj.SetOutage(true)
	_, err = client.Check(context.Background(), &healthpb.HealthCheckRequest{})
	fmt.Println(err)
	inj.SetOutage(false)
	_, err = client.Check(context.Background(), &healthpb.HealthCheckRequest{})
	fmt.Println(err)
	// Output:
	// rpc error: code = Unavailable desc = resiliencetest: outage
	// <nil>
}

// A failure with a server delay hint: the grpc-retry-pushback-ms trailer.
func ExampleFault_pushback() {
	inj, err := resiliencetest.New([]resiliencetest.Fault{
		{Method: "/grpc.health.v1.Health/*", Code: codes.ResourceExhausted, Message: "busy", Pushback: 250 * time.Millisecond},
	})
	if err != nil {
		log.Fatal(err)
	}
	client, stop := healthServer(inj, grpc.WithDisableRetry())
	defer stop()

	var trailer metadata.MD
	_, err = client.Check(context.Background(), &healthpb.HealthCheckRequest{}, grpc.Trailer(&trailer))
	fmt.Println(err)
	fmt.Println(trailer.Get(resiliencetest.PushbackTrailer))
	// Output:
	// rpc error: code = ResourceExhausted desc = busy
	// [250]
}

// New names the invalid field.
func ExampleNew_invalid() {
	_, err := resiliencetest.New([]resiliencetest.Fault{
		{Method: check, Code: codes.Unavailable},
		{Method: check, Code: codes.Unavailable, Probability: 2},
	})
	fmt.Println(err)
	// Output: resiliencetest: Faults[1].Probability: 2 is not within [0, 1]
}
