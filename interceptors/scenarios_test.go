package interceptors_test

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/khive/grpc-resilience/internal/scenario"
)

// pair runs a scenario with the defaults and with the breaker disabled, each
// in its own synctest bubble (simulated time: exact and fast).
func pair(t *testing.T, f func(breakerOn bool) (scenario.Result, error)) scenario.Pair {
	t.Helper()
	var p scenario.Pair
	for _, on := range []bool{true, false} {
		synctest.Test(t, func(t *testing.T) {
			r, err := f(on)
			require.NoError(t, err)
			if on {
				p.On = r
			} else {
				p.Off = r
			}
		})
	}
	t.Logf("defaults %+v", p.On)
	t.Logf("no breaker %+v", p.Off)
	return p
}

// TestScenarios is the README's "When the breaker acts": each situation in
// which a breaker can cost availability, over real grpc (bufconn), with the
// suite's defaults, compared with the same suite with the breaker disabled.
func TestScenarios(t *testing.T) {
	t.Run("rolling restart: retries that succeed never trip the breaker", func(t *testing.T) {
		p := pair(t, scenario.RollingRestart)
		assert.Equal(t, 1.0, p.On.Success)
		assert.Zero(t, p.On.Opens)
		assert.Equal(t, p.Off.Success, p.On.Success)
	})
	t.Run("partial failure: within 2 points of no breaker at 50% call failures", func(t *testing.T) {
		p := pair(t, scenario.PartialFailure)
		assert.GreaterOrEqual(t, p.On.Success, p.Off.Success-0.02)
		assert.Zero(t, p.On.Opens)
	})
	t.Run("brownout: goodput at least no breaker's, back within 200ms", func(t *testing.T) {
		p := pair(t, scenario.Brownout)
		assert.GreaterOrEqual(t, p.On.Goodput, p.Off.Goodput)
		assert.GreaterOrEqual(t, p.On.Recovered, time.Duration(0), "never recovered")
		assert.LessOrEqual(t, p.On.Recovered, 200*time.Millisecond)
		assert.Zero(t, p.On.Opens)
	})
	t.Run("outage of 3s: 99% succeed from 1.2s after the recovery", func(t *testing.T) {
		p := pair(t, scenario.Outage)
		assert.GreaterOrEqual(t, p.On.Success, 0.99)
		assert.Less(t, p.On.Attempts, p.Off.Attempts/10, "the breaker spares the dead server")
	})
	t.Run("200 callers at half-open, server recovered: at least 190 succeed", func(t *testing.T) {
		p := pair(t, scenario.HerdRecovered)
		assert.GreaterOrEqual(t, p.On.Succeeded, 190)
		assert.Zero(t, p.On.Late, "every caller returns within its deadline")
	})
	t.Run("200 callers at half-open, server still down: at most 1 attempt reaches it", func(t *testing.T) {
		p := pair(t, scenario.HerdDown)
		assert.LessOrEqual(t, p.On.Attempts, int64(1))
		assert.Zero(t, p.On.Late, "every caller returns within its deadline")
	})
	t.Run("reload during an outage keeps the breaker open", func(t *testing.T) {
		p := pair(t, scenario.Reload)
		assert.Zero(t, p.On.Attempts)
		assert.GreaterOrEqual(t, p.Off.Attempts, int64(50), "without a breaker every call reaches it")
	})
}
