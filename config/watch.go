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

// Apply installs the document's policies on a live suite (Suite.Update):
// atomically, without failing calls in flight, keeping every breaker's state
// (an open breaker stays open; new settings apply from then on) and every
// retry budget.
//
// A Suite's budget settings are fixed when it is built, so Apply refuses a
// document whose retryThrottling or retryBudget differs from the suite's
// budget (build a new Suite to change it); on any error the suite keeps its
// policies.
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

// WatchFile polls the document in the file name every interval and calls
// apply with the loaded Config each time the file's content changes, the
// first time at once. Typical apply functions are Config.Apply on a live
// suite:
//
//	go config.WatchFile(ctx, "policy.yaml", 5*time.Second,
//		func(c *config.Config) error { return c.Apply(suite) },
//		func(err error) { log.Print(err) })
//
// A content that fails to load, or that apply rejects, is reported to
// onError (if not nil) once and skipped: the previous policies stay in
// force until the file changes again. A file that cannot be read, or that
// is not a regular file (a FIFO, a device, or a link to one) or exceeds the
// WithMaxBytes limit, is reported once per distinct error. The file is read
// whole on every tick (documents are small); the format comes from its name
// as in LoadFile, and opts set the limits as for Load.
// Replace the file atomically (write another file in the same directory,
// then rename it over this one): a poll that falls between the truncation
// and the end of an in-place write sees a partial document and reports it.
//
// WatchFile returns ctx.Err() when ctx is done, and starts no goroutine of
// its own. It returns an error at once if interval is not positive, apply
// is nil or an option is invalid.
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
	report := func(err error) {
		if onError != nil {
			onError(err)
		}
	}
	var last []byte // the content last handled (applied or rejected)
	seen := false
	lastReadErr := ""
	poll := func() {
		data, f, err := readFile(name, o)
		if err != nil {
			if msg := err.Error(); msg != lastReadErr {
				lastReadErr = msg
				report(err)
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
			report(fmt.Errorf("%s: %w", name, err))
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
