// Package secretfile writes key material the service creates for itself.
package secretfile

import (
	"os"
	"path/filepath"
)

// WriteNew writes data to path with mode 0600 (parent directories 0700),
// never replacing an existing file and never leaving a partial one: it writes
// a temporary file, syncs it, then hard-links it into place, which fails with
// os.ErrExist if path exists (two processes creating the same key: one wins,
// the other reads the winner's).
func WriteNew(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".key-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Link(tmp.Name(), path)
}
