package interceptors_test

import (
	"context"
	"io"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
)

// streamBenchClients returns an echo client over bufconn without the suite
// (grpc.WithDisableRetry only) and one with the suite's default policy for
// every method.
func streamBenchClients(b *testing.B) (plain, suite echov1.EchoServiceClient) {
	b.Helper()
	s, err := interceptors.New(map[string]interceptors.Policy{"*": {}})
	require.NoError(b, err)
	srv := echoserver.New(1)
	cc1, stop1, err := echoserver.Bufconn(srv, grpc.WithDisableRetry())
	require.NoError(b, err)
	b.Cleanup(stop1)
	cc2, stop2, err := echoserver.Bufconn(srv, s.DialOptions()...)
	require.NoError(b, err)
	b.Cleanup(stop2)
	return echov1.NewEchoServiceClient(cc1), echov1.NewEchoServiceClient(cc2)
}

// serverStreamOnce reads a 10-message server stream to its end.
func serverStreamOnce(ctx context.Context, c echov1.EchoServiceClient, req *echov1.ServerStreamRequest) error {
	st, err := c.ServerStream(ctx, req)
	if err != nil {
		return err
	}
	for {
		if _, err := st.Recv(); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
	}
}

// bidiEchoOnce sends 10 messages on a bidi stream, each after the previous
// echo, then closes it and reads its end.
func bidiEchoOnce(ctx context.Context, c echov1.EchoServiceClient, req *echov1.BidiStreamRequest) error {
	bs, err := c.BidiStream(ctx)
	if err != nil {
		return err
	}
	for range 10 {
		if err := bs.Send(req); err != nil {
			return err
		}
		if _, err := bs.Recv(); err != nil {
			return err
		}
	}
	if err := bs.CloseSend(); err != nil {
		return err
	}
	if _, err := bs.Recv(); err != io.EOF {
		return err
	}
	return nil
}

// BenchmarkStreamServerStreamEndToEnd compares a 10-message server stream
// over bufconn without and with the suite; the allocs/op difference is the
// interceptor's.
func BenchmarkStreamServerStreamEndToEnd(b *testing.B) {
	plain, suite := streamBenchClients(b)
	req := &echov1.ServerStreamRequest{Message: "hello", Count: 10}
	for _, c := range []struct {
		name   string
		client echov1.EchoServiceClient
	}{{"plain", plain}, {"suite", suite}} {
		b.Run(c.name, func(b *testing.B) {
			ctx := b.Context()
			b.ReportAllocs()
			for b.Loop() {
				if err := serverStreamOnce(ctx, c.client, req); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(c.name+"/parallel", func(b *testing.B) {
			ctx := b.Context()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := serverStreamOnce(ctx, c.client, req); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkStreamBidiEcho compares a bidi stream of 10 echoed messages over
// bufconn without and with the suite.
func BenchmarkStreamBidiEcho(b *testing.B) {
	plain, suite := streamBenchClients(b)
	req := &echov1.BidiStreamRequest{Message: "hello"}
	for _, c := range []struct {
		name   string
		client echov1.EchoServiceClient
	}{{"plain", plain}, {"suite", suite}} {
		b.Run(c.name, func(b *testing.B) {
			ctx := b.Context()
			b.ReportAllocs()
			for b.Loop() {
				if err := bidiEchoOnce(ctx, c.client, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// echoStream is a grpc.ClientStream that never blocks: RecvMsg succeeds
// left times, then returns io.EOF.
type echoStream struct {
	grpc.ClientStream
	left int
}

func (s *echoStream) SendMsg(any) error { return nil }
func (s *echoStream) CloseSend() error  { return nil }
func (s *echoStream) RecvMsg(any) error {
	if s.left == 0 {
		return io.EOF
	}
	s.left--
	return nil
}

// BenchmarkStreamInterceptorOverhead measures the interceptor alone, on a
// stream that does nothing: open, one request, CloseSend, ten messages and
// the end (server streaming), ten sends and receives (bidi), or ten sends,
// each kept for replay until the response, then the response (client
// streaming).
func BenchmarkStreamInterceptorOverhead(b *testing.B) {
	s, err := interceptors.New(map[string]interceptors.Policy{"*": {}})
	require.NoError(b, err)
	stream := s.Stream()
	var inner echoStream
	streamer := func(context.Context, *grpc.StreamDesc, *grpc.ClientConn, string, ...grpc.CallOption) (grpc.ClientStream, error) {
		inner.left = 10
		return &inner, nil
	}
	req := &echov1.BidiStreamRequest{Message: "hello"}
	var resp echov1.BidiStreamResponse
	for _, c := range []struct {
		name string
		desc *grpc.StreamDesc
	}{
		{"server-stream", &grpc.StreamDesc{ServerStreams: true}},
		{"bidi", &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}},
		{"client-stream", &grpc.StreamDesc{ClientStreams: true}},
	} {
		b.Run(c.name, func(b *testing.B) {
			ctx := b.Context()
			b.ReportAllocs()
			for b.Loop() {
				cs, err := stream(ctx, c.desc, nil, "/x.Y/Z", streamer, grpc.StaticMethod())
				if err != nil {
					b.Fatal(err)
				}
				switch {
				case !c.desc.ServerStreams: // ten sends kept for replay (encoded), then the response
					for range 10 {
						_ = cs.SendMsg(req)
					}
					_ = cs.CloseSend()
					_ = cs.RecvMsg(&resp)
				case c.desc.ClientStreams:
					for range 10 {
						_ = cs.SendMsg(req)
						_ = cs.RecvMsg(&resp)
					}
					_ = cs.CloseSend()
				default:
					_ = cs.SendMsg(req)
					_ = cs.CloseSend()
					for range 10 {
						_ = cs.RecvMsg(&resp)
					}
				}
				if err := cs.RecvMsg(&resp); err != io.EOF {
					b.Fatal(err)
				}
			}
		})
	}
}
