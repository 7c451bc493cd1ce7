//go:build unix

package config

import "syscall"

// openFlags: should a FIFO take a file's place between the type check and
// the open, the open does not wait for a writer (regular files ignore the
// flag); the type is checked again on the opened file.
const openFlags = syscall.O_NONBLOCK
