// Package echoserver is a fault-injecting implementation of khive.echo.v1.EchoService
// for tests and examples. Every request may carry an echov1.Fault that makes the
// server fail with a status code, after a delay, after some stream messages,
// with grpc-retry-pushback-ms trailers or a google.rpc.RetryInfo detail, after
// sending response headers, only for the first attempts of a key, or at random.
// The server counts the attempts it sees per method and per key, so tests can
// check what reached it.
package echoserver

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"

	echov1 "github.com/khive/grpc-resilience/internal/echov1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/khive/grpc-resilience/retry"
)

// Method names as the server counts them.
const (
	Unary        = "Unary"
	ServerStream = "ServerStream"
	ClientStream = "ClientStream"
	BidiStream   = "BidiStream"
)

// Server implements echov1.EchoServiceServer. The zero value is not usable;
// use New.
type Server struct {
	echov1.UnimplementedEchoServiceServer

	mu       sync.Mutex
	rng      *rand.Rand
	calls    map[string]int
	attempts map[string]int
	received map[string][][]string
	down     bool
}

// New returns a server whose random faults (Fault.fail_probability) draw from
// a generator seeded with seed, so a run can be repeated.
func New(seed uint64) *Server {
	return &Server{
		rng:      rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		calls:    make(map[string]int),
		attempts: make(map[string]int),
		received: make(map[string][][]string),
	}
}

// Calls reports how many RPC attempts of method (Unary, ServerStream, ...)
// reached the server.
func (s *Server) Calls(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[method]
}

// Attempts reports how many attempts carried a Fault with this key.
func (s *Server) Attempts(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts[key]
}

// Received returns, for each client- or bidi-stream attempt with this fault
// key that ended without a fault, the messages it received in order.
func (s *Server) Received(key string) [][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]string(nil), s.received[key]...)
}

// SetDown makes every attempt of every method fail with UNAVAILABLE (an
// outage) until SetDown(false).
func (s *Server) SetDown(down bool) {
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
}

// begin counts an attempt of method and decides whether fault f applies to it.
func (s *Server) begin(method string, f *echov1.Fault) (fail, down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[method]++
	if s.down {
		return false, true
	}
	if f == nil || f.GetCode() == 0 {
		if f.GetKey() != "" {
			s.attempts[f.GetKey()]++
		}
		return false, false
	}
	fail = true
	if f.GetKey() != "" {
		s.attempts[f.GetKey()]++
		if f.GetFailAttempts() > 0 && s.attempts[f.GetKey()] > int(f.GetFailAttempts()) {
			fail = false
		}
	}
	if fail && f.GetFailProbability() > 0 {
		fail = s.rng.Float64() < f.GetFailProbability()
	}
	return fail, false
}

func (s *Server) record(key string, msgs []string) {
	if key == "" {
		return
	}
	s.mu.Lock()
	s.received[key] = append(s.received[key], msgs)
	s.mu.Unlock()
}

var errDown = status.Error(codes.Unavailable, "echoserver: down")

// wait sleeps for the fault's delay, or until ctx ends: then it returns
// the context's status.
func wait(ctx context.Context, f *echov1.Fault) error {
	d := time.Duration(f.GetDelayMs()) * time.Millisecond
	if d <= 0 {
		return nil
	}
	if err := retry.Wait(ctx, d); err != nil {
		return status.FromContextError(err).Err()
	}
	return nil
}

// failure builds the fault's status error and sets its trailers and headers.
func failure(ctx context.Context, f *echov1.Fault) error {
	if err := wait(ctx, f); err != nil {
		return err
	}
	if f.GetSendHeader() {
		_ = grpc.SendHeader(ctx, metadata.Pairs("x-echo-header", "sent"))
	}
	if len(f.GetPushback()) > 0 {
		_ = grpc.SetTrailer(ctx, metadata.MD{"grpc-retry-pushback-ms": f.GetPushback()})
	}
	msg := f.GetMessage()
	if msg == "" {
		msg = "echoserver: injected fault"
	}
	st := status.New(codes.Code(f.GetCode()), msg)
	if f.GetHasRetryInfo() {
		d := time.Duration(f.GetRetryInfoMs()) * time.Millisecond
		if withInfo, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(d)}); err == nil {
			st = withInfo
		}
	}
	return st.Err()
}

// previousAttempts reads grpc-previous-rpc-attempts from the incoming metadata.
func previousAttempts(ctx context.Context) int32 {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("grpc-previous-rpc-attempts")
	if len(vals) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(vals[len(vals)-1])
	return int32(n)
}

// Unary echoes the message or fails as the fault asks.
func (s *Server) Unary(ctx context.Context, req *echov1.UnaryRequest) (*echov1.UnaryResponse, error) {
	fail, down := s.begin(Unary, req.GetFault())
	if down {
		return nil, errDown
	}
	if fail {
		return nil, failure(ctx, req.GetFault())
	}
	if err := wait(ctx, req.GetFault()); err != nil {
		return nil, err
	}
	return &echov1.UnaryResponse{Message: req.GetMessage(), PreviousAttempts: previousAttempts(ctx)}, nil
}

