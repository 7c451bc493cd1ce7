package breaker

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConfigDefaults(t *testing.T) {
	c, err := Config{}.Normalize()
	require.NoError(t, err)
	assert.Equal(t, Config{
		ConsecutiveFailures: 12,
		ThrottleK:           2,
		MinimumCalls:        20,
		Window:              10 * time.Second,
		RecoveryTime:        time.Second,
		MaxRecoveryTime:     60 * time.Second,
		RecoveryJitter:      0.2,
		HalfOpenMaxCalls:    1,
		HalfOpenMaxWait:     time.Second,
	}, c)
	assert.Zero(t, c.FailureRate, "the rate rule is off by default")
	c, err = Config{RecoveryJitter: -0.5, ConsecutiveFailures: -3, ThrottleK: -2, HalfOpenMaxWait: -time.Second}.Normalize()
	require.NoError(t, err)
	assert.Equal(t, -1.0, c.RecoveryJitter, "negative jitter means none")
	assert.Equal(t, -1, c.ConsecutiveFailures, "negative streak means off")
	assert.Equal(t, -1.0, c.ThrottleK, "negative K means no throttle")
	assert.Equal(t, time.Duration(-1), c.HalfOpenMaxWait, "negative wait means never wait")
	again, err := c.Normalize()
	require.NoError(t, err)
	assert.Equal(t, c, again, "a normalized Config normalizes to itself")
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string // "" = valid
	}{
		{"zero value", Config{}, ""},
		{"rate 1", Config{FailureRate: 1}, ""},
		{"rate above 1", Config{FailureRate: 1.5}, "breaker: Config.FailureRate: must be in [0, 1], got 1.5"},
		{"rate negative", Config{FailureRate: -0.1}, "breaker: Config.FailureRate: must be in [0, 1], got -0.1"},
		{"rate NaN", Config{FailureRate: math.NaN()}, "breaker: Config.FailureRate: must be in [0, 1], got NaN"},
		{"K 1", Config{ThrottleK: 1}, ""},
		{"K below 1", Config{ThrottleK: 0.5}, "breaker: Config.ThrottleK: must be at least 1 (or negative: off), got 0.5"},
		{"K NaN", Config{ThrottleK: math.NaN()}, "breaker: Config.ThrottleK: must be at least 1 (or negative: off), got NaN"},
		{"K +Inf", Config{ThrottleK: math.Inf(1)}, "breaker: Config.ThrottleK: must be at least 1 (or negative: off), got +Inf"},
		{"K -Inf is off", Config{ThrottleK: math.Inf(-1)}, ""},
		{"minimum calls negative", Config{MinimumCalls: -1}, "breaker: Config.MinimumCalls: must not be negative, got -1"},
		{"window negative", Config{Window: -time.Second}, "breaker: Config.Window: must not be negative, got -1s"},
		{"window too short for 10 buckets", Config{Window: 9}, "breaker: Config.Window: must be at least 10ns, got 9ns"},
		{"recovery negative", Config{RecoveryTime: -1}, "breaker: Config.RecoveryTime: must not be negative, got -1ns"},
		{"max recovery negative", Config{MaxRecoveryTime: -1}, "breaker: Config.MaxRecoveryTime: must not be negative, got -1ns"},
		{"max below recovery", Config{RecoveryTime: 2 * time.Minute}, "breaker: Config.MaxRecoveryTime: must be >= RecoveryTime (2m0s), got 1m0s"},
		{"max equal recovery", Config{RecoveryTime: time.Second, MaxRecoveryTime: time.Second}, ""},
		{"jitter 1", Config{RecoveryJitter: 1}, "breaker: Config.RecoveryJitter: must be < 1, got 1"},
		{"jitter NaN", Config{RecoveryJitter: math.NaN()}, "breaker: Config.RecoveryJitter: must be < 1, got NaN"},
		{"jitter -Inf", Config{RecoveryJitter: math.Inf(-1)}, ""},
		{"half-open negative", Config{HalfOpenMaxCalls: -2}, "breaker: Config.HalfOpenMaxCalls: must not be negative, got -2"},
		{"mode open", Config{Mode: Open}, "breaker: Config.Mode: must be Closed, Disabled or MetricsOnly, got open"},
		{"mode forced open", Config{Mode: ForcedOpen}, "breaker: Config.Mode: must be Closed, Disabled or MetricsOnly, got forced-open"},
		{"mode metrics-only", Config{Mode: MetricsOnly}, ""},
		{"mode garbage", Config{Mode: 99}, "breaker: Config.Mode: must be Closed, Disabled or MetricsOnly, got State(99)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			b, newErr := New(tt.cfg)
			if tt.want == "" {
				require.NoError(t, err)
				require.NoError(t, newErr)
				require.NotNil(t, b)
				return
			}
			require.EqualError(t, err, tt.want)
			require.EqualError(t, newErr, tt.want)
			require.Nil(t, b)
			_, gErr := NewGroup(tt.cfg)
			require.EqualError(t, gErr, tt.want)
		})
	}
}

// FuzzConfig checks that Validate and New never panic, that they agree, and
// that a valid breaker survives a short life (trip, open period, probe).
func FuzzConfig(f *testing.F) {
	f.Add(0, 0.0, 0, int64(0), int64(0), int64(0), 0.0, 0, int32(0))
	f.Add(-1, 1.5, -1, int64(-1), int64(-1), int64(-1), 1.0, -1, int32(3))
	f.Add(1, 1.0, 1, int64(10), int64(1), int64(1), -1.0, 1<<40, int32(5))
	f.Add(math.MaxInt, math.Inf(1), math.MinInt, int64(math.MaxInt64), int64(math.MaxInt64), int64(math.MaxInt64), math.NaN(), math.MaxInt, int32(-1))
	f.Fuzz(func(t *testing.T, streak int, rate float64, minCalls int, window, recovery, maxRecovery int64, jitter float64, halfOpen int, mode int32) {
		cfg := Config{
			ConsecutiveFailures: streak,
			ThrottleK:           rate * 3,
			FailureRate:         rate,
			MinimumCalls:        minCalls,
			Window:              time.Duration(window),
			RecoveryTime:        time.Duration(recovery),
			MaxRecoveryTime:     time.Duration(maxRecovery),
			RecoveryJitter:      jitter,
			HalfOpenMaxCalls:    halfOpen,
			Mode:                State(mode),
		}
		err := cfg.Validate()
		clk := newFakeClock()
		b, newErr := newBreaker(cfg, clk.Now, clk.AfterFunc, constRand(0.999))
		if err != nil {
			require.Error(t, newErr)
			require.Contains(t, err.Error(), "breaker: Config.")
			return
		}
		require.NoError(t, newErr)
		for range 30 {
			if p, err := b.Allow(); err == nil {
				p.Done(Failure)
			}
		}
		for range 4 {
			clk.Advance(b.openDur)
			if p, err := b.Allow(); err == nil {
				p.Done(Success)
			}
			_ = b.Counts()
		}
		require.Positive(t, b.openDuration(clk.Now()))
	})
}
