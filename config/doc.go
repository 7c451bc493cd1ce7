// Package config loads resilience policies from a document: a gRPC service
// config (JSON or YAML) with this library's additions, checked field by field
// and converted into the policy map of package interceptors.
package config
