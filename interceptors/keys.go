package interceptors

import (
	"context"
	"fmt"
	"strings"
	"unicode"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// WithStrictKeys makes New and Update reject a policy key whose service, or
// method, is not in the proto registry (protoregistry.GlobalFiles, where
// generated code registers its services). Without it, New warns through the
// logger (WithLogger) once per such key: a client whose stubs are not
// generated Go code may well call services the registry does not know.
func WithStrictKeys() Option { return optionFunc(func(o *options) { o.strictKeys = true }) }

// checkKeyName returns the problem of a well-formed policy key beyond its
// syntax: a Unicode space (an ASCII one is a syntax error already) or, if
// registry, a service or method the proto registry does not know.
func checkKeyName(key string, registry bool) error {
	if i := strings.IndexFunc(key, unicode.IsSpace); i >= 0 {
		return policyError(key, fmt.Sprintf("key has a space or control character at byte %d", i), nil)
	}
	if !registry {
		return nil
	}
	if problem := unregistered(key); problem != "" {
		return policyError(key, problem, nil)
	}
	return nil
}

// unregistered says what of a well-formed key the proto registry lacks: ""
// if nothing (or the key is "*").
func unregistered(key string) string {
	if key == "*" {
		return ""
	}
	svc, m, _ := strings.Cut(key[1:], "/")
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
	sd, ok := d.(protoreflect.ServiceDescriptor)
	switch {
	case err != nil || !ok:
		return "service " + quote(svc) + " is not in the proto registry"
	case m != "*" && sd.Methods().ByName(protoreflect.Name(m)) == nil:
		return "method " + quote(m) + " is not in service " + quote(svc) + " of the proto registry"
	}
	return ""
}

// warnUnregistered warns once per key of tab that the proto registry does
// not know (see WithStrictKeys).
func (s *Suite) warnUnregistered(keys []string) {
	for _, key := range keys {
		if problem := unregistered(key); problem != "" {
			s.o.logger.Log(context.Background(), logging.LevelWarn, "policy key not in the proto registry",
				logging.ComponentFieldKey, "client", "policy.key", key, "problem", problem)
		}
	}
}
