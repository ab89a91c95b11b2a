package audit

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestChainVerifies(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{Fsync: true})
	r := record("x1", 1)
	if err := l.Write(r); err != nil {
		t.Fatal(err)
	}
	writeN(t, l, "d", 4)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	res, err := VerifyFile(path)
	if err != nil || res.Lines != 5 || res.Checkpoints != 1 {
		t.Fatalf("verify = %+v, %v", res, err)
	}
	f := res.Files[0]
	if f.TotalLines != 7 || f.SealedThrough != 7 || f.UnsealedRecords != 0 || f.Sidecar == nil || f.Link != nil {
		t.Fatalf("file = %+v", f)
	}
	// Write reports the chain values it wrote.
	lines := splitLines(readFile(t, path))
	var got Record
	if err := json.Unmarshal([]byte(lines[1]), &got); err != nil {
		t.Fatal(err)
	}
	if got.PrevHash != r.PrevHash || got.Hash != r.Hash || len(r.Hash) != 64 {
		t.Fatalf("record %q/%q, line %q/%q", r.PrevHash, r.Hash, got.PrevHash, got.Hash)
	}
}

func TestHeaderNamesTheLog(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{})
	l.Close()
	lines := splitLines(readFile(t, path))
	var h controlLine
	if err := json.Unmarshal([]byte(lines[0]), &h); err != nil {
		t.Fatal(err)
	}
	keys := keysOf(t, path)
	if h.Event != EventLogOpened || len(h.LogID) != 32 || h.ChainKeyID != chainKeyID(keys.Chain) || h.Link != nil ||
		h.PrevHash != newChainMAC(keys.Chain).genesis(h.LogID, nil) {
		t.Fatalf("header %+v", h)
	}
}

// TestCheckLinesUnchanged: the event fields stay out of a Check's line.
func TestCheckLinesUnchanged(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{})
	writeN(t, l, "d", 1)
	line := splitLines(readFile(t, path))[1]
	for _, f := range []string{"decided_by", "why", "detail", "input", "sealed", "log_id", "checkpoint"} {
		if strings.Contains(line, `"`+f+`"`) {
			t.Errorf("Check line has %q: %s", f, line)
		}
	}
}

func TestReadAllSkipsControlLines(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{CheckpointEvery: 2})
	writeN(t, l, "d", 5)
	l.Close()
	recs, err := ReadAll(bytes.NewReader(readFile(t, path)))
	if err != nil || len(recs) != 5 || recs[0].DecisionID != "d1" || recs[4].DecisionID != "d5" {
		t.Fatalf("ReadAll = %d records, %v", len(recs), err)
	}
}

func TestCallersCannotWriteControlEvents(t *testing.T) {
	t.Parallel()
	_, l := newLog(t, Options{})
	for _, ev := range []string{EventCheckpoint, EventLogOpened} {
		if err := l.Write(&Record{Event: ev}); err == nil {
			t.Errorf("Write(%s) succeeded", ev)
		}
	}
}

// TestInLogCheckpoints: every CheckpointEvery lines, at Close; and without
// the sidecar the lines after the last one are reported unsealed.
func TestInLogCheckpoints(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{CheckpointEvery: 4})
	writeN(t, l, "d", 10)
	data := readFile(t, path) // before Close: no final checkpoint yet
	keys := keysOf(t, path)
	res, verr := verifyBytes(t, data, nil, keys)
	if verr != nil {
		t.Fatal(verr)
	}
	f := res.Files[0]
	// header, d1-d3, cp (line 5), d4-d7, cp (line 10), d8-d10: four lines between checkpoints
	if res.Checkpoints != 2 || f.SealedThrough != 9 || f.UnsealedLines != 4 || f.UnsealedRecords != 3 || !strings.Contains(f.SealedBy, "line 10") {
		t.Fatalf("without sidecar: %+v", f)
	}
	if _, err := Verify(bytes.NewReader(data), nil, VerifyOptions{Keys: keys, RequireSidecar: true}); err == nil || !strings.Contains(err.Error(), string(ProblemNoSidecar)) {
		t.Fatalf("RequireSidecar: %v", err)
	}
	l.Close()
	res, err := VerifyFile(path)
	if err != nil || res.Checkpoints != 3 || res.Files[0].UnsealedRecords != 0 {
		t.Fatalf("after Close: %+v %v", res, err)
	}
}

