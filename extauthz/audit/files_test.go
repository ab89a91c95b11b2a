package audit

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestLogFiles: a log's rotated files, oldest first, then the live one; no
// sidecar, leftover or look-alike file; the list verifies as one chain.
func TestLogFiles(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{})
	var want []string
	for range 3 {
		writeN(t, l, "r", 2)
		r, err := l.Rotate()
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, r)
	}
	writeN(t, l, "live", 1)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	want = append(want, path)
	for _, junk := range []string{path + ".next", path + ".2026.bak", path + ".20260302T120000.000000000Z.checkpoint", path + "x.20260302T120000.000000000Z", filepath.Join(filepath.Dir(path), "other.jsonl.20260302T120000.000000000Z")} {
		if err := os.WriteFile(junk, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	got, err := LogFiles(path)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("LogFiles: %v %v, want %v", got, err, want)
	}
	if _, err := VerifyFiles(got, VerifyOptions{Keys: keysOf(t, path), RequireSidecar: true}); err != nil {
		t.Fatalf("the listed files do not verify as one chain: %v", err)
	}
	if _, err := LogFiles(filepath.Join(t.TempDir(), "none.jsonl")); err == nil {
		t.Fatal("a log that does not exist listed")
	}
}
