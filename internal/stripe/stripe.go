// Package stripe picks the stripe of a striped counter for the calling
// goroutine, and sizes such counters, for the hot paths of the breaker and
// the retry budget.
package stripe

import (
	"runtime"
	"unsafe"
)

// Index returns a hash of the address of a local variable, that is of the
// calling goroutine's stack, so that goroutines running at once on
// different processors mostly get different stripes (mask it with Count-1).
// It costs a multiplication; math/rand/v2 costs several times more.
func Index() uint32 {
	var x byte
	return uint32((uint64(uintptr(unsafe.Pointer(&x))>>10) * 0x9e3779b97f4a7c15) >> 32)
}

// Count returns a number of stripes: a power of two, at least four per
// processor (GOMAXPROCS at the time of the call), at most max.
func Count(max int) int {
	n := 1
	for n < 4*runtime.GOMAXPROCS(0) && n < max {
		n <<= 1
	}
	return n
}
