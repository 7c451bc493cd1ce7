package resiliencetest

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"

	"github.com/khive/grpc-resilience/retry"
)

// PushbackTrailer is the trailer key of gRFC A6's server delay hint.
const PushbackTrailer = "grpc-retry-pushback-ms"

// Fault describes a failure, or a delay, and the calls it strikes.
type Fault struct {
	// Method selects the calls: a full method name ("/pkg.Service/Method"),
	// every method of a service ("/pkg.Service/*") or every method ("*").
	Method string

	// Probability is the chance that an eligible call is struck, drawn from
	// the Injector's generator; 0 means every eligible call is struck.
	Probability float64
	// FirstAttempts, if positive, makes only the first FirstAttempts calls of
	// each matching method eligible; later calls are not struck.
	FirstAttempts int

	// Code is the status code of the failure. OK makes a delay-only fault:
	// a struck call waits Delay, then reaches the handler.
	Code codes.Code
	// Message is the failure's status message; empty means
	// "resiliencetest: injected fault".
	Message string
	// Details are attached to the failure's status, for example
	// *errdetails.RetryInfo or *errdetails.ErrorInfo.
	Details []proto.Message
	// Delay holds a struck call this long, or until its context ends, before
	// it fails (or reaches the handler, for a delay-only fault).
	Delay time.Duration
	// Pushback sends the [PushbackTrailer] with the failure: a positive
	// value in whole milliseconds, a negative one as -1 ("do not retry").
	Pushback time.Duration
	// Header is sent as the response header before the failure, unless the
	// handler already sent one. A gRFC A6 client does not retry a call
	// once it has received a header.
	Header metadata.MD
	// Trailer is added, as given, to the failure's trailer: for hints
	// Pushback cannot express (a zero delay, several or malformed values).
	Trailer metadata.MD
	// AfterMessages lets a struck stream carry this many messages in each
	// direction: its next send or receive fails, and so does the stream if
	// the handler returns first. Unary calls ignore it.
	AfterMessages int
}

// Option configures an [Injector].
type Option interface{ apply(*options) }

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

type options struct {
	seed uint64
}

// WithSeed seeds the generator that decides probabilistic faults. Calls
// arriving in the same order then meet the same faults.
func WithSeed(seed uint64) Option {
	return optionFunc(func(o *options) { o.seed = seed })
}

// Injector holds a list of faults and injects them into the calls its
// server interceptors see. Its methods are safe for concurrent use.
//
// For each call, every fault whose Method matches counts it; the first of
// them in list order whose FirstAttempts and Probability make it strike
// applies, and a call no fault strikes reaches the handler untouched.
// During an outage ([Injector.SetOutage]) every call fails instead.
type Injector struct {
	faults []fault
	outage atomic.Bool

	mu       sync.Mutex
	rng      *rand.Rand
	calls    map[string]int
	injected map[string]int
	seen     []map[string]int // per fault: matching calls per method
}

// fault is a validated Fault.
type fault struct {
	all           bool
	exact, prefix string
	p             float64
	first         int
	st            *status.Status // nil for a delay-only fault
	delay         time.Duration
	header        metadata.MD
	trailer       metadata.MD
	after         int
}

var outage = &fault{st: status.New(codes.Unavailable, "resiliencetest: outage")}

// New returns an Injector for faults. It reports the first invalid field,
// as Faults[i].Field, and never panics.
func New(faults []Fault, opts ...Option) (*Injector, error) {
	o := options{seed: rand.Uint64()} // unless WithSeed
	for _, opt := range opts {
		opt.apply(&o)
	}
	in := &Injector{
		faults:   make([]fault, len(faults)),
		rng:      rand.New(rand.NewPCG(o.seed, o.seed^0x9e3779b97f4a7c15)),
		calls:    make(map[string]int),
		injected: make(map[string]int),
		seen:     make([]map[string]int, len(faults)),
	}
	for i, f := range faults {
		c, field, err := compile(f)
		if err != nil {
			return nil, fmt.Errorf("resiliencetest: Faults[%d].%s: %w", i, field, err)
		}
		in.faults[i] = c
		in.seen[i] = make(map[string]int)
	}
	return in, nil
}

