package secretfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestWriteNewNeverReplaces: the first write lands with mode 0600; a second
// is os.ErrExist and leaves the first's bytes; no temporary file stays.
func TestWriteNewNeverReplaces(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "home")
	path := filepath.Join(dir, "k.pem")
	if err := WriteNew(path, []byte("one")); err != nil {
		t.Fatal(err)
	}
	if err := WriteNew(path, []byte("two")); !errors.Is(err, os.ErrExist) {
		t.Fatalf("second write: %v, want ErrExist", err)
	}
	b, err := os.ReadFile(path)
	fi, _ := os.Stat(path)
	if err != nil || string(b) != "one" || fi.Mode().Perm() != 0o600 {
		t.Fatalf("file %q, %v, mode %v", b, err, fi.Mode())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("%d files in the directory, want 1", len(ents))
	}
}
