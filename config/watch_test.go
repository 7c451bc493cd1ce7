package config_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
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

		write(`{"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 1}}]}`)
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
