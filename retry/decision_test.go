package retry

import (
	"errors"
	"fmt"
	"io/fs"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDecision(t *testing.T) {
	assert.False(t, Stop.Retryable())
	assert.True(t, Backoff.Retryable())
	assert.True(t, After(time.Second).Retryable())
	var zero Decision
	assert.Equal(t, Stop, zero, "the zero Decision is Stop")

	d, ok := After(1500 * time.Millisecond).Pushback()
	assert.True(t, ok)
	assert.Equal(t, 1500*time.Millisecond, d)
	d, ok = After(-time.Second).Pushback()
	assert.True(t, ok)
	assert.Zero(t, d, "a negative After counts as 0")
	_, ok = Backoff.Pushback()
	assert.False(t, ok)

	assert.Equal(t, "stop", Stop.String())
	assert.Equal(t, "backoff", Backoff.String())
	assert.Equal(t, "after(1.5s)", After(1500*time.Millisecond).String())
}

func TestReasonString(t *testing.T) {
	for r, want := range map[Reason]string{
		Exhausted:       "exhausted",
		NotRetryable:    "not retryable",
		Deadline:        "deadline",
		BudgetExhausted: "budget",
		Canceled:        "canceled",
		"breaker open":  "breaker open",
	} {
		assert.Equal(t, want, r.String())
	}
}

var errSentinel = errors.New("unavailable")

func TestError(t *testing.T) {
	e := &Error{Err: fmt.Errorf("attempt: %w", errSentinel), Attempts: 3, Reason: Exhausted}
	assert.Equal(t, "retry: gave up after 3 attempts (exhausted): attempt: unavailable", e.Error())
	assert.Equal(t, "retry: gave up after 1 attempt (not retryable): x", (&Error{Err: errors.New("x"), Attempts: 1, Reason: NotRetryable}).Error())
	assert.Equal(t, "retry: gave up after 0 attempts (canceled)", (&Error{Reason: Canceled}).Error())

	var err error = e
	assert.ErrorIs(t, err, errSentinel, "errors.Is sees through Error")
	var re *Error
	require.ErrorAs(t, fmt.Errorf("outer: %w", err), &re)
	assert.Equal(t, 3, re.Attempts)

	pe := &fs.PathError{Op: "open", Path: "x", Err: fs.ErrNotExist}
	err = &Error{Err: pe, Attempts: 2, Reason: Deadline}
	var got *fs.PathError
	require.ErrorAs(t, err, &got, "errors.As sees through Error")
	assert.Same(t, pe, got)
	assert.ErrorIs(t, err, fs.ErrNotExist)
}
