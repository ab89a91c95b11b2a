package audit

import (
	"os"
	"strings"
	"testing"
	"time"
)

// verifyLive verifies a log that may still be written, with its sidecar
// required.
func verifyLive(t *testing.T, path string) FileResult {
	t.Helper()
	res, err := VerifyFiles([]string{path}, VerifyOptions{Keys: keysOf(t, path), RequireSidecar: true})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	return res.Files[len(res.Files)-1]
}

// TestSealEveryLetsLinesWait: with SealEvery, Writes return before their
// sidecar seal; the log verifies meanwhile (the lines count as unsealed), and
// Close seals every line.
func TestSealEveryLetsLinesWait(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{SealEvery: time.Hour})
	writeN(t, l, "r", 5)
	if f := verifyLive(t, path); f.UnsealedRecords != 5 || f.Records != 5 {
		t.Fatalf("before the seal: %d of %d records unsealed, want 5 of 5", f.UnsealedRecords, f.Records)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if f := verifyLive(t, path); f.UnsealedLines != 0 || f.Records != 5 {
		t.Fatalf("after Close: %d lines unsealed of %d records", f.UnsealedLines, f.Records)
	}
}

// TestSealEveryTimerSeals: lines a batch left unsealed are sealed by the
// timer, with no further Write and no Close.
func TestSealEveryTimerSeals(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{SealEvery: 20 * time.Millisecond})
	for i := range 3 {
		writeN(t, l, "t"+string(rune('a'+i)), 1)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		f := verifyLive(t, path)
		if f.UnsealedLines == 0 && f.Records == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never sealed: %d lines unsealed", f.UnsealedLines)
		}
	}
}

// TestSealEveryCheckpointLines: checkpoint lines keep their cadence while
// the sidecar lags (each copies a seal made for it), and the log verifies
// from them alone, without its sidecar.
func TestSealEveryCheckpointLines(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{SealEvery: time.Hour, CheckpointEvery: 3})
	writeN(t, l, "c", 10)
	f := verifyLive(t, path)
	if f.Checkpoints != 3 {
		t.Fatalf("%d checkpoint lines for 10 records every 3, want 3", f.Checkpoints)
	}
	res, err := Verify(strings.NewReader(string(readFile(t, path))), nil, VerifyOptions{Keys: keysOf(t, path)})
	if err != nil || res.Files[0].SealedThrough < 10 {
		t.Fatalf("without the sidecar: sealed through %d, %v", res.Files[0].SealedThrough, err)
	}
}

// TestSealEveryCutIsFoundByTheNextLine: lines cut from a live log before
// their seal break the chain at the next line written, which then no longer
// verifies (the Log writes at the offset it knows).
func TestSealEveryCutIsFoundByTheNextLine(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{SealEvery: time.Hour})
	writeN(t, l, "k", 4)
	lines := splitLines(readFile(t, path))
	cut := int64(len(strings.Join(lines[:len(lines)-2], "")))
	if err := os.Truncate(path, cut); err != nil {
		t.Fatal(err)
	}
	writeN(t, l, "after", 1)
	l.Close()
	if _, err := VerifyFiles([]string{path}, VerifyOptions{Keys: keysOf(t, path), RequireSidecar: true}); err == nil {
		t.Fatal("a log cut before its seal, then written on, verifies")
	}
}

// TestSealEveryReopenSealsTheTail: a log left with unsealed lines (a crash:
// the process ends without Close) reopens with every line, sealed.
func TestSealEveryReopenSealsTheTail(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{SealEvery: time.Hour})
	writeN(t, l, "z", 6)
	// No Close: copy the files as a crash would leave them.
	dir := t.TempDir()
	crashed := dir + "/audit.jsonl"
	for _, suffix := range []string{"", SidecarSuffix} {
		if err := os.WriteFile(crashed+suffix, readFile(t, path+suffix), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	chainFile, signingFile := DefaultKeyFiles(path)
	l2, err := Open(crashed, Options{KeyFile: chainFile, SigningKeyFile: signingFile})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	res, err := VerifyFiles([]string{crashed}, VerifyOptions{Keys: keysOf(t, path), RequireSidecar: true})
	if err != nil || res.Lines != 6 || res.Files[0].UnsealedLines != 0 {
		t.Fatalf("reopened: %d records, %d unsealed lines, %v", res.Lines, res.Files[0].UnsealedLines, err)
	}
}
