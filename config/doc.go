// Package config loads resilience policies from a gRPC service config (the
// JSON grpc-go reads, gRFC A2/A6) with this library's additions, in JSON or
// YAML, and converts them into the policy map of package interceptors.
//
//	cfg, err := config.LoadFile("policy.yaml")
//	suite, err := cfg.NewSuite()
//	opts := append(cfg.DialOptions(), suite.DialOptions()...)
//	cc, err := grpc.NewClient(target, append(opts, creds)...)
//
// The suite applies the retry policies, breakers and budget;
// [Config.DialOptions] applies the other grpc fields as grpc-go does.
//
// The schema is the message khive.resilience.v1.ServiceConfig, whose
// comments describe every field; [FromProto] takes it directly. A name with
// a method becomes the policy key "/pkg.Svc/Method", a name with a service
// only "/pkg.Svc/*", the empty name the default "*"; each name may appear
// once in the document.
//
// # Reading
//
// Field names are matched as grpc-go matches them, ignoring case; status
// codes are grpc's upper-case names ("CANCELLED") or integers; durations are
// strings of seconds ("0.1s"). A field written twice, in any spelling, and
// any unknown field are errors. A retryPolicy is checked as grpc-go checks
// it; a hedgingPolicy (gRFC A6) becomes [interceptors.HedgePolicy]; the
// maxAttempts of both are capped at 5 ([WithMaxAttempts]). This library's
// fields follow the rule of the Go API: zero or absent means the default, a
// negative value turns off what can be off and is an error elsewhere, an
// absent list means the default and an empty list none. The grpc fields
// nothing here applies are listed in [Config.Ignored] ([WithLogger],
// [WithStrict]). A YAML document is read with the YAML 1.2 core schema;
// numbers are decimal.
//
// # Errors and limits
//
// A rejected document returns an [*Error] listing its problems, each a
// [*FieldError] naming its field. Load never panics and never returns a
// Config that interceptors.New rejects. A document's bytes and values are
// limited ([WithMaxBytes], [WithMaxValues]) and it nests at most 64 deep;
// within these limits Load is linear in the document's size.
//
// # Reload
//
// [Config.Apply] installs a document's policies on a live suite;
// [WatchFile] polls a file and applies each new content.
//
// docs/config.md has the details: what the suite does differently from
// grpc-go with the same document, the memory bounds, the YAML rules.
package config
