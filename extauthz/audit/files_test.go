package audit

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestReadRangeAcrossRotation: a time range reads the rotated files and the
// live one in order, skips the log's own lines, stops at the limit with
// ErrTooMany, and ignores a last line still being written.
func TestReadRangeAcrossRotation(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{})
	writeN(t, l, "a", 3) // ts 1..3
	if _, err := l.Rotate(); err != nil {
		t.Fatal(err)
	}
	writeN(t, l, "b", 3) // ts 1..3 again, in the new file
	files, err := Files(path)
	if err != nil || len(files) != 2 || files[1] != path {
		t.Fatalf("Files = %v, %v", files, err)
	}
	ids := func(rs []Record) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.DecisionID)
		}
		return out
	}
	all, err := ReadRange(path, time.Time{}, time.Time{}, 100)
	if err != nil || !slices.Equal(ids(all), []string{"a1", "a2", "a3", "b1", "b2", "b3"}) {
		t.Fatalf("whole log: %v, %v", ids(all), err)
	}
	mid, err := ReadRange(path, time.Unix(2, 0), time.Unix(3, 0), 100)
	if err != nil || !slices.Equal(ids(mid), []string{"a2", "b2"}) {
		t.Fatalf("[2, 3): %v, %v", ids(mid), err)
	}
	some, err := ReadRange(path, time.Time{}, time.Time{}, 4)
	if !errors.Is(err, ErrTooMany) || len(some) != 4 {
		t.Fatalf("limit 4: %d records, %v", len(some), err)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"ts":"1970-01-01T00:00:02Z","decision_id":"torn`); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if all, err := ReadRange(path, time.Time{}, time.Time{}, 100); err != nil || len(all) != 6 {
		t.Fatalf("with a partial last line: %v, %v", ids(all), err)
	}
}

// TestFilesListsRotatedOldestFirst: a log's rotated files, oldest first, then the live one; no
// sidecar, leftover or look-alike file; the list verifies as one chain.
func TestFilesListsRotatedOldestFirst(t *testing.T) {
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
	got, err := Files(path)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("Files: %v %v, want %v", got, err, want)
	}
	if _, err := VerifyFiles(got, VerifyOptions{Keys: keysOf(t, path), RequireSidecar: true}); err != nil {
		t.Fatalf("the listed files do not verify as one chain: %v", err)
	}
	if got, err := Files(filepath.Join(t.TempDir(), "none.jsonl")); err != nil || len(got) != 0 {
		t.Fatalf("a log that does not exist: %v %v", got, err)
	}
}
