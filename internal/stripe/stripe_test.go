package stripe

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestCount(t *testing.T) {
	n := Count(64)
	assert.Equal(t, 0, n&(n-1), "a power of two")
	assert.LessOrEqual(t, n, 64)
	assert.Equal(t, 2, Count(2))
}

// Goroutines spread over the stripes.
func TestIndexSpreads(t *testing.T) {
	seen := map[uint32]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			i := Index() & 15
			mu.Lock()
			seen[i] = true
			mu.Unlock()
		})
	}
	wg.Wait()
	assert.GreaterOrEqual(t, len(seen), 8)
}

func BenchmarkIndex(b *testing.B) {
	var s uint32
	for b.Loop() {
		s += Index()
	}
	_ = s
}
