package interceptors

import (
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
)

// TestRetryStreamFitsItsSizeClass: a stream with a policy allocates one
// retryStream. With the 8-byte header the runtime adds to an object over 512
// bytes that holds pointers, it must stay within the 576-byte size class
// (BenchmarkStreamInterceptorOverhead: 600 B/op for a server stream; the next
// class costs every stream 64 bytes more).
func TestRetryStreamFitsItsSizeClass(t *testing.T) {
	assert.LessOrEqual(t, unsafe.Sizeof(retryStream{}), uintptr(576-8))
}
