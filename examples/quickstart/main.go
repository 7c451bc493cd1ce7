// Command quickstart is the README's demo of the interceptors: it starts the
// fault-injecting echo server on loopback, installs a Suite on the client
// connection, and prints a timeline of what the suite does: transient
// failures retried with backoff, a server pushback honoured, an outage that
// opens the breaker so that calls fail fast, a cached fallback, half-open
// probing and recovery, and a client stream retried by replaying its
// messages. Nothing to install:
//
//	go run ./examples/quickstart
//
// It checks every step and exits with status 1 if one did not behave as
// printed (CI runs it).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
	"github.com/khive/grpc-resilience/retry"
)

const (
	service      = "/khive.echo.v1.EchoService/*"
	recoveryTime = 300 * time.Millisecond
)

// demo holds the timeline's state.
type demo struct {
	start  time.Time
	mu     sync.Mutex
	out    io.Writer
	failed []string

	transitions []string // breaker state changes, in order
	cache       map[string]string
}

func (d *demo) logf(format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Fprintf(d.out, "   [%6.3fs] %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
}

func (d *demo) step(n int, title string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Fprintf(d.out, "\n%d. %s\n", n, title)
}

// expect records a step that did not behave as printed.
func (d *demo) expect(ok bool, format string, args ...any) {
	if !ok {
		msg := fmt.Sprintf(format, args...)
		d.mu.Lock()
		d.failed = append(d.failed, msg)
		fmt.Fprintf(d.out, "   UNEXPECTED: %s\n", msg)
		d.mu.Unlock()
	}
}

func (d *demo) onRetry(ev interceptors.RetryEvent) {
	st := status.Convert(ev.Err)
	d.logf("%s attempt %d failed: %s; retry in %v", short(ev.Method), ev.Attempt, st.Code(), ev.Delay)
}

func (d *demo) onStateChange(method string, from, to breaker.State) {
	d.mu.Lock()
	d.transitions = append(d.transitions, from.String()+" -> "+to.String())
	d.mu.Unlock()
	d.logf("breaker of %s: %s -> %s", short(method), from, to)
}

func (d *demo) transitionLog() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.transitions)
}

// fallback answers a unary call from the cache while the method is down.
func (d *demo) fallback(_ context.Context, _ string, req, reply any, err error) error {
	d.mu.Lock()
	cached, ok := d.cache[req.(*echov1.UnaryRequest).GetMessage()]
	d.mu.Unlock()
	if !ok {
		return err
	}
	reply.(*echov1.UnaryResponse).Message = cached + " (from the cache)"
	return nil
}

func short(method string) string { return method[strings.LastIndexByte(method, '/')+1:] }

func main() {
	d := &demo{start: time.Now(), out: os.Stdout, cache: map[string]string{}}
	if err := run(d); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
	if len(d.failed) > 0 {
		fmt.Fprintf(os.Stderr, "\nquickstart: %d step(s) did not behave as printed\n", len(d.failed))
		os.Exit(1)
	}
	fmt.Printf("\nEvery step behaved as printed (%.2fs).\n", time.Since(d.start).Seconds())
}

