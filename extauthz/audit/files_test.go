package audit

import (
	"errors"
	"os"
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