// compile validates f; on error it names the field at fault.
func compile(f Fault) (fault, string, error) {
	var c fault
	switch svc, method, ok := strings.Cut(strings.TrimPrefix(f.Method, "/"), "/"); {
	case f.Method == "*":
		c.all = true
	case !strings.HasPrefix(f.Method, "/") || !ok || svc == "" || method == "" || strings.Contains(method, "/"):
		return c, "Method", fmt.Errorf(`%q is not "/pkg.Service/Method", "/pkg.Service/*" or "*"`, f.Method)
	case method == "*":
		c.prefix = "/" + svc + "/"
	default:
		c.exact = f.Method
	}
	switch {
	case math.IsNaN(f.Probability) || f.Probability < 0 || f.Probability > 1:
		return c, "Probability", fmt.Errorf("%v is not within [0, 1]", f.Probability)
	case f.FirstAttempts < 0:
		return c, "FirstAttempts", fmt.Errorf("%d is negative", f.FirstAttempts)
	case f.Code > codes.Unauthenticated:
		return c, "Code", fmt.Errorf("%d is not a gRPC status code", uint32(f.Code))
	case f.Delay < 0:
		return c, "Delay", fmt.Errorf("%v is negative", f.Delay)
	case f.Pushback > 0 && f.Pushback%time.Millisecond != 0:
		return c, "Pushback", fmt.Errorf("%v is not a whole number of milliseconds", f.Pushback)
	case f.AfterMessages < 0:
		return c, "AfterMessages", fmt.Errorf("%d is negative", f.AfterMessages)
	}
	c.p, c.first, c.delay, c.after = f.Probability, f.FirstAttempts, f.Delay, f.AfterMessages
	if f.Code == codes.OK {
		for _, unused := range []struct {
			field string
			set   bool
		}{
			{"Message", f.Message != ""}, {"Details", len(f.Details) > 0}, {"Pushback", f.Pushback != 0},
			{"Header", len(f.Header) > 0}, {"Trailer", len(f.Trailer) > 0}, {"AfterMessages", f.AfterMessages > 0},
		} {
			if unused.set {
				return c, unused.field, fmt.Errorf("needs a failure Code (Code is OK: a delay-only fault)")
			}
		}
		if f.Delay == 0 {
			return c, "Code", fmt.Errorf("is OK and Delay is 0: the fault does nothing")
		}
		return c, "", nil
	}
	msg := f.Message
	if msg == "" {
		msg = "resiliencetest: injected fault"
	}
	c.st = status.New(f.Code, msg)
	if len(f.Details) > 0 {
		details := make([]protoadapt.MessageV1, len(f.Details))
		for j, d := range f.Details {
			if d == nil {
				return c, fmt.Sprintf("Details[%d]", j), fmt.Errorf("is nil")
			}
			details[j] = protoadapt.MessageV1Of(d)
		}
		st, err := c.st.WithDetails(details...)
		if err != nil {
			return c, "Details", err
		}
		c.st = st
	}
	c.header = f.Header.Copy()
	c.trailer = f.Trailer.Copy()
	switch {
	case f.Pushback > 0:
		c.trailer = metadata.Join(c.trailer, metadata.Pairs(PushbackTrailer, fmt.Sprint(f.Pushback.Milliseconds())))
	case f.Pushback < 0:
		c.trailer = metadata.Join(c.trailer, metadata.Pairs(PushbackTrailer, "-1"))
	}
	return c, "", nil
}

func (f *fault) matches(method string) bool {
	return f.all || method == f.exact || (f.prefix != "" && strings.HasPrefix(method, f.prefix))
}