// TestTornTailRepaired: a crash mid-write leaves a partial last line; Verify
// reports it (it was never acknowledged), reopening cuts it off and the chain
// continues.
func TestTornTailRepaired(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{})
	writeN(t, l, "d", 3)
	l.Close()
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"ts":"2026-01-01T00:00:00Z","decision_id":"torn","deci`)
	f.Close()
	res, err := VerifyFile(path)
	if err != nil || res.Files[0].TornTailBytes != 55 || res.Files[0].TotalLines != 5 {
		t.Fatalf("torn log: %+v %v", res.Files, err)
	}
	l, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	writeN(t, l, "e", 2)
	l.Close()
	res, err = VerifyFile(path)
	if err != nil || res.Lines != 5 || res.Files[0].TornTailBytes != 0 {
		t.Fatalf("after repair: %+v, %v", res, err)
	}
}

// TestUnsealedTailAdopted: a crash after a batch reached the file but before
// its sidecar checkpoint. Verify reports the lines as unsealed; Open checks
// them and seals them.
func TestUnsealedTailAdopted(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{})
	writeN(t, l, "d", 2)
	sidecar := readFile(t, path+SidecarSuffix)
	writeN(t, l, "e", 3)
	l.Close()
	lines := splitLines(readFile(t, path))
	crashed := []byte(strings.Join(lines[:len(lines)-1], "")) // without the Close checkpoint
	os.WriteFile(path, crashed, 0o600)
	os.WriteFile(path+SidecarSuffix, sidecar, 0o600)
	res, err := VerifyFile(path)
	if err != nil || res.Files[0].UnsealedRecords != 3 {
		t.Fatalf("crashed log: %+v %v", res.Files, err)
	}
	l, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	res, err = VerifyFile(path) // still open: sealed by the sidecar alone
	if err != nil || res.Lines != 5 || res.Files[0].UnsealedRecords != 0 || res.Files[0].SealedThrough != 6 {
		t.Fatalf("after Open: %+v %v", res.Files, err)
	}
	l.Close()
}

func TestOpenRefuses(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		damage func(t *testing.T, path string)
		want   string
	}{
		"log deleted, sidecar kept": {func(t *testing.T, path string) { os.Remove(path) }, "deleted or truncated"},
		"sidecar deleted":           {func(t *testing.T, path string) { os.Remove(path + SidecarSuffix) }, "no valid checkpoint sidecar"},
		"last lines deleted": {func(t *testing.T, path string) {
			lines := splitLines(readFile(t, path))
			os.WriteFile(path, []byte(strings.Join(lines[:len(lines)-2], "")), 0o600)
		}, "truncated"},
		"sealed line edited": {func(t *testing.T, path string) {
			data := readFile(t, path)
			os.WriteFile(path, bytes.Replace(data, []byte(`"lines":4`), []byte(`"lines":5`), 1), 0o600)
		}, "rewritten"},
		"unsealed line edited": {func(t *testing.T, path string) {
			lines := splitLines(readFile(t, path))
			lines = append(lines, strings.Replace(lines[1], `"allow"`, `"deny"`, 1))
			os.WriteFile(path, []byte(strings.Join(lines, "")), 0o600)
		}, "edited"},
		"signing key replaced": {func(t *testing.T, path string) {
			_, signing := DefaultKeyFiles(path)
			os.Remove(signing)
			loadOrCreateSigningKey(signing)
		}, "unknown key"},
		"chain key gone": {func(t *testing.T, path string) {
			chain, _ := DefaultKeyFiles(path)
			os.Remove(chain)
		}, "no such file"},
		"old unkeyed format": {func(t *testing.T, path string) {
			os.Remove(path + SidecarSuffix)
			os.WriteFile(path, []byte(`{"decision_id":"a","prev_hash":"0000000000000000000000000000000000000000000000000000000000000000"}`+"\n"), 0o600)
		}, "not a keyed audit log"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path, l := newLog(t, Options{})
			writeN(t, l, "d", 3)
			l.Close()
			tc.damage(t, path)
			l, err := Open(path, Options{})
			if err == nil {
				l.Close()
				t.Fatal("opened")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

func TestKeysAreSecretFiles(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{})
	l.Close()
	chain, signing := DefaultKeyFiles(path)
	for _, f := range []string{chain, signing, path, path + SidecarSuffix} {
		st, err := os.Stat(f)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, st.Mode(), err)
		}
	}
	if b := readFile(t, chain); len(b) != 32 {
		t.Fatalf("chain key of %d bytes", len(b))
	}
	os.Chmod(chain, 0o644)
	if _, err := Open(path, Options{}); err == nil || !strings.Contains(err.Error(), "accessible by others") {
		t.Fatalf("open with a readable key: %v", err)
	}
}

