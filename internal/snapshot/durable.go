package snapshot

import (
	"fmt"
	"os"
)

// A rename or a new file is durable only once the directory holding it
// is fsynced (and a file's bytes once the file is): without that a power
// cut may undo a snapshot directory's move into place, or leave an
// instance or owner file empty, after the metadata said otherwise.

// fsyncPath fsyncs the file or directory at path.
func fsyncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}

// withFsync replaces fsyncPath; tests record the calls.
func withFsync(f func(path string) error) Opt {
	return func(c *config) error {
		c.fsync = f
		return nil
	}
}

// syncNew makes the new file or directory path and its entry in dir
// durable.
func syncNew(fsync func(string) error, path, dir string) error {
	if err := fsync(path); err != nil {
		return err
	}
	return fsync(dir)
}
