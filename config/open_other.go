//go:build !unix

package config

// openFlags: no flag where FIFOs cannot block an open (or O_NONBLOCK does
// not exist); the type is still checked before and after the open.
const openFlags = 0