// ServerStream sends req.count messages; a failing fault stops the stream
// after fault.after_messages of them.
func (s *Server) ServerStream(req *echov1.ServerStreamRequest, stream grpc.ServerStreamingServer[echov1.ServerStreamResponse]) error {
	ctx := stream.Context()
	fail, down := s.begin(ServerStream, req.GetFault())
	if down {
		return errDown
	}
	n := req.GetCount()
	if fail {
		n = min(n, req.GetFault().GetAfterMessages())
	} else if err := wait(ctx, req.GetFault()); err != nil {
		return err
	}
	for i := range n {
		if err := stream.Send(&echov1.ServerStreamResponse{Message: req.GetMessage(), Index: i}); err != nil {
			return err
		}
	}
	if fail {
		return failure(ctx, req.GetFault())
	}
	return nil
}

// ClientStream collects messages until the client closes, then answers with
// all of them. The fault comes from the first message; a failing fault ends
// the stream once fault.after_messages messages (at least the first) arrived.
func (s *Server) ClientStream(stream grpc.ClientStreamingServer[echov1.ClientStreamRequest, echov1.ClientStreamResponse]) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		s.begin(ClientStream, nil)
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&echov1.ClientStreamResponse{PreviousAttempts: previousAttempts(ctx)})
		}
		return err
	}
	f := first.GetFault()
	fail, down := s.begin(ClientStream, f)
	if down {
		return errDown
	}
	msgs := []string{first.GetMessage()}
	for {
		if fail && len(msgs) >= max(1, int(f.GetAfterMessages())) {
			return failure(ctx, f)
		}
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		msgs = append(msgs, req.GetMessage())
	}
	if fail {
		return failure(ctx, f)
	}
	if err := wait(ctx, f); err != nil {
		return err
	}
	s.record(f.GetKey(), msgs)
	return stream.SendAndClose(&echov1.ClientStreamResponse{Messages: msgs, PreviousAttempts: previousAttempts(ctx)})
}

// BidiStream echoes every message. The fault comes from the first message; a
// failing fault makes the server read fault.after_messages messages (at least
// the first) without answering, then fail.
func (s *Server) BidiStream(stream grpc.BidiStreamingServer[echov1.BidiStreamRequest, echov1.BidiStreamResponse]) error {
	ctx := stream.Context()
	req, err := stream.Recv()
	if err != nil {
		s.begin(BidiStream, nil)
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	f := req.GetFault()
	fail, down := s.begin(BidiStream, f)
	if down {
		return errDown
	}
	if fail {
		for n := 1; n < int(f.GetAfterMessages()); n++ {
			if _, err := stream.Recv(); err != nil {
				break
			}
		}
		return failure(ctx, f)
	}
	if err := wait(ctx, f); err != nil {
		return err
	}
	var msgs []string
	for i := int32(0); ; i++ {
		msgs = append(msgs, req.GetMessage())
		if err := stream.Send(&echov1.BidiStreamResponse{Message: req.GetMessage(), Index: i}); err != nil {
			return err
		}
		req, err = stream.Recv()
		if errors.Is(err, io.EOF) {
			s.record(f.GetKey(), msgs)
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// Serve serves s on lis in a new goroutine and returns a function that stops
// the server and waits for that goroutine.
func Serve(s *Server, lis net.Listener, opts ...grpc.ServerOption) (stop func()) {
	gs := grpc.NewServer(opts...)
	echov1.RegisterEchoServiceServer(gs, s)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	return func() {
		gs.Stop()
		<-done
	}
}

// Bufconn serves s on an in-memory listener and returns a client connection
// to it (with opts added to the dial options) and a function that closes
// both. The connection uses insecure credentials.
func Bufconn(s *Server, opts ...grpc.DialOption) (*grpc.ClientConn, func(), error) {
	lis := bufconn.Listen(1 << 20)
	stop := Serve(s, lis)
	dial := []grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}
	cc, err := grpc.NewClient("passthrough:///bufnet", append(dial, opts...)...)
	if err != nil {
		stop()
		return nil, nil, err
	}
	return cc, func() { _ = cc.Close(); stop() }, nil
}

// Loopback serves s on a TCP listener on 127.0.0.1 and returns a client
// connection to it and a function that closes both.
func Loopback(s *Server, opts ...grpc.DialOption) (*grpc.ClientConn, func(), error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	stop := Serve(s, lis)
	dial := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	cc, err := grpc.NewClient(lis.Addr().String(), append(dial, opts...)...)
	if err != nil {
		stop()
		return nil, nil, err
	}
	return cc, func() { _ = cc.Close(); stop() }, nil
}
