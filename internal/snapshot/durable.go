package snapshot

// A rename or a new file is durable only once the directory holding it
// is fsynced (and a file's bytes once the file is): without that a power
// cut may undo a volume directory's move into place, or leave an instance
// or owner file empty, after the metadata said otherwise. A layer
// snapshot's move is not fsynced (see createSnapshot): its contents are
// durable only through the unpack's sync_fs, which covers the move.

// withFsync replaces durable.SyncPath; tests record the calls.
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
