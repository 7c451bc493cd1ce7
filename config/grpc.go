package config

import (
	"context"
	"encoding/json"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	resiliencev1 "github.com/khive/grpc-resilience/proto/khive/resilience/v1"
)

// DialOptions returns the dial options that apply the document's grpc
// fields the interceptors do not: timeout, by an interceptor that gives each
// call the earlier of its own deadline and the document's, as grpc does; and
// waitForReady, the message size limits, loadBalancingPolicy,
// loadBalancingConfig and healthCheckConfig, by grpc itself, as its default
// service config (grpc.WithDefaultServiceConfig, without retryPolicy and
// retryThrottling). Put them before the suite's, so that the timeout bounds
// the whole call, retries included:
//
//	grpc.NewClient(target, append(cfg.DialOptions(), suite.DialOptions()...)...)
//
// grpc uses a default service config only when the name resolver provides
// none, and applies healthCheckConfig only in a program that imports
// google.golang.org/grpc/health. The options keep this Config's values:
// Apply does not change them.
func (c *Config) DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithDefaultServiceConfig(c.grpcConfig),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			ctx, cancel := c.withTimeout(ctx, method)
			defer cancel()
			return invoker(ctx, method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			ctx, cancel := c.withTimeout(ctx, method)
			s, err := streamer(ctx, desc, cc, method, opts...)
			if err != nil {
				cancel()
				return nil, err
			}
			return &timedStream{s, desc.ServerStreams, cancel}, nil
		}),
	}
}

// withTimeout applies the timeout of the methodConfig that names method
// most specifically, as grpc picks it.
func (c *Config) withTimeout(ctx context.Context, method string) (context.Context, context.CancelFunc) {
	key := method
	if _, ok := c.Policies[key]; !ok {
		key = method[:strings.LastIndexByte(method, '/')+1] + "*"
		if _, ok := c.Policies[key]; !ok {
			key = "*"
		}
	}
	if d, ok := c.timeouts[key]; ok {
		return context.WithTimeout(ctx, d)
	}
	return ctx, func() {}
}

// timedStream releases its timeout's context when the stream ends: at an
// error or io.EOF, or at the reply of a call without a server stream.
type timedStream struct {
	grpc.ClientStream
	serverStreams bool
	cancel        context.CancelFunc
}

func (s *timedStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err != nil || !s.serverStreams {
		s.cancel()
	}
	return err
}

// grpcConfig returns the service config grpc applies for DialOptions.
func grpcConfig(doc *resiliencev1.ServiceConfig) string {
	type method struct {
		Name                    []*resiliencev1.MethodConfig_Name `json:"name"` // its json tags are grpc's
		WaitForReady            *bool                             `json:"waitForReady,omitempty"`
		MaxRequestMessageBytes  *int64                            `json:"maxRequestMessageBytes,omitempty"`
		MaxResponseMessageBytes *int64                            `json:"maxResponseMessageBytes,omitempty"`
	}
	type health struct {
		ServiceName string `json:"serviceName"`
	}
	var sc struct {
		LoadBalancingPolicy string              `json:"loadBalancingPolicy,omitempty"`
		LoadBalancingConfig *structpb.ListValue `json:"loadBalancingConfig,omitempty"`
		HealthCheckConfig   *health             `json:"healthCheckConfig,omitempty"`
		MethodConfig        []method            `json:"methodConfig,omitempty"`
	}
	sc.LoadBalancingPolicy, sc.LoadBalancingConfig = doc.GetLoadBalancingPolicy(), doc.GetLoadBalancingConfig()
	if h := doc.GetHealthCheckConfig(); h != nil {
		sc.HealthCheckConfig = &health{h.GetServiceName()}
	}
	for _, mc := range doc.GetMethodConfig() {
		m := method{mc.GetName(), mc.WaitForReady, mc.MaxRequestMessageBytes, mc.MaxResponseMessageBytes}
		if len(m.Name) > 0 && (m.WaitForReady != nil || m.MaxRequestMessageBytes != nil || m.MaxResponseMessageBytes != nil) {
			sc.MethodConfig = append(sc.MethodConfig, m)
		}
	}
	b, _ := json.Marshal(sc) // cannot fail: the document was read
	return string(b)
}
