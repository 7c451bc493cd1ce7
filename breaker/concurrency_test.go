package breaker

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestHammer runs many goroutines through Allow/Done while the breaker goes
// around its states (short open periods on the bubble's clock), then checks
// the invariants: every admitted permit is counted once, every rejection is
// counted, half-open never has more than HalfOpenMaxCalls probes in flight,
// and callbacks arrive one at a time as a connected chain of transitions.
type change struct{ from, to State }

func TestHammer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const (
			workers  = 8
			iters    = 5000
			maxProbe = 3
		)
		var (
			mu      sync.Mutex
			events  []change
			inside  atomic.Int32
			overlap atomic.Bool
		)
		b, err := New(Config{
			ConsecutiveFailures: 20,
			MinimumCalls:        50,
			RecoveryTime:        2 * time.Millisecond,
			MaxRecoveryTime:     8 * time.Millisecond,
			HalfOpenMaxCalls:    maxProbe,
			OnStateChange: func(_ string, from, to State) {
				if inside.Add(1) != 1 {
					overlap.Store(true)
				}
				mu.Lock()
				events = append(events, change{from, to})
				mu.Unlock()
				inside.Add(-1)
			},
		})
		require.NoError(t, err)

		var admitted, rejected, throttled atomic.Uint64
		var probes, maxProbes atomic.Int32
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(w), 42))
				for i := range iters {
					if i%10 == 0 {
						time.Sleep(time.Duration(rng.IntN(1000)) * time.Microsecond)
					}
					allow := b.Allow
					if i%3 == 1 {
						allow = b.AllowRetry
					}
					p, err := allow()
					if err != nil {
						if errors.Is(err, ErrThrottled) {
							throttled.Add(1)
							continue
						}
						require.ErrorIs(t, err, ErrOpen)
						rejected.Add(1)
						continue
					}
					admitted.Add(1)
					probe := State(p.w&stateMask) == HalfOpen
					if probe {
						n := probes.Add(1)
						for m := maxProbes.Load(); n > m && !maxProbes.CompareAndSwap(m, n); m = maxProbes.Load() {
						}
					}
					// Failure-heavy phases alternate with healthy ones.
					failP := 0.1
					if (i/500)%2 == 1 {
						failP = 0.9
					}
					o := Success
					switch r := rng.Float64(); {
					case r < failP:
						o = Failure
					case r > 0.98:
						o = Ignored
					}
					runtime.Gosched() // let other goroutines take permits meanwhile
					if probe {
						probes.Add(-1)
					}
					if i%3 == 0 {
						p.RetryAt(o, time.Time{})
					} else {
						p.Done(o)
					}
				}
			})
		}
		wg.Wait()
		b.Reset()
		c := b.Counts()
		assert.Equal(t, admitted.Load(), c.Successes+c.Failures+c.Ignored)
		assert.Equal(t, rejected.Load(), c.Rejections)
		assert.Equal(t, throttled.Load(), c.Throttled)
		assert.LessOrEqual(t, maxProbes.Load(), int32(maxProbe))
		assert.False(t, overlap.Load(), "callbacks ran concurrently")
		require.Greater(t, c.Transitions, uint64(10), "the test should exercise transitions")
		mu.Lock()
		defer mu.Unlock()
		require.Len(t, events, int(c.Transitions))
		prev := Closed
		for i, e := range events {
			require.Equal(t, prev, e.from, "event %d out of order", i)
			prev = e.to
		}
		assert.Equal(t, Closed, prev)
		t.Logf("admitted %d, rejected %d, throttled %d, transitions %d, max probes %d", admitted.Load(), rejected.Load(), throttled.Load(), c.Transitions, maxProbes.Load())
	})
}

// TestConcurrentManualControl races manual control with traffic, then checks
// that the callbacks reported every transition once, in order (each event
// starts where the previous one ended).
func TestConcurrentManualControl(t *testing.T) {
	var mu sync.Mutex
	var events []change
	b, err := New(Config{ConsecutiveFailures: 3, OnStateChange: func(_ string, from, to State) {
		mu.Lock()
		events = append(events, change{from, to})
		mu.Unlock()
	}})
	require.NoError(t, err)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if p, err := b.Allow(); err == nil {
					p.Done(Failure)
				}
				_ = b.State()
			}
		})
	}
	for i := range 2000 {
		switch i % 5 {
		case 0:
			b.ForceOpen()
		case 1:
			b.Reset()
		case 2:
			b.MetricsOnly()
		case 3:
			b.Disable()
		case 4:
			_ = b.Counts()
		}
	}
	close(stop)
	wg.Wait()
	b.Reset()
	c := b.Counts()
	assert.Equal(t, Closed, c.State)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, events, int(c.Transitions))
	prev := Closed
	for i, e := range events {
		require.Equal(t, prev, e.from, "event %d out of order", i)
		prev = e.to
	}
	assert.Equal(t, Closed, prev)
}

func TestGroupFirstUseRace(t *testing.T) {
	const goroutines, rounds = 100, 20
	keys := []string{"/pkg.Svc/A", "/pkg.Svc/B", "/pkg.Svc/C"}
	var g *Group
	// Several rounds, each on a fresh group: one round rarely makes two
	// goroutines meet on a key's first use.
	for range rounds {
		var err error
		g, err = NewGroup(Config{ConsecutiveFailures: 5})
		require.NoError(t, err)
		got := make([][]*Breaker, goroutines)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range goroutines {
			wg.Go(func() {
				<-start
				for _, k := range keys {
					got[i] = append(got[i], g.Get(k))
				}
			})
		}
		close(start)
		wg.Wait()
		for i := range got {
			for j, k := range keys {
				require.Same(t, got[0][j], got[i][j], "goroutine %d key %s", i, k)
			}
		}
	}
	var seen []string
	g.Range(func(k string, b *Breaker) bool {
		seen = append(seen, k)
		assert.Equal(t, k, b.Name())
		assert.Equal(t, 5, b.cfg.ConsecutiveFailures)
		return true
	})
	assert.Equal(t, keys, seen, "Range is in key order")
}

func TestGroup(t *testing.T) {
	var changes []string
	g, err := NewGroup(Config{
		Name:                "ignored",
		ConsecutiveFailures: 1,
		OnStateChange: func(name string, from, to State) {
			changes = append(changes, fmt.Sprintf("%s %v>%v", name, from, to))
		},
	})
	require.NoError(t, err)
	assert.Equal(t, "ignored", g.Config().Name)
	a, bb := g.Get("a"), g.Get("b")
	require.NotSame(t, a, bb)
	p, err := a.Allow()
	require.NoError(t, err)
	p.Done(Failure)
	assert.Equal(t, Open, g.Get("a").State())
	assert.Equal(t, Closed, g.Get("b").State())
	assert.Equal(t, []string{"a closed>open"}, changes)
	n := 0
	g.Range(func(string, *Breaker) bool { n++; return false })
	assert.Equal(t, 1, n, "Range stops when f returns false")
	a.Reset() // stop the timer
}