func run(d *demo) error {
	policy := interceptors.Policy{
		Retry: retry.Policy{MaxAttempts: 4, InitialBackoff: 20 * time.Millisecond, Jitter: retry.NoJitter},
		Breaker: breaker.Config{
			ConsecutiveFailures: 5,
			RecoveryTime:        recoveryTime,
			RecoveryJitter:      -1, // no jitter, for a readable timeline
			HalfOpenMaxCalls:    1,
		},
		Fallback: d.fallback,
	}
	suite, err := interceptors.New(map[string]interceptors.Policy{service: policy},
		interceptors.WithOnRetry(d.onRetry),
		interceptors.WithOnStateChange(d.onStateChange),
	)
	if err != nil {
		return err
	}
	srv := echoserver.New(1)
	cc, stop, err := echoserver.Loopback(srv, suite.DialOptions()...)
	if err != nil {
		return err
	}
	defer stop()
	client := echov1.NewEchoServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	fmt.Printf("An echo server on %s that fails on request, behind a Suite with the policy\n", cc.Target())
	fmt.Printf("%s: 4 attempts, backoff 20ms x2 (no jitter), a breaker per method\n", service)
	fmt.Printf("that opens after 5 failed attempts in a row for %v and then lets 1 probe through.\n", recoveryTime)

	unary := func(msg string, f *echov1.Fault) (*echov1.UnaryResponse, error) {
		return client.Unary(ctx, &echov1.UnaryRequest{Message: msg, Fault: f})
	}
	unavailable := uint32(codes.Unavailable)

	// 1. Transient failures.
	d.step(1, "Transient failures are retried with backoff")
	d.logf("call Unary(\"hello\"); the server fails its first 2 attempts with UNAVAILABLE")
	resp, err := unary("hello", &echov1.Fault{Code: unavailable, Key: "transient", FailAttempts: 2})
	d.expect(err == nil, "the call failed: %v", err)
	d.logf("ok: %q, the server saw %d previous attempts", resp.GetMessage(), resp.GetPreviousAttempts())
	d.expect(srv.Attempts("transient") == 3, "the server saw %d attempts, want 3", srv.Attempts("transient"))
	d.mu.Lock()
	d.cache["hello"] = resp.GetMessage()
	d.mu.Unlock()

	// 2. Pushback.
	d.step(2, "A server pushback is honoured")
	d.logf("call Unary(\"hello\"); the server fails once with grpc-retry-pushback-ms: 150")
	t0 := time.Now()
	resp, err = unary("hello", &echov1.Fault{Code: unavailable, Key: "pushback", FailAttempts: 1, Pushback: []string{"150"}})
	d.expect(err == nil, "the call failed: %v", err)
	waited := time.Since(t0)
	d.logf("ok: %q after waiting the 150ms the server asked for", resp.GetMessage())
	d.expect(waited >= 150*time.Millisecond, "the retry came after %v, before the pushback", waited)

	// 3. Outage.
	d.step(3, "An outage opens the breaker; calls then fail fast")
	srv.SetDown(true)
	d.logf("the server goes down: every attempt fails with UNAVAILABLE")
	for i := 1; i <= 2; i++ {
		_, err = unary("ping", nil)
		d.logf("call %d failed: %s", i, status.Convert(err).Message())
	}
	d.expect(errors.Is(err, breaker.ErrOpen), "the breaker did not end the second call: %v", err)
	d.expect(slices.Equal(d.transitionLog(), []string{"closed -> open"}), "transitions %v", d.transitionLog())
	reached := srv.Calls(echoserver.Unary)
	t0 = time.Now()
	var rejected int
	for range 5 {
		if _, err = unary("ping", nil); errors.Is(err, breaker.ErrOpen) && status.Code(err) == codes.Unavailable {
			rejected++
		}
	}
	d.logf("5 more calls: %d rejected locally in %v, the server saw %d of them", rejected,
		time.Since(t0).Round(time.Microsecond), srv.Calls(echoserver.Unary)-reached)
	d.logf("the rejection: %s", status.Convert(err).Message())
	d.expect(rejected == 5 && srv.Calls(echoserver.Unary) == reached, "calls were not all rejected locally")

	// 4. Fallback.
	d.step(4, "A cached fallback answers while the circuit is open")
	resp, err = unary("hello", nil)
	d.expect(err == nil, "the fallback did not answer: %v", err)
	d.logf("call Unary(\"hello\"): ok: %q", resp.GetMessage())

	// 5. Recovery.
	d.step(5, "Half-open probing and recovery")
	srv.SetDown(false)
	d.logf("the server is back; the breaker waits out its open time")
	time.Sleep(recoveryTime)
	// The breaker's timer moves it to half-open; on a loaded machine it may
	// run a little late, so wait for it (generously) rather than guess.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if slices.Contains(d.transitionLog(), "open -> half-open") {
			break
		}
	}
	resp, err = unary("hello", nil)
	d.expect(err == nil, "the probe failed: %v", err)
	d.logf("call Unary(\"hello\"): the probe: ok: %q", resp.GetMessage())
	want := []string{"closed -> open", "open -> half-open", "half-open -> closed"}
	d.expect(slices.Equal(d.transitionLog(), want), "transitions %v, want %v", d.transitionLog(), want)

	// 6. Client stream.
	d.step(6, "A client stream is retried by replaying its messages")
	d.logf("send a, b, c; the server fails the first attempt after receiving 2 messages")
	stream, err := client.ClientStream(ctx)
	if err != nil {
		return err
	}
	msgs := []string{"a", "b", "c"}
	for i, m := range msgs {
		req := &echov1.ClientStreamRequest{Message: m}
		if i == 0 {
			req.Fault = &echov1.Fault{Code: unavailable, Key: "stream", FailAttempts: 1, AfterMessages: 2}
		}
		if err := stream.Send(req); err != nil {
			return fmt.Errorf("send %s: %w", m, err)
		}
	}
	sresp, err := stream.CloseAndRecv()
	d.expect(err == nil, "the stream failed: %v", err)
	got := srv.Received("stream")
	d.logf("ok: the server answered %v; its successful attempt received %v", sresp.GetMessages(), got)
	d.expect(slices.Equal(sresp.GetMessages(), msgs) && len(got) == 1 && slices.Equal(got[0], msgs),
		"messages lost, duplicated or reordered")
	d.expect(srv.Attempts("stream") == 2, "the server saw %d stream attempts, want 2", srv.Attempts("stream"))
	return nil
}
