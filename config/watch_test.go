package config_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/khive/grpc-resilience/config"
	"github.com/khive/grpc-resilience/interceptors"
)

const (
	docV1 = `{"methodConfig": [{"name": [{"service": "khive.echo.v1.EchoService"}],
	  "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.01s", "backoffMultiplier": 1,
	    "retryableStatusCodes": ["UNAVAILABLE"]}}],
	  "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}`
	docV2 = `{"methodConfig": [{"name": [{"service": "khive.echo.v1.EchoService"}],
	  "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.01s", "maxBackoff": "0.01s", "backoffMultiplier": 1,
	    "retryableStatusCodes": ["UNAVAILABLE"]}}],
	  "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}`
	docOtherBudget = `{"retryThrottling": {"maxTokens": 20, "tokenRatio": 0.1}}`
)

func TestApply(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newA6Env(t, load(t, docV1))
		ctx := t.Context()
		_ = e.unary(ctx, "a", -1, codes.Unavailable)
		assert.Equal(t, 3, e.attempts("a"))

		require.NoError(t, load(t, docV2).Apply(e.suite))
		_ = e.unary(ctx, "b", -1, codes.Unavailable)
		// Tokens: 10 -> 7 after "a"; "b" stops at 5: 2 attempts, not 5 and not 3.
		assert.Equal(t, 2, e.attempts("b"))
		assert.Equal(t, 5, e.suite.Snapshot().Policies[0].Retry.MaxAttempts)

		// A different budget is refused; nothing changes.
		err := load(t, docOtherBudget).Apply(e.suite)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "token bucket, maxTokens 20, tokenRatio 0.1")
		assert.Contains(t, err.Error(), "token bucket, maxTokens 10, tokenRatio 0.1")
		require.Len(t, e.suite.Snapshot().Policies, 1)
		err = load(t, `{}`).Apply(e.suite)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "ratio 0.2, minRetriesPerSecond 1, window 10s")
	})

	// The default budget matches a suite built without a budget option.
	s, err := interceptors.New(nil)
	require.NoError(t, err)
	require.NoError(t, load(t, `{"methodConfig": [{"name": [{}]}]}`).Apply(s))
	require.NoError(t, load(t, `{"retryBudget": {"ratio": 0.2}}`).Apply(s))
	s, err = interceptors.New(nil, interceptors.WithoutBudget())
	require.NoError(t, err)
	require.NoError(t, load(t, `{"retryBudget": {"disabled": true}}`).Apply(s))
}

// watchLog records what WatchFile did.
type watchLog struct {
	mu      sync.Mutex
	applied []*config.Config
	errs    []error
}

func (w *watchLog) apply(c *config.Config) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.applied = append(w.applied, c)
	if len(c.Policies) == 0 {
		return errors.New("refused: no policies")
	}
	return nil
}

func (w *watchLog) onError(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.errs = append(w.errs, err)
}

func (w *watchLog) counts() (applied, errs int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.applied), len(w.errs)
}

func (w *watchLog) lastErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.errs[len(w.errs)-1]
}

func TestWatchFile(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		name := filepath.Join(t.TempDir(), "policy.json")
		write := func(s string) { require.NoError(t, os.WriteFile(name, []byte(s), 0o600)) }
		write(docV1)

		var w watchLog
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- config.WatchFile(ctx, name, time.Second, w.apply, w.onError) }()
		tick := func() {
			time.Sleep(time.Second)
			synctest.Wait()
		}

		synctest.Wait()
		applied, errs := w.counts()
		assert.Equal(t, 1, applied) // at once
		assert.Equal(t, 0, errs)

		tick()
		applied, _ = w.counts()
		assert.Equal(t, 1, applied) // unchanged content: not again

		write(docV2)
		tick()
		applied, _ = w.counts()
		require.Equal(t, 2, applied)
		assert.Equal(t, 5, w.applied[1].Policies["/khive.echo.v1.EchoService/*"].Retry.MaxAttempts)

		write(`{"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 1, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14]}}]}`)
		tick()
		tick()
		applied, errs = w.counts()
		assert.Equal(t, 2, applied)
		assert.Equal(t, 1, errs) // once, not on every tick
		assert.Contains(t, w.lastErr().Error(), "policy.json: config: methodConfig[0].retryPolicy.maxAttempts: must be at least 2, got 1")

		write(`{}`) // loads, but apply refuses it
		tick()
		applied, errs = w.counts()
		assert.Equal(t, 3, applied)
		assert.Equal(t, 2, errs)
		assert.Contains(t, w.lastErr().Error(), "refused: no policies")

		require.NoError(t, os.Remove(name))
		tick()
		tick()
		_, errs = w.counts()
		assert.Equal(t, 3, errs) // the read error, once
		assert.ErrorIs(t, w.lastErr(), os.ErrNotExist)

		write(docV1)
		tick()
		applied, _ = w.counts()
		assert.Equal(t, 4, applied)

		cancel()
		assert.ErrorIs(t, <-done, context.Canceled)
	})
}

