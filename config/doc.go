// Package config loads resilience policies from a document: a gRPC service
// config (the JSON that grpc-go reads, gRFC A2/A6) with this library's
// additions, in JSON or YAML, checked field by field and converted into the
// policy map of package interceptors. It also swaps the policies of a live
// client (Config.Apply, WatchFile).
//
//	cfg, err := config.LoadFile("policy.yaml")
//	if err != nil { ... } // config: methodConfig[2].retryPolicy.maxAttempts: must be at least 2, got 1
//	suite, err := cfg.NewSuite()
//	cc, err := grpc.NewClient(target, append(suite.DialOptions(), creds)...)
//
// The schema is the protobuf message khive.resilience.v1.ServiceConfig
// (proto/khive/resilience/v1/resilience.proto, whose comments describe every
// field); FromProto takes it directly.
//
// # The document
//
//	{
//	  "methodConfig": [{
//	    "name": [{"service": "pkg.v1.Svc", "method": "Get"}, {"service": "pkg.v1.Other"}],
//	    "retryPolicy": {
//	      "maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
//	      "retryableStatusCodes": ["UNAVAILABLE", 10],
//	      "jitter": "proportional", "jitterFactor": 0.2,              ours, all optional
//	      "perAttemptTimeout": "0.5s", "minAttemptTime": "0.001s", "maxPushback": "30s"
//	    },
//	    "circuitBreaker": {                                          ours, optional
//	      "mode": "closed", "consecutiveFailures": 12, "throttleK": 2, "minimumCalls": 20,
//	      "window": "10s", "recoveryTime": "1s", "maxRecoveryTime": "60s", "recoveryJitter": 0.2,
//	      "halfOpenMaxCalls": 1, "halfOpenMaxWait": "1s", "failureStatusCodes": ["UNAVAILABLE", "INTERNAL"]
//	    }
//	  }],
//	  "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
//	  "retryBudget": {"ratio": 0.2, "minRetriesPerSecond": 1, "window": "10s"}   ours, instead of retryThrottling; or {"disabled": true}
//	}
//
// A name with a method becomes the policy key "/pkg.v1.Svc/Get", a name
// with a service only "/pkg.v1.Svc/*", the empty name {} the default "*";
// a call uses the most specific key, as grpc does. Each name may appear
// once in the document.
//
// # What grpc-go accepts, and what this package checks
//
// A grpc-go service config loads as it is: field names are matched as
// grpc-go's encoding/json matches them, ignoring case ("MaxAttempts" is
// maxAttempts, as in grpc-go's own examples), status codes are upper-case
// names as grpc spells them ("UNAVAILABLE", "CANCELLED") or numbers (14),
// durations are strings of seconds ("0.1s", "2.5s", ".5s"), and the grpc
// fields this library does not act on are accepted and listed in
// Config.Ignored: loadBalancingPolicy, loadBalancingConfig,
// healthCheckConfig, connectionScaling, and in a methodConfig waitForReady,
// timeout, maxRequestMessageBytes, maxResponseMessageBytes and
// hedgingPolicy. Any other unknown field is an error (with a "did you mean"
// for near misses), including the snake_case proto names such as
// "max_attempts", which grpc-go would ignore.
//
// Validation mirrors grpc-go's, which rejects the whole document on a bad
// retryPolicy: maxAttempts at least 2, initialBackoff and maxBackoff present
// and positive, backoffMultiplier positive, retryableStatusCodes not empty;
// retryThrottling.maxTokens in (0, 1000] and tokenRatio positive; numbers
// are JSON numbers, integers written as integers, codes never numeric
// strings such as "14". It is stricter in a few places, each reported as an
// error, never silently adjusted:
//
//   - backoffMultiplier must be at least 1 (grpc accepts (0, 1), which
//     shrinks the delays) and maxBackoff at least initialBackoff;
//   - OK may not be listed as a status code;
//   - tokenRatio must be at least 0.001 (A6 keeps three decimals);
//   - maxAttempts must fit in 32 bits, and durations in time.Duration
//     (about 292 years), where grpc-go clamps larger values;
//   - service and method names may not contain "/", "*" or white space
//     (grpc would build a name no call ever has);
//   - a methodConfig without names is still checked (grpc skips it), and
//     null is not accepted as a methodConfig or a name;
//   - a field written twice, even in two spellings ("maxAttempts" and
//     "MaxAttempts"), is an error, where grpc-go keeps the last.
//
// Every problem is reported with its path, all of them at once (up to 20),
// in an *Error whose problems are *FieldError values:
//
//	config: methodConfig[2].retryPolicy.maxAttempts: must be at least 2, got 1; retryThrottling.maxTokens: required, in (0, 1000]
//
// Load never panics (FuzzLoad checks it) and never returns a Config that
// interceptors.New rejects. A piece of the document in a message (a key, a
// name, a value, a YAML tag) is quoted as Go quotes strings, so that a
// newline or an escape sequence cannot forge a log line, and cut after 64
// bytes with its length: "kkk"... (10485760 bytes).
//
// # Limits
//
// A document is read within limits, so that a hostile or broken file costs
// bounded memory and time; each exceeded limit is an error naming it:
//
//   - at most 4 MiB (DefaultMaxBytes; WithMaxBytes changes it): the bytes
//     given to Load or read from a file, and also the bytes of the
//     document's keys, strings and numbers once YAML aliases are expanded
//     (an alias counts what it repeats, each time);
//   - at most 100,000 values (DefaultMaxValues; WithMaxValues): objects,
//     lists, strings, numbers, booleans and nulls, once aliases are
//     expanded;
//   - values nested at most 64 deep (fixed).
//
// LoadFile and WatchFile read regular files only (or links to them): a
// FIFO, a device such as /dev/zero or a directory is an error, and a FIFO
// is never waited on. Within these limits parsing is linear in the
// document's size. The YAML parser itself allocates up to about 130 bytes per
// input byte at worst (a long flow list of one-character values), the rest
// of Load up to about 1 KiB per value and 32 bytes per byte counted after
// alias expansion, so a service that loads untrusted YAML may lower
// WithMaxBytes.
//
// # Mapping to this library
//
// A retryPolicy maps to retry.Policy with A6's semantics: proportional
// jitter of ±20% (jitter and jitterFactor change it), the delay capped at
// maxBackoff before jitter and the jittered delay clamped to maxBackoff
// (A6 may exceed it by 20%). A methodConfig without retryPolicy tries its
// methods once, as in grpc. Where this library differs from grpc-go on the
// same document:
//
//   - maxAttempts is not capped: grpc-go treats values above 5 as 5 (unless
//     grpc.WithMaxCallAttempts raises the cap); here 7 means 7;
//   - RESOURCE_EXHAUSTED is retried only when the server sent a delay hint
//     (grpc-retry-pushback-ms or RetryInfo), even when listed;
//   - every method with a policy gets a circuit breaker (the library's
//     defaults unless circuitBreaker says otherwise; mode "disabled" turns it
//     off, "forced-open" isolates the methods until a reload or an operator
//     releases them), and the "*" default does not cover the standard health
//     check;
//   - without retryThrottling or retryBudget, retries are bounded by the
//     library's default ratio budget (20% of calls plus 1 per second, per
//     target); use "retryBudget": {"disabled": true} for none, as in grpc;
//   - retryThrottling is one token bucket per target (cc.Target()), as
//     grpc-go keeps one per ClientConn.
//
// In circuitBreaker, 0 turns a rule off (consecutiveFailures, throttleK),
// the failureRate rule is off unless set, recoveryJitter 0 means no jitter
// and halfOpenMaxWait "0s" means never wait; maxRecoveryTime defaults to
// 60s, or to recoveryTime if that is larger.
//
// # YAML
//
// A YAML document (one per stream, YAML 1.2 core schema) has the fields of
// the JSON form. Durations and code names need no quotes ("initialBackoff:
// 0.1s"); "yes" and "on" are strings, as in YAML 1.2; anchors and aliases
// work (expanded within the limits). Numbers are decimal ("10", "0.5", ".5",
// "1e3") and are checked as the same JSON number (3.0 is not an integer);
// the forms yaml.v3 reads as YAML 1.1 does (010 as octal, 0b10, 1_000) are
// errors, and so are 0x10 and 0o10, merge keys (<<), custom tags, non-string
// keys and non-finite numbers.
//
// # Hot reload
//
// Config.Apply installs a document's policies on a live suite with
// interceptors.Suite.Update: atomically, without failing calls in flight,
// keeping every breaker's state (an open breaker stays open, new settings
// apply from then on) and every retry budget. The budget settings are fixed when the
// suite is built, so Apply refuses a document whose retryThrottling or
// retryBudget differs. WatchFile polls a file and applies each new content;
// a content that fails to load is reported and skipped. Suite.Snapshot shows
// the effective policies, the breaker of every method called and the
// budgets, as JSON with the field names of this document.
package config
