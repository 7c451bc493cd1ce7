//go:build unix

package config

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLoadFileNotRegular: LoadFile reads regular files only (or links to
// them): /dev/zero was read until memory ran out, and a FIFO blocked
// forever.
func TestLoadFileNotRegular(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "zero.yaml")
	require.NoError(t, os.Symlink("/dev/zero", link))
	fifo := filepath.Join(dir, "fifo.json")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	for _, name := range []string{"/dev/zero", link, fifo, dir} {
		done := make(chan error, 1)
		go func() {
			_, err := LoadFile(name)
			done <- err
		}()
		select {
		case err := <-done:
			require.Error(t, err, name)
			assert.Contains(t, err.Error(), "not a regular file", name)
		case <-time.After(20 * time.Second):
			unblockFIFO(t, fifo)
			t.Fatalf("LoadFile(%s) still reading after 20s", name)
		}
	}
}

// unblockFIFO opens the FIFO for writing and closes it, so that a reader
// blocked in open returns and the goroutine does not leak.
func unblockFIFO(t *testing.T, name string) {
	w, err := os.OpenFile(name, os.O_WRONLY, 0)
	require.NoError(t, err)
	require.NoError(t, w.Close())
}

// TestWatchFileFIFO: WatchFile on a FIFO reports it and returns ctx.Err()
// at the context's deadline; it blocked forever in open. goleak (TestMain)
// checks that nothing is left running.
func TestWatchFileFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "policy.yaml")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	errs := make(chan error, 10)
	done := make(chan error, 1)
	go func() {
		done <- WatchFile(ctx, fifo, time.Hour, func(*Config) error { return nil }, func(err error) { errs <- err })
	}()
	select {
	case err := <-done:
		assert.ErrorIs(t, err, context.DeadlineExceeded)
	case <-time.After(20 * time.Second):
		unblockFIFO(t, fifo)
		<-done
		t.Fatal("WatchFile blocked on a FIFO 20s past its context's deadline")
	}
	require.Len(t, errs, 1)
	assert.ErrorContains(t, <-errs, "not a regular file")
}
