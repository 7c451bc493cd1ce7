package config_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/khive/grpc-resilience/config"
	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
)

// These tests give one document to grpc-go alone (its native retry, its
// service config) and to this package, and compare what the server sees.

// echoClient dials srv over bufconn with opts; it must run in the test's
// synctest bubble.
func echoClient(t *testing.T, srv *echoserver.Server, opts ...grpc.DialOption) echov1.EchoServiceClient {
	t.Helper()
	cc, closeAll, err := echoserver.Bufconn(srv, opts...)
	require.NoError(t, err)
	t.Cleanup(closeAll)
	return echov1.NewEchoServiceClient(cc)
}

// suiteOptions builds the dial options of a suite made from doc.
func suiteOptions(t *testing.T, doc string, opts ...config.Option) []grpc.DialOption {
	t.Helper()
	cfg, err := config.Load([]byte(doc), config.JSON, opts...)
	require.NoError(t, err)
	suite, err := cfg.NewSuite()
	require.NoError(t, err)
	return suite.DialOptions()
}

// TestMaxAttemptsCappedAsGRPC: maxAttempts above 5 counts as 5, as in
// grpc-go; WithMaxAttempts raises the cap as grpc.WithMaxCallAttempts does.
func TestMaxAttemptsCappedAsGRPC(t *testing.T) {
	const doc = `{"methodConfig": [{"name": [{"service": "khive.echo.v1.EchoService"}],
	  "retryPolicy": {"maxAttempts": 7, "initialBackoff": "0.01s", "maxBackoff": "0.01s", "backoffMultiplier": 1,
	    "retryableStatusCodes": ["UNAVAILABLE"]}}]}`
	for _, tc := range []struct {
		name      string
		cap, want int
	}{{"default", 0, 5}, {"raised", 7, 7}, {"raised beyond", 10, 7}, {"lowered", 3, 3}} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				grpcOpts := []grpc.DialOption{grpc.WithDefaultServiceConfig(doc)}
				var cfgOpts []config.Option
				if tc.cap > 0 {
					grpcOpts = append(grpcOpts, grpc.WithMaxCallAttempts(tc.cap))
					cfgOpts = append(cfgOpts, config.WithMaxAttempts(tc.cap))
				}
				srv := echoserver.New(1)
				for key, opts := range map[string][]grpc.DialOption{"grpc": grpcOpts, "suite": suiteOptions(t, doc, cfgOpts...)} {
					_, err := echoClient(t, srv, opts...).Unary(t.Context(), &echov1.UnaryRequest{
						Fault: &echov1.Fault{Code: uint32(codes.Unavailable), Key: key}})
					require.Error(t, err)
				}
				assert.Equal(t, tc.want, srv.Attempts("grpc"), "grpc-go")
				assert.Equal(t, tc.want, srv.Attempts("suite"), "suite")
			})
		})
	}
	_, err := config.Load([]byte(doc), config.JSON, config.WithMaxAttempts(1))
	assert.ErrorContains(t, err, "WithMaxAttempts: must be at least 2, got 1")
}

// TestPerAttemptRecvTimeout: grpc's service_config.proto name loads, as does
// this library's own, perAttemptTimeout; both at once is a duplicate.
func TestPerAttemptRecvTimeout(t *testing.T) {
	const retry = `"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14]`
	doc := func(fields string) []byte {
		return []byte(`{"methodConfig": [{"name": [{}], "retryPolicy": {` + retry + fields + `}}]}`)
	}
	for _, name := range []string{"perAttemptRecvTimeout", "perAttemptTimeout", "PerAttemptRecvTimeout"} {
		c, err := config.LoadJSON(doc(`, "` + name + `": "0.25s"`))
		require.NoError(t, err, name)
		assert.Equal(t, "250ms", c.Policies["*"].Retry.AttemptTimeout.String(), name)
	}
	_, err := config.LoadJSON(doc(`, "perAttemptRecvTimeout": "1s", "perAttemptTimeout": "1s"`))
	assert.ErrorContains(t, err, `methodConfig[0].retryPolicy.perAttemptTimeout: duplicate field (also written as "perAttemptRecvTimeout")`)
}

// TestUnsupportedFields: a field nothing applies is listed in Ignored and
// logged as a warning when the document loads, or is an error with
// WithStrict.
func TestUnsupportedFields(t *testing.T) {
	const doc = `{"methodConfig": [{"name": [{}], "hedgingPolicy": {"maxAttempts": 3}}], "connectionScaling": {"x": 1}}`
	var logged []string
	logger := logging.LoggerFunc(func(_ context.Context, level logging.Level, msg string, fields ...any) {
		assert.Equal(t, logging.LevelWarn, level)
		assert.Equal(t, "config.field", fields[0])
		logged = append(logged, fields[1].(string))
	})
	c, err := config.Load([]byte(doc), config.JSON, config.WithLogger(logger))
	require.NoError(t, err)
	want := []string{"connectionScaling"} // hedgingPolicy is applied
	assert.ElementsMatch(t, want, c.Ignored)
	assert.ElementsMatch(t, want, logged)

	_, err = config.Load([]byte(doc), config.JSON, config.WithStrict())
	assert.EqualError(t, err, "config: connectionScaling: not supported by this library (strict loading)")
}