// TestKeysByPath: keys given by path are created there, not beside the log.
func TestKeysByPath(t *testing.T) {
	t.Parallel()
	dir, keyDir := t.TempDir(), t.TempDir()
	opts := Options{KeyFile: filepath.Join(keyDir, "k"), SigningKeyFile: filepath.Join(keyDir, "s.pem")}
	path := filepath.Join(dir, "a.jsonl")
	l, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	writeN(t, l, "d", 2)
	l.Close()
	if _, err := os.Stat(filepath.Join(dir, ChainKeyName)); err == nil {
		t.Fatal("key created beside the log")
	}
	keys, err := LoadVerifyKeys(opts.KeyFile, opts.SigningKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyFiles([]string{path}, VerifyOptions{Keys: keys, RequireSidecar: true}); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyRangeForEvidence(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{CheckpointEvery: 3})
	writeN(t, l, "d", 9) // ts 1s … 9s
	l.Close()
	var seen []string
	res, err := VerifyFiles([]string{path}, VerifyOptions{Keys: keysOf(t, path), From: time.Unix(3, 0), To: time.Unix(6, 0),
		Visit: func(e Entry) error {
			var r Record
			if err := json.Unmarshal(e.Raw, &r); err != nil {
				return err
			}
			seen = append(seen, r.DecisionID+"@"+e.DecisionID)
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(seen, ",") != "d3@d3,d4@d4,d5@d5" || res.Selected != 3 || !res.SelectedSealed || res.FirstSelected.Line >= res.LastSelected.Line {
		t.Fatalf("seen %v, result %+v", seen, res)
	}
}

func asVerifyError(err error) *VerifyError {
	ve, _ := err.(*VerifyError)
	return ve
}

// TestReopenWithoutWrites: opening and closing a log that ends with a
// checkpoint adds nothing.
func TestReopenWithoutWrites(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{})
	writeN(t, l, "d", 2)
	l.Close()
	size := len(readFile(t, path))
	for range 3 {
		l, err := Open(path, Options{})
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
	}
	if got := len(readFile(t, path)); got != size {
		t.Fatalf("reopening grew the log from %d to %d bytes", size, got)
	}
	if _, err := VerifyFiles([]string{path}, VerifyOptions{Keys: keysOf(t, path), RequireSidecar: true}); err != nil {
		t.Fatal(err)
	}
}

// TestTornHeaderStartsAgain: power lost while a new log wrote its header,
// before any Write: the log starts again.
func TestTornHeaderStartsAgain(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	os.WriteFile(path, []byte(`{"ts":"2026-03-02T12:00:00Z","event":"log_op`), 0o600)
	l, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	writeN(t, l, "d", 1)
	l.Close()
	if res, err := VerifyFile(path); err != nil || res.Lines != 1 {
		t.Fatalf("verify: %+v %v", res, err)
	}
}

// TestNoKeysForAMissingLog: a deleted log with its sidecar left is an error,
// and Open does not create keys for it.
func TestNoKeysForAMissingLog(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{})
	writeN(t, l, "d", 1)
	l.Close()
	chain, signing := DefaultKeyFiles(path)
	os.Remove(path)
	os.Remove(chain)
	os.Remove(signing)
	if _, err := Open(path, Options{}); err == nil {
		t.Fatal("opened")
	}
	if _, err := os.Stat(chain); err == nil {
		t.Fatal("created a chain key for a log whose sidecar names another")
	}
}