func TestWatchFileArguments(t *testing.T) {
	ctx := t.Context()
	noop := func(*config.Config) error { return nil }
	require.Error(t, config.WatchFile(ctx, "x.json", 0, noop, nil))
	require.Error(t, config.WatchFile(ctx, "x.json", -time.Second, noop, nil))
	require.Error(t, config.WatchFile(ctx, "x.json", time.Second, nil, nil))

	// An already-canceled ctx: one poll, then return (no onError: errors dropped).
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, config.WatchFile(canceled, filepath.Join(t.TempDir(), "missing.yaml"), time.Second, noop, nil), context.Canceled)
}

// TestReloadUnderConcurrentLoad: calls that each need one retry run while
// WatchFile reloads a file rewritten between two versions and a second
// goroutine applies them directly. No call fails, every call makes exactly
// two attempts, the method's breaker (same settings in both versions) counts
// every outcome through every reload, and the budget is never replaced.
// Run with -race.
func TestReloadUnderConcurrentLoad(t *testing.T) {
	const (
		workers = 8
		calls   = 25 // per worker
		// Two versions with the same breaker (streak and throttle off, so
		// the 50% failed attempts never open or throttle it) and the same
		// budget.
		v1 = `{"methodConfig": [{"name": [{"service": "khive.echo.v1.EchoService"}],
		  "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.001s", "maxBackoff": "0.001s", "backoffMultiplier": 1,
		    "retryableStatusCodes": ["UNAVAILABLE"]},
		  "circuitBreaker": {"consecutiveFailures": 0, "throttleK": 0}}],
		  "retryThrottling": {"maxTokens": 1000, "tokenRatio": 1}}`
	)
	v2 := strings.Replace(v1, `"maxAttempts": 3`, `"maxAttempts": 4`, 1)
	docs := []*config.Config{load(t, v1), load(t, v2)}

	synctest.Test(t, func(t *testing.T) {
		e := newA6Env(t, docs[0])
		ctx, cancel := context.WithCancel(t.Context())
		name := filepath.Join(t.TempDir(), "policy.json")
		require.NoError(t, os.WriteFile(name, []byte(v1), 0o600))

		var applied, failed atomic.Int32
		watched := make(chan error)
		go func() {
			watched <- config.WatchFile(ctx, name, time.Millisecond,
				func(c *config.Config) error {
					applied.Add(1)
					return c.Apply(e.suite)
				},
				func(err error) { t.Errorf("watch: %v", err) })
		}()
		var wg sync.WaitGroup
		var running atomic.Int32
		running.Store(workers)
		for w := range workers {
			wg.Go(func() {
				defer running.Add(-1)
				for i := range calls {
					key := fmt.Sprintf("w%d-%d", w, i)
					if err := e.unary(ctx, key, 1, codes.Unavailable); err != nil {
						failed.Add(1)
						t.Errorf("%s: %v", key, err)
					}
				}
			})
		}
		wg.Go(func() { // rewrites the file, and applies the versions itself
			for i := 0; running.Load() > 0; i++ {
				// Replaced as WatchFile asks: written aside, then renamed.
				tmp := name + ".tmp"
				if err := os.WriteFile(tmp, []byte([]string{v1, v2}[i%2]), 0o600); err != nil {
					t.Error(err)
				}
				if err := os.Rename(tmp, name); err != nil {
					t.Error(err)
				}
				if err := docs[(i+1)%2].Apply(e.suite); err != nil {
					t.Errorf("apply: %v", err)
				}
				_ = e.suite.Snapshot()
				time.Sleep(time.Millisecond)
			}
		})
		wg.Wait()
		cancel()
		assert.ErrorIs(t, <-watched, context.Canceled)

		assert.Zero(t, failed.Load())
		assert.Greater(t, applied.Load(), int32(5))
		for w := range workers {
			for i := range calls {
				assert.Equal(t, 2, e.attempts(fmt.Sprintf("w%d-%d", w, i)))
			}
		}
		snap := e.suite.Snapshot()
		var m interceptors.SnapshotMethod
		for _, sm := range snap.Methods {
			if sm.Method == "/khive.echo.v1.EchoService/Unary" {
				m = sm
			}
		}
		assert.Equal(t, uint64(workers*calls), m.Successes)
		assert.Equal(t, uint64(workers*calls), m.Failures)
		require.Len(t, snap.Budget.Targets, 1)
		assert.Equal(t, uint64(workers*calls), snap.Budget.Targets[0].Allowed) // one budget since New
	})
}
