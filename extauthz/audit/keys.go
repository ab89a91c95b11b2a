package audit

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// chainKeyLen is the size of the chain key and of each seal key.
const chainKeyLen = 32

// maxKeyFileBytes bounds what is read from a key file.
const maxKeyFileBytes = 16 << 10

// readSecret reads a key file, refusing one that group or others can read,
// as ssh does: whoever reads the chain key can rebuild the chain.
func readSecret(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("audit: key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("audit: key %s is accessible by others (mode %v); chmod 600 it", path, st.Mode().Perm())
	}
	return readBounded(path)
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("audit: key: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("audit: key %s: %w", path, err)
	}
	if len(data) > maxKeyFileBytes {
		return nil, fmt.Errorf("audit: key %s: larger than %d bytes", path, maxKeyFileBytes)
	}
	return data, nil
}

// writeNewSecret writes data to path with mode 0600 (parent directories 0700),
// never replacing an existing file and never leaving a partial one: it writes
// a temporary file, then hard-links it into place, which fails with
// os.ErrExist if path exists.
func writeNewSecret(path string, data []byte) error {
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
