// Package scenario runs the situations in which a circuit breaker can cost
// availability (a rolling restart, a partial failure, an overload brownout,
// an outage, a crowd at half-open, a reload during an outage) against a real
// grpc server, once with the suite's defaults and once with the breaker
// disabled, and measures both. The interceptors tests run it in synctest
// bubbles; examples/scenarios runs it on the real clock and prints the
// table of the README's "When the breaker acts".
package scenario

import (
	"context"
	"fmt"
	"hash/fnv"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
)

// Faults is a server interceptor that injects the scenarios' faults into
// every unary call. Its zero value injects nothing. It is safe for
// concurrent use.
type Faults struct {
	mu        sync.Mutex
	down      bool
	failFirst bool    // the first attempt of every call fails (UNAVAILABLE)
	callFailP float64 // each call fails, every attempt of it, with this probability
	capacity  float64 // calls served per second (0: unlimited); beyond it RESOURCE_EXHAUSTED
	tokens    float64
	last      time.Time

	attempts atomic.Int64 // attempts that reached the server
}

// Attempts returns the number of attempts that reached the server.
func (f *Faults) Attempts() int64 { return f.attempts.Load() }

// SetDown starts (true) or ends an outage: every attempt fails UNAVAILABLE.
func (f *Faults) SetDown(down bool) { f.mu.Lock(); f.down = down; f.mu.Unlock() }

// SetCapacity limits the server to c calls per second (a token bucket with
// 20 ms of burst); 0 removes the limit.
func (f *Faults) SetCapacity(c float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.capacity = c
	if f.last.IsZero() {
		f.tokens, f.last = c/50, time.Now()
	}
}

func (f *Faults) intercept(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	f.attempts.Add(1)
	md, _ := metadata.FromIncomingContext(ctx)
	retry := len(md.Get("grpc-previous-rpc-attempts")) > 0
	msg := req.(*echov1.UnaryRequest).GetMessage()
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.down:
		return nil, status.Error(codes.Unavailable, "down")
	case f.failFirst && !retry:
		return nil, status.Error(codes.Unavailable, "connection closing")
	case f.callFailP > 0 && hash(msg) < f.callFailP:
		return nil, status.Error(codes.Unavailable, "this call fails")
	case f.capacity > 0:
		now := time.Now()
		f.tokens = min(f.tokens+now.Sub(f.last).Seconds()*f.capacity, f.capacity/50)
		f.last = now
		if f.tokens < 1 {
			return nil, status.Error(codes.ResourceExhausted, "overloaded")
		}
		f.tokens--
	}
	return h(ctx, req)
}

// hash maps s to [0, 1), uniformly (FNV-1a, then splitmix64's finalizer:
// FNV alone is biased on short strings that differ in their last bytes).
func hash(s string) float64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(s))
	x := h.Sum64()
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	x ^= x >> 31
	return float64(x>>11) / (1 << 53)
}

// Env is a suite and a connection through it to an echo server with Faults.
type Env struct {
	Faults *Faults
	Suite  *interceptors.Suite
	Client echov1.EchoServiceClient
	Close  func()
}

// Policies returns the policy map of a scenario: the defaults, or the
// defaults with the breaker disabled.
func Policies(breakerOn bool) map[string]interceptors.Policy {
	if breakerOn {
		return map[string]interceptors.Policy{"*": {}}
	}
	return map[string]interceptors.Policy{"*": {Breaker: breaker.Config{Mode: breaker.Disabled}}}
}

// Start starts the server and connects to it over bufconn through a suite
// of policies.
func Start(policies map[string]interceptors.Policy, opts ...interceptors.Option) (*Env, error) {
	f := &Faults{}
	suite, err := interceptors.New(policies, opts...)
	if err != nil {
		return nil, err
	}
	lis := bufconn.Listen(1 << 20)
	stop := echoserver.Serve(echoserver.New(1), lis, grpc.UnaryInterceptor(f.intercept))
	dial := append([]grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}, suite.DialOptions()...)
	cc, err := grpc.NewClient("passthrough:///scenario", dial...)
	if err != nil {
		stop()
		return nil, err
	}
	return &Env{Faults: f, Suite: suite, Client: echov1.NewEchoServiceClient(cc), Close: func() { _ = cc.Close(); stop() }}, nil
}

// Load is a steady load: Callers goroutines, each making a call (with
// Timeout) then sleeping Interval, staggered evenly.
type Load struct {
	Callers  int
	Interval time.Duration
	Timeout  time.Duration
}

// Timeline counts calls and successes per Slice of a run, by the time each
// call started.
type Timeline struct {
	Slice     time.Duration
	OK, Calls []int
}

// Rate returns the share of the calls started in [from, to) that succeeded.
func (t Timeline) Rate(from, to time.Duration) float64 {
	ok, calls := t.sum(from, to)
	if calls == 0 {
		return 0
	}
	return float64(ok) / float64(calls)
}

// Goodput returns the successful calls per second started in [from, to).
func (t Timeline) Goodput(from, to time.Duration) float64 {
	ok, _ := t.sum(from, to)
	return float64(ok) / (to - from).Seconds()
}

// Recovery returns the first time t at or after from, in steps of Slice,
// such that the goodput over [t, t+span) is at least want calls per second,
// or -1 if there is none.
func (t Timeline) Recovery(from, span time.Duration, want float64) time.Duration {
	end := time.Duration(len(t.OK)) * t.Slice
	for at := from; at+span <= end; at += t.Slice {
		if t.Goodput(at, at+span) >= want {
			return at
		}
	}
	return -1
}

func (t Timeline) sum(from, to time.Duration) (ok, calls int) {
	for i := int(from / t.Slice); i < int(to/t.Slice) && i < len(t.Calls); i++ {
		ok, calls = ok+t.OK[i], calls+t.Calls[i]
	}
	return ok, calls
}

// Run applies load for dur and returns the timeline. script, if not nil, is
// called in its own goroutine at the start (to change the faults over time;
// Run waits for it).
func Run(e *Env, load Load, dur, slice time.Duration, script func()) Timeline {
	n := int(dur / slice)
	t := Timeline{Slice: slice, OK: make([]int, n), Calls: make([]int, n)}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	if script != nil {
		wg.Go(script)
	}
	var seq atomic.Int64
	for g := range load.Callers {
		wg.Go(func() {
			time.Sleep(load.Interval * time.Duration(g) / time.Duration(load.Callers))
			for {
				at := time.Since(start)
				if at >= dur {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), load.Timeout)
				_, err := e.Client.Unary(ctx, &echov1.UnaryRequest{Message: "c" + strconv.FormatInt(seq.Add(1), 10)})
				cancel()
				mu.Lock()
				t.Calls[at/slice]++
				if err == nil {
					t.OK[at/slice]++
				}
				mu.Unlock()
				time.Sleep(load.Interval)
			}
		})
	}
	wg.Wait()
	return t
}

// Row is one measure of one situation, with the breaker's defaults and with
// the breaker disabled.
type Row struct {
	Situation, Measure string
	Defaults, None     string
}

// Pct formats a share as a percentage.
func Pct(x float64) string { return fmt.Sprintf("%.1f%%", 100*x) }
