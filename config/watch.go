package config

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/khive/grpc-resilience/interceptors"
)

// Apply installs the document's policies on a live suite with
// [interceptors.Suite.Update], keeping every breaker's state and the retry
// budget. It refuses a document whose retry budget differs from the
// suite's, which is fixed when the suite is built; on any error the suite
// keeps its policies.
func (c *Config) Apply(s *interceptors.Suite) error {
	want, err := interceptors.New(nil, c.Budget.Option())
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	have, got := s.Snapshot().Budget, want.Snapshot().Budget
	have.Targets, got.Targets = nil, nil
	if !reflect.DeepEqual(have, got) {
		return fmt.Errorf("config: the document's retry budget (%s) differs from the suite's (%s); a suite keeps the budget it was built with, so build a new one to change it",
			describeBudget(got), describeBudget(have))
	}
	if err := s.Update(c.Policies); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

func describeBudget(b interceptors.SnapshotBudget) string {
	switch b.Mode {
	case "token-bucket":
		return fmt.Sprintf("token bucket, maxTokens %v, tokenRatio %v", b.MaxTokens, b.TokenRatio)
	case "ratio":
		return fmt.Sprintf("ratio %v, minRetriesPerSecond %v, window %s", b.Ratio, b.MinRetriesPerSecond, b.Window)
	}
	return b.Mode
}

// WatchFile reads the file name as [LoadFile] does, at once and then every
// interval, and calls apply with the Config each time the content changes:
//
//	go config.WatchFile(ctx, "policy.yaml", 5*time.Second,
//		func(c *config.Config) error { return c.Apply(suite) },
//		func(err error) { log.Print(err) })
//
// A content that fails to load or that apply rejects is reported to onError
// (if not nil) once and skipped; a file that cannot be read is reported once
// per distinct error. Replace the file atomically (rename another file over
// it): a poll during an in-place write sees a partial document.
//
// WatchFile starts no goroutine and returns ctx.Err() when ctx is done, or
// an error at once if interval is not positive, apply is nil or an option
// is invalid.
func WatchFile(ctx context.Context, name string, interval time.Duration, apply func(*Config) error, onError func(error), opts ...Option) error {
	o, err := newOptions(opts)
	if err != nil {
		return err
	}
	if interval <= 0 {
		return fmt.Errorf("config: WatchFile: interval must be positive, got %v", interval)
	}
	if apply == nil {
		return errors.New("config: WatchFile: apply must not be nil")
	}
	if onError == nil {
		onError = func(error) {}
	}
	var last []byte // the content last handled (applied or rejected)
	seen, lastReadErr := false, ""
	poll := func() {
		data, f, err := readFile(name, o)
		if err != nil {
			if msg := err.Error(); msg != lastReadErr {
				lastReadErr = msg
				onError(err)
			}
			return
		}
		lastReadErr = ""
		if seen && bytes.Equal(data, last) {
			return
		}
		seen, last = true, data
		c, err := load(data, f, o)
		if err == nil {
			err = apply(c)
		}
		if err != nil {
			onError(fmt.Errorf("%s: %w", name, err))
		}
	}
	poll()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			poll()
		}
	}
}