// dialBoth returns a client made by grpc-go alone from doc (its native
// retry included) and one made by the suite from the same doc with
// Config.DialOptions, both to srv.
func dialBoth(t *testing.T, srv *echoserver.Server, doc string, dial ...grpc.DialOption) map[string]echov1.EchoServiceClient {
	t.Helper()
	cfg, err := config.LoadJSON([]byte(doc))
	require.NoError(t, err)
	suite, err := cfg.NewSuite()
	require.NoError(t, err)
	return map[string]echov1.EchoServiceClient{
		"grpc":  echoClient(t, srv, append(dial, grpc.WithDefaultServiceConfig(doc))...),
		"suite": echoClient(t, srv, append(append(dial, cfg.DialOptions()...), suite.DialOptions()...)...),
	}
}

// TestDialOptionsTimeout: the methodConfig's timeout is the call's deadline
// (the earlier of the caller's and the config's), retries included, as with
// grpc-go alone: a 3 s call fails with DEADLINE_EXCEEDED after 2 s, a 1 s
// call succeeds, and retries stop at the deadline.
func TestDialOptionsTimeout(t *testing.T) {
	const doc = `{"methodConfig": [{"name": [{"service": "khive.echo.v1.EchoService"}], "timeout": "2s",
	  "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "0.1s", "backoffMultiplier": 1,
	    "retryableStatusCodes": ["UNAVAILABLE"]}}]}`
	for _, tc := range []struct {
		name    string
		fault   *echov1.Fault
		code    codes.Code
		elapsed time.Duration
	}{
		{"slow", &echov1.Fault{DelayMs: 3000}, codes.DeadlineExceeded, 2 * time.Second},
		{"fast enough", &echov1.Fault{DelayMs: 1000}, codes.OK, time.Second},
		{"retries stop at the deadline", &echov1.Fault{DelayMs: 1500, Code: uint32(codes.Unavailable)}, codes.DeadlineExceeded, 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
				defer cancel()
				for who, client := range dialBoth(t, echoserver.New(1), doc) {
					start := time.Now()
					_, err := client.Unary(ctx, &echov1.UnaryRequest{Message: "m", Fault: tc.fault})
					assert.Equal(t, tc.code, status.Code(err), "%s: %v", who, err)
					assert.Equal(t, tc.elapsed, time.Since(start), who)
				}
			})
		})
	}
}

// TestDialOptionsTimeoutStream: the timeout bounds a stream as it bounds a
// unary call, as with grpc-go alone.
func TestDialOptionsTimeoutStream(t *testing.T) {
	const doc = `{"methodConfig": [{"name": [{"service": "khive.echo.v1.EchoService"}], "timeout": "2s"}]}`
	synctest.Test(t, func(t *testing.T) {
		for who, client := range dialBoth(t, echoserver.New(1), doc) {
			start := time.Now()
			st, err := client.ServerStream(t.Context(), &echov1.ServerStreamRequest{Message: "m", Count: 2, Fault: &echov1.Fault{DelayMs: 3000}})
			require.NoError(t, err, who)
			_, err = st.Recv()
			assert.Equal(t, codes.DeadlineExceeded, status.Code(err), "%s: %v", who, err)
			assert.Equal(t, 2*time.Second, time.Since(start), who)
		}
	})
}

// TestDialOptionsGRPCFields: waitForReady and the message size limits have
// grpc-go's effect: a call waits for a connection that never comes until
// its deadline (DEADLINE_EXCEEDED, not UNAVAILABLE), and a reply larger than
// maxResponseMessageBytes fails with RESOURCE_EXHAUSTED.
func TestDialOptionsGRPCFields(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		down := grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return nil, errors.New("down") })
		for _, tc := range []struct {
			doc  string
			want codes.Code
		}{
			{`{"methodConfig": [{"name": [{}], "waitForReady": true}]}`, codes.DeadlineExceeded},
			{`{"methodConfig": [{"name": [{}], "waitForReady": false}]}`, codes.Unavailable},
		} {
			for who, client := range dialBoth(t, echoserver.New(1), tc.doc, down) {
				ctx, cancel := context.WithTimeout(t.Context(), time.Second)
				_, err := client.Unary(ctx, &echov1.UnaryRequest{Message: "m"})
				cancel()
				assert.Equal(t, tc.want, status.Code(err), "%s %s: %v", who, tc.doc, err)
			}
		}
		const limit = `{"methodConfig": [{"name": [{}], "maxResponseMessageBytes": 64, "maxRequestMessageBytes": 1024}]}`
		for who, client := range dialBoth(t, echoserver.New(1), limit) {
			_, err := client.Unary(t.Context(), &echov1.UnaryRequest{Message: strings.Repeat("m", 100)})
			assert.Equal(t, codes.ResourceExhausted, status.Code(err), "%s: %v", who, err)
			_, err = client.Unary(t.Context(), &echov1.UnaryRequest{Message: strings.Repeat("m", 2000)})
			assert.Equal(t, codes.ResourceExhausted, status.Code(err), "%s: %v", who, err)
			_, err = client.Unary(t.Context(), &echov1.UnaryRequest{Message: "m"})
			assert.NoError(t, err, who)
		}
	})
}
