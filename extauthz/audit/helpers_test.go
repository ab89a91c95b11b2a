package audit

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// newLog opens a log in a fresh directory (keys beside it).
func newLog(t testing.TB, opts Options) (string, *Log) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return path, l
}

func record(id string, i int) *Record {
	return &Record{TS: time.Unix(int64(i), 0).UTC(), DecisionID: id, Decision: "allow", Tool: "db.read"}
}

// writeN writes n records named prefix1 … prefixN.
func writeN(t testing.TB, l *Log, prefix string, n int) {
	t.Helper()
	for i := 1; i <= n; i++ {
		if err := l.Write(record(fmt.Sprintf("%s%d", prefix, i), i)); err != nil {
			t.Fatal(err)
		}
	}
}

// keysOf loads the verification keys beside a log.
func keysOf(t testing.TB, path string) VerifyKeys {
	t.Helper()
	chainFile, signingFile := DefaultKeyFiles(path)
	k, err := LoadVerifyKeys(chainFile, signingFile)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func signerOf(t testing.TB, path string) ed25519.PrivateKey {
	t.Helper()
	_, signingFile := DefaultKeyFiles(path)
	k, err := LoadSigningKey(signingFile)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// splitLines splits a log into lines with their newlines.
func splitLines(data []byte) []string {
	return strings.SplitAfter(strings.TrimSuffix(string(data), "\n"), "\n")
}

// lineOf is the 1-based line holding decision id (or, for "cp2", the second
// checkpoint line).
func lineOf(t testing.TB, lines []string, id string) int {
	t.Helper()
	cps := 0
	for i, l := range lines {
		if strings.Contains(l, `"event":"checkpoint"`) {
			cps++
			if id == fmt.Sprintf("cp%d", cps) {
				return i + 1
			}
		}
		if strings.Contains(l, `"decision_id":"`+id+`"`) {
			return i + 1
		}
	}
	t.Fatalf("no line %s", id)
	return 0
}

// rechain rewrites prev_hash and hash of every line from line from (1-based)
// on under key, as someone holding key would after editing lines. With
// from == 1 it recomputes the genesis too.
func rechain(t testing.TB, lines []string, key []byte, from int) []string {
	t.Helper()
	m := newChainMAC(key)
	out := make([]string, len(lines))
	copy(out, lines)
	head := ""
	for i, l := range out {
		b := []byte(strings.TrimSuffix(l, "\n"))
		prefix, sum, ok := splitLine(b)
		if !ok {
			t.Fatalf("line %d is not a chain line", i+1)
		}
		if i+1 < from {
			head = string(sum)
			continue
		}
		var f lineFields
		if err := json.Unmarshal(b, &f); err != nil {
			t.Fatal(err)
		}
		prev := head
		if i == 0 {
			prev = m.genesis(f.LogID, f.Link)
		}
		// prefix ends with "prev_hash":"<64 hex>"
		p := append([]byte{}, prefix...)
		copy(p[len(p)-1-hashHexLen:], prev)
		var h [hashHexLen]byte
		m.line(p, h[:])
		head = string(h[:])
		out[i] = string(p) + `,"hash":"` + head + `"}` + "\n"
	}
	return out
}

// verifyBytes verifies a log and sidecar held in memory.
func verifyBytes(t testing.TB, log, sidecar []byte, keys VerifyKeys) (VerifyResult, *VerifyError) {
	t.Helper()
	res, err := Verify(bytes.NewReader(log), sidecar, VerifyOptions{Keys: keys})
	if err == nil {
		return res, nil
	}
	var ve *VerifyError
	if !errors.As(err, &ve) {
		t.Fatalf("verify: %v is not a VerifyError", err)
	}
	return res, ve
}

// faultFile puts faults under a Log's files.
type faultFile struct {
	file
	name    string
	onWrite func(name string, p []byte, off int64) (bool, int, error)
	onSync  func(name string) error
	onTrunc func(name string) error
}

func (f *faultFile) WriteAt(p []byte, off int64) (int, error) {
	if f.onWrite != nil {
		if handled, n, err := f.onWrite(f.name, p, off); handled {
			return n, err
		}
	}
	return f.file.WriteAt(p, off)
}

func (f *faultFile) Sync() error {
	if f.onSync != nil {
		if err := f.onSync(f.name); err != nil {
			return err
		}
	}
	return f.file.Sync()
}

func (f *faultFile) Truncate(n int64) error {
	if f.onTrunc != nil {
		if err := f.onTrunc(f.name); err != nil {
			return err
		}
	}
	return f.file.Truncate(n)
}
