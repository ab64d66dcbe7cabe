//go:build !linux

package dsserver

// lowerThreadPriority is a no-op off Linux.
func lowerThreadPriority() {}
