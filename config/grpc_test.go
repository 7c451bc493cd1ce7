package config

import (
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
)

// grpc-go is the reference for the service config half of the schema: these
// tests give the same documents to grpc-go's own parser (grpc.NewClient
// validates a default service config) and to Load.

// grpcParse returns grpc-go's verdict on doc as a service config.
func grpcParse(doc string) error {
	cc, err := grpc.NewClient("passthrough:///config-test",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(doc))
	if err != nil {
		return err
	}
	return cc.Close()
}

// grpcChecked reports whether grpc-go's verdict on a document Load accepted
// must be "valid": Load does not look into loadBalancingConfig (it hands it
// to grpc in DialOptions), which grpc-go parses against its registered
// balancers.
func grpcChecked(c *Config) bool {
	return !strings.Contains(c.grpcConfig, `"loadBalancingConfig"`)
}

// TestDocumentsAreGRPCServiceConfigs: every document Load accepts in these
// tests is also a valid grpc-go service config (our fields included:
// grpc-go ignores fields it does not know).
func TestDocumentsAreGRPCServiceConfigs(t *testing.T) {
	docs := []string{
		`{"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": "echo"},
		  "methodConfig": [{"name": [{"service": "a.B", "method": "M"}], "waitForReady": true, "timeout": "2.5s",
		    "retryPolicy": {"maxAttempts": 4, "initialBackoff": ".5s", "maxBackoff": "10.s", "backoffMultiplier": 2,
		      "retryableStatusCodes": ["UNAVAILABLE", 4, "CANCELLED"]}}],
		  "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}`,
		retryDoc(validRetry + `, "jitter": "full", "perAttemptTimeout": "1s", "minAttemptTime": "0.01s", "maxPushback": "3s"`),
		breakerDoc(`"mode": "metrics-only", "consecutiveFailures": 0, "failureStatusCodes": ["INTERNAL", 14]`),
		`{"retryBudget": {"ratio": 0.5, "window": "1s"}}`,
		// As grpc-go's own tests write it: field names in another case.
		`{"methodConfig": [{"name": [{"service": "grpc.testing.TestService"}], "waitForReady": true,
		  "retryPolicy": {"MaxAttempts": 4, "InitialBackoff": ".01s", "MaxBackoff": ".01s", "BackoffMultiplier": 1.0,
		    "RetryableStatusCodes": [ "UNAVAILABLE" ]}}], "RetryThrottling": {"maxTokens": 10, "TOKENRATIO": 0.5}}`,
	}
	for _, s := range fuzzSeeds {
		if _, err := LoadJSON([]byte(s)); err == nil {
			docs = append(docs, s)
		}
	}
	require.Greater(t, len(docs), 6)
	for _, doc := range docs {
		_, err := LoadJSON([]byte(doc))
		require.NoError(t, err, doc)
		assert.NoError(t, grpcParse(doc), doc)
	}
}

// TestGRPCRejectsWhatWeRejectAsGRPCDoes: the rules that mirror grpc-go's
// service config checks reject the same documents in both. (grpc-go checks
// retryThrottling only when the document has a methodConfig, even an empty
// one; Load always checks it.)
func TestGRPCRejectsWhatWeRejectAsGRPCDoes(t *testing.T) {
	for _, doc := range []string{
		retryDoc(strings.Replace(validRetry, `"maxAttempts": 3`, `"maxAttempts": 1`, 1)),
		retryDoc(strings.Replace(validRetry, `"maxAttempts": 3, `, ``, 1)),
		retryDoc(strings.Replace(validRetry, `"0.1s"`, `"0s"`, 1)),
		retryDoc(strings.Replace(validRetry, `"initialBackoff": "0.1s", `, ``, 1)),
		retryDoc(strings.Replace(validRetry, `"1s"`, `"-1s"`, 1)),
		retryDoc(strings.Replace(validRetry, `"backoffMultiplier": 2`, `"backoffMultiplier": 0`, 1)),
		retryDoc(strings.Replace(validRetry, `["UNAVAILABLE"]`, `[]`, 1)),
		retryDoc(strings.Replace(validRetry, `["UNAVAILABLE"]`, `["unavailable"]`, 1)),
		retryDoc(strings.Replace(validRetry, `["UNAVAILABLE"]`, `[17]`, 1)),
		retryDoc(strings.Replace(validRetry, `["UNAVAILABLE"]`, `[14.0]`, 1)),
		retryDoc(strings.Replace(validRetry, `"maxAttempts": 3`, `"maxAttempts": 2.5`, 1)),
		retryDoc(strings.Replace(validRetry, `"0.1s"`, `"100ms"`, 1)),
		`{"methodConfig": [{"name": [{"method": "M"}]}]}`,
		`{"methodConfig": [{"name": [{"service": "a.B"}]}, {"name": [{"service": "a.B"}]}]}`,
		`{"methodConfig": [], "retryThrottling": {"maxTokens": 0, "tokenRatio": 0.1}}`,
		`{"methodConfig": [], "retryThrottling": {"maxTokens": 1001, "tokenRatio": 0.1}}`,
		`{"methodConfig": [], "retryThrottling": {"maxTokens": 10, "tokenRatio": 0}}`,
		`{"methodConfig": [{"name": [{}], "timeout": "1"}]}`,
		`{"healthCheckConfig": {"serviceName": 5}}`,
		`{"methodConfig": [{"name": [{}], "timeout": "+.5s"}]}`,
		`{"methodConfig": [{"name": [{}], "timeout": ".s"}]}`,
		`{"methodConfig": [{"name": [{}], "timeout": "1.0000000001s"}]}`,
		retryDoc(strings.ReplaceAll(validRetry, `"maxAttempts"`, `"max_attempts"`)), // grpc-go: an unknown field, so no maxAttempts
		`{"methodConfig" [}`,
	} {
		_, err := LoadJSON([]byte(doc))
		assert.Error(t, err, doc)
		assert.Error(t, grpcParse(doc), doc)
	}
}

// TestCodeNamesAreGRPCs: Load reads every status code name grpc-go reads
// (google.rpc.Code's names, "CANCELLED" with two Ls), and its number.
func TestCodeNamesAreGRPCs(t *testing.T) {
	require.Len(t, code.Code_name, int(codes.Unauthenticated)+1)
	for n, name := range code.Code_name {
		if n == 0 {
			continue
		}
		for _, v := range []string{strconv.Quote(name), strconv.Itoa(int(n))} {
			c, err := LoadJSON([]byte(retryDoc(strings.Replace(validRetry, `"UNAVAILABLE"`, v, 1))))
			require.NoError(t, err, name)
			assert.Equal(t, []codes.Code{codes.Code(n)}, c.Policies["/s.S/*"].RetryableCodes, name)
		}
	}
}
