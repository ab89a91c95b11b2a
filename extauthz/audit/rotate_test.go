package audit

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestRotationChainsFiles(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{})
	writeN(t, l, "a", 3)
	r1, err := l.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	writeN(t, l, "b", 2)
	r2, err := l.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	writeN(t, l, "c", 4)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(r1, path+".") || r1 >= r2 {
		t.Fatalf("rotated names %s, %s", r1, r2)
	}
	if _, err := os.Stat(path + ".next"); err == nil {
		t.Fatal("rotation left path.next")
	}
	keys := keysOf(t, path)
	files := []string{r1, r2, path}
	res, err := VerifyFiles(files, VerifyOptions{Keys: keys, RequireSidecar: true})
	if err != nil || res.Lines != 9 || len(res.Files) != 3 {
		t.Fatalf("verify: %+v %v", res, err)
	}
	for i, f := range res.Files {
		if f.UnsealedRecords != 0 || f.SealedThrough != f.TotalLines {
			t.Errorf("%s: %+v", f.Path, f)
		}
		if i > 0 && (f.Link == nil || f.Link.LogID != res.Files[i-1].LogID || f.Link.Head != res.Files[i-1].Head) {
			t.Errorf("%s links to %+v", f.Path, f.Link)
		}
		if i < 2 && !strings.Contains(f.SealedBy, "link") {
			t.Errorf("%s sealed by %s", f.Path, f.SealedBy)
		}
	}
	// Every rotated file ends with the final checkpoint.
	for _, f := range files[:2] {
		lines := splitLines(readFile(t, f))
		if !strings.Contains(lines[len(lines)-1], `"event":"checkpoint"`) {
			t.Errorf("%s does not end with a checkpoint", f)
		}
	}

	broken := map[string]struct {
		files []string
		file  string
	}{
		"middle file missing": {[]string{r1, path}, path},
		"files out of order":  {[]string{r2, r1, path}, r1},
		"first file alone":    {[]string{r2, path}, ""}, // fine: it continues an unverified log
	}
	for name, tc := range broken {
		_, err := VerifyFiles(tc.files, VerifyOptions{Keys: keys})
		ve := asVerifyError(err)
		if tc.file == "" {
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			continue
		}
		if ve == nil || ve.Problem != ProblemLink || ve.File != tc.file || ve.Line != 1 {
			t.Errorf("%s: %v", name, err)
		}
	}
	// An older file cut short: caught by the next file's link, though it
	// verifies alone (its sidecar went to the new log).
	lines := splitLines(readFile(t, r1))
	os.WriteFile(r1, join(lines[:len(lines)-2]), 0o600)
	if _, err := VerifyFiles([]string{r1}, VerifyOptions{Keys: keys}); err != nil {
		t.Fatalf("cut file alone: %v", err)
	}
	_, err = VerifyFiles(files, VerifyOptions{Keys: keys})
	if ve := asVerifyError(err); ve == nil || ve.Problem != ProblemLink || ve.File != r2 {
		t.Fatalf("cut first file: %v", err)
	}
}

func TestRotationBySize(t *testing.T) {
	t.Parallel()
	const maxBytes = 4000
	path, l := newLog(t, Options{MaxBytes: maxBytes})
	writeN(t, l, "d", 25)
	l.Close()
	files, _ := filepath.Glob(path + ".2*")
	slices.Sort(files)
	if len(files) < 3 {
		t.Fatalf("%d rotated files", len(files))
	}
	for _, f := range files {
		if st, _ := os.Stat(f); st.Size() > maxBytes+1000 {
			t.Errorf("%s has %d bytes", f, st.Size())
		}
	}
	res, err := VerifyFiles(append(files, path), VerifyOptions{Keys: keysOf(t, path), RequireSidecar: true})
	if err != nil || res.Lines != 25 {
		t.Fatalf("verify: %d lines, %v", res.Lines, err)
	}
}

// TestInterruptedRotation: a crash between the steps of a rotation leaves a
// state that Open completes and that verifies.
func TestInterruptedRotation(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"after the old file moved aside", "before the new log's first seal"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path, l := newLog(t, Options{})
			writeN(t, l, "a", 3)
			rotated, err := l.Rotate()
			if err != nil {
				t.Fatal(err)
			}
			header := readFile(t, path) // the new log: its header only
			l.Close()

			// The sidecar as it was between the renames: the old log's last seal.
			var h controlLine
			json.Unmarshal(header, &h)
			old := Checkpoint{Seq: 1000, LogID: h.Link.LogID, Lines: h.Link.Lines, Head: h.Link.Head, TS: h.TS}
			st, _ := os.Stat(rotated)
			old.Bytes = st.Size()
			old.sign(signerOf(t, path))
			slot, _ := encodeSlot(&old)
			os.WriteFile(path+SidecarSuffix, append(slot, blankSlot...), 0o600)
			os.Remove(path)
			target := path
			if name == "after the old file moved aside" {
				target = path + ".next"
			}
			os.WriteFile(target, header, 0o600)

			if target == path {
				res, err := VerifyFiles([]string{rotated, path}, VerifyOptions{Keys: keysOf(t, path), RequireSidecar: true})
				if err != nil || res.Files[0].SealedThrough != res.Files[0].TotalLines {
					t.Fatalf("verify before Open: %+v %v", res.Files, err)
				}
			}
			l, err = Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			writeN(t, l, "b", 2)
			l.Close()
			if _, err := os.Stat(path + ".next"); err == nil {
				t.Fatal("path.next left behind")
			}
			res, err := VerifyFiles([]string{rotated, path}, VerifyOptions{Keys: keysOf(t, path), RequireSidecar: true})
			if err != nil || res.Lines != 5 {
				t.Fatalf("verify: %+v %v", res, err)
			}
		})
	}
}

// TestAbandonedRotation: a crash before the old file moved aside leaves
// PATH.next beside PATH; Open drops it and the old log goes on.
func TestAbandonedRotation(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{})
	writeN(t, l, "a", 2)
	l.Close()
	os.WriteFile(path+".next", []byte(`{"event":"log_opened"}`+"\n"), 0o600)
	l, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	writeN(t, l, "b", 1)
	l.Close()
	if _, err := os.Stat(path + ".next"); err == nil {
		t.Fatal("path.next left behind")
	}
	if res, err := VerifyFile(path); err != nil || res.Lines != 3 {
		t.Fatalf("verify: %+v %v", res, err)
	}
}
