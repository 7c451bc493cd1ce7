package scenario

import (
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestHashIsUniform(t *testing.T) {
	below := 0
	for i := range 100000 {
		if hash("c"+strconv.Itoa(i)) < 0.5 {
			below++
		}
	}
	assert.InDelta(t, 50000, below, 500)
}

func TestRecovery(t *testing.T) {
	tl := Timeline{Slice: 100e6, OK: []int{10, 10, 2, 2, 10, 10, 10, 10}, Calls: make([]int, 8)}
	assert.Equal(t, int64(4e8), int64(tl.Recovery(2e8, 2e8, 100)))
	assert.Equal(t, int64(-1), int64(tl.Recovery(2e8, 2e8, 101)))
	assert.InDelta(t, 68, tl.Goodput(0, 5e8), 1e-9)
}
