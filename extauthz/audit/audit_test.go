package audit

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func writeN(t *testing.T, l *Log, n int) {
	t.Helper()
	for i := range n {
		if err := l.Write(&Record{TS: time.Unix(int64(i), 0).UTC(), DecisionID: "d" + string(rune('a'+i)), Decision: "allow"}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestChainVerifies(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := Open(path, Options{Fsync: true})
	if err != nil {
		t.Fatal(err)
	}
	writeN(t, l, 5)
	l.Close()
	res, err := VerifyFile(path)
	if err != nil || res.Lines != 5 {
		t.Fatalf("verify = %+v, %v", res, err)
	}
}

func TestTamperingDetected(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, _ := Open(path, Options{})
	writeN(t, l, 4)
	l.Close()
	data, _ := os.ReadFile(path)
	lines := strings.SplitAfter(string(data), "\n")
	tests := map[string]string{
		"edited decision": strings.Replace(string(data), `"decision":"allow"`, `"decision":"deny"`, 1),
		"deleted line":    lines[0] + lines[2] + lines[3],
		"reordered":       lines[1] + lines[0] + lines[2] + lines[3],
	}
	for name, body := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := Verify(strings.NewReader(body)); err == nil {
				t.Fatal("tampered log verified")
			}
		})
	}
}

// TestTornTailRepaired: a crash mid-write leaves a partial last line; reopening
// cuts it off and the chain continues from the last complete line.
func TestTornTailRepaired(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, _ := Open(path, Options{})
	writeN(t, l, 3)
	l.Close()
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"ts":"2026-01-01T00:00:00Z","decision_id":"torn","deci`)
	f.Close()
	if _, err := VerifyFile(path); err == nil {
		t.Fatal("torn log verified before repair")
	}
	l, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	writeN(t, l, 2)
	l.Close()
	res, err := VerifyFile(path)
	if err != nil || res.Lines != 5 {
		t.Fatalf("after repair: %+v, %v", res, err)
	}
}

func TestConcurrentWritesKeepChain(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, _ := Open(path, Options{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { writeN(t, l, 50) })
	}
	wg.Wait()
	l.Close()
	res, err := VerifyFile(path)
	if err != nil || res.Lines != 400 {
		t.Fatalf("verify = %+v, %v", res, err)
	}
}

func TestWriteFailureReported(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, _ := Open(path, Options{})
	writeN(t, l, 1)
	l.f.Close() // the file descriptor goes bad under the log
	if err := l.Write(&Record{DecisionID: "x"}); err == nil {
		t.Fatal("write on a closed file reported success")
	}
	data, _ := os.ReadFile(path)
	if _, err := Verify(bytes.NewReader(data)); err != nil {
		t.Fatalf("log damaged by failed write: %v", err)
	}
}