// SetOutage starts (true) or ends (false) an outage: while it lasts, every
// call the interceptors see fails with UNAVAILABLE before reaching the
// handler, whatever the faults say.
func (in *Injector) SetOutage(on bool) { in.outage.Store(on) }

// Calls reports how many calls of method (a full method name) the
// interceptors have seen.
func (in *Injector) Calls(method string) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.calls[method]
}

// Injected reports how many calls of method (a full method name) a fault or
// an outage has struck.
func (in *Injector) Injected(method string) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.injected[method]
}

// strike counts a call of method and returns the fault that strikes it, or
// nil.
func (in *Injector) strike(method string) *fault {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.calls[method]++
	var hit *fault
	if in.outage.Load() {
		hit = outage
	}
	for i := range in.faults {
		f := &in.faults[i]
		if !f.matches(method) {
			continue
		}
		in.seen[i][method]++
		if hit != nil || (f.first > 0 && in.seen[i][method] > f.first) {
			continue
		}
		if f.p == 0 || f.p == 1 || in.rng.Float64() < f.p {
			hit = f
		}
	}
	if hit != nil {
		in.injected[method]++
	}
	return hit
}

// Unary returns the unary server interceptor that injects the faults.
func (in *Injector) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		f := in.strike(info.FullMethod)
		if f == nil {
			return handler(ctx, req)
		}
		if f.st == nil {
			if err := sleep(ctx, f.delay); err != nil {
				return nil, err
			}
			return handler(ctx, req)
		}
		return nil, f.fail(ctx, func(md metadata.MD) error { return grpc.SendHeader(ctx, md) },
			func(md metadata.MD) { _ = grpc.SetTrailer(ctx, md) })
	}
}

// Stream returns the stream server interceptor that injects the faults.
func (in *Injector) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		f := in.strike(info.FullMethod)
		switch {
		case f == nil:
			return handler(srv, ss)
		case f.st == nil:
			if err := sleep(ss.Context(), f.delay); err != nil {
				return err
			}
			return handler(srv, ss)
		case f.after == 0:
			return f.fail(ss.Context(), ss.SendHeader, ss.SetTrailer)
		}
		fs := &faultStream{ServerStream: ss, f: f}
		_ = handler(srv, fs)
		return fs.fail()
	}
}

// fail waits the fault's delay (or until ctx ends), sends its header and
// sets its trailer with the call's sendHeader and setTrailer, and returns its
// status.
func (f *fault) fail(ctx context.Context, sendHeader func(metadata.MD) error, setTrailer func(metadata.MD)) error {
	if err := sleep(ctx, f.delay); err != nil {
		return err
	}
	if len(f.header) > 0 {
		_ = sendHeader(f.header.Copy())
	}
	if len(f.trailer) > 0 {
		setTrailer(f.trailer.Copy())
	}
	return f.st.Err()
}

// faultStream passes f.after messages each way, then fails.
type faultStream struct {
	grpc.ServerStream
	f          *fault
	sent, recv atomic.Int64
	struck     atomic.Bool
	once       sync.Once
	err        error
}

func (s *faultStream) SendMsg(m any) error {
	if s.struck.Load() || s.sent.Add(1) > int64(s.f.after) {
		return s.fail()
	}
	return s.ServerStream.SendMsg(m)
}

func (s *faultStream) RecvMsg(m any) error {
	if s.struck.Load() || s.recv.Add(1) > int64(s.f.after) {
		return s.fail()
	}
	return s.ServerStream.RecvMsg(m)
}

// fail strikes once; every later send, receive and the stream's end get the
// same error.
func (s *faultStream) fail() error {
	s.once.Do(func() {
		s.err = s.f.fail(s.Context(), s.ServerStream.SendHeader, s.ServerStream.SetTrailer)
		s.struck.Store(true)
	})
	return s.err
}

// sleep waits d or until ctx ends, whichever is first; then it returns the
// context's status.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	if err := retry.Wait(ctx, d); err != nil {
		return status.FromContextError(err).Err()
	}
	return nil
}
