package audit

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestConcurrentWritersEachOnce: 200 writers at once; the chain verifies and
// holds every record exactly once, and every Write reports its own line's
// chain values.
func TestConcurrentWritersEachOnce(t *testing.T) {
	t.Parallel()
	var writes atomic.Int64
	path, l := newLog(t, Options{CheckpointEvery: 64, hooks: &testHooks{wrap: func(name string, f file) file {
		if strings.HasSuffix(name, SidecarSuffix) {
			return f
		}
		return &faultFile{file: f, name: name, onWrite: func(string, []byte, int64) (bool, int, error) { writes.Add(1); return false, 0, nil }}
	}}})
	const writers, each = 200, 5
	hashes := make([][each]string, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				r := record(fmt.Sprintf("w%d-%d", w, i), i)
				if err := l.Write(r); err != nil {
					t.Error(err)
					return
				}
				hashes[w][i] = r.Hash
			}
		})
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	res, err := VerifyFile(path)
	if err != nil || res.Lines != writers*each || res.Files[0].UnsealedRecords != 0 {
		t.Fatalf("verify: %+v %v", res, err)
	}
	recs, err := ReadAll(bytes.NewReader(readFile(t, path)))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	for _, r := range recs {
		if _, dup := seen[r.DecisionID]; dup {
			t.Fatalf("%s twice", r.DecisionID)
		}
		seen[r.DecisionID] = r.Hash
	}
	for w := range writers {
		for i := range each {
			if h, ok := seen[fmt.Sprintf("w%d-%d", w, i)]; !ok || h != hashes[w][i] {
				t.Fatalf("w%d-%d: in log %v, hash %s, Write said %s", w, i, ok, h, hashes[w][i])
			}
		}
	}
	// How many Writes shared a commit depends on the scheduler (on a loaded
	// machine they may not overlap at all); TestGroupCommitOneWritePerBatch lines them up.
	t.Logf("%d records in %d writes", writers*each, writes.Load())
}

// gatedLog holds the committer inside its next write of the log file until
// released, so that a test can line up Writes behind it.
type gatedLog struct {
	path      string
	l         *Log
	armed     atomic.Bool
	entered   chan struct{}
	release   chan struct{}
	logWrites atomic.Int64 // write calls on the log file so far
	// Faults during the batch whose log write is the given number (0: none):
	failWrite    atomic.Int64 // writes half, then fails
	failSync     atomic.Int64
	failSidecar  atomic.Int64
	failTruncate atomic.Bool
	// beforeWrite is the log as it was when the latest write call began.
	beforeWrite atomic.Pointer[[]byte]
}

func newGatedLog(t *testing.T, opts Options) *gatedLog {
	t.Helper()
	g := &gatedLog{entered: make(chan struct{}, 1), release: make(chan struct{})}
	opts.hooks = &testHooks{wrap: func(name string, f file) file {
		ff := &faultFile{file: f, name: name}
		if strings.HasSuffix(name, SidecarSuffix) {
			ff.onWrite = func(_ string, p []byte, off int64) (bool, int, error) {
				if g.failSidecar.CompareAndSwap(g.logWrites.Load(), 0) {
					n, _ := f.WriteAt(p[:100], off) // a torn slot
					return true, n, errors.New("sidecar: no space left on device")
				}
				return false, 0, nil
			}
			return ff
		}
		ff.onWrite = func(_ string, p []byte, off int64) (bool, int, error) {
			n := g.logWrites.Add(1)
			if before, err := os.ReadFile(name); err == nil {
				g.beforeWrite.Store(&before)
			}
			if g.armed.Swap(false) {
				g.entered <- struct{}{}
				<-g.release
			}
			if g.failWrite.CompareAndSwap(n, 0) {
				n, _ := f.WriteAt(p[:len(p)/2], off)
				return true, n, errors.New("no space left on device")
			}
			return false, 0, nil
		}
		ff.onSync = func(string) error {
			if g.failSync.CompareAndSwap(g.logWrites.Load(), 0) {
				return errors.New("fsync: input/output error")
			}
			return nil
		}
		ff.onTrunc = func(string) error {
			if g.failTruncate.Load() {
				return errors.New("truncate: read-only file system")
			}
			return nil
		}
		return ff
	}}
	g.path, g.l = newLog(t, opts)
	return g
}

// lineUp writes one record and holds its batch in the write, then starts n
// more Writes and waits until they wait in the next batch. It returns the
// results: the n others', then the first Write's.
func (g *gatedLog) lineUp(t *testing.T, n int, between func()) (rest []error, first error) {
	t.Helper()
	g.armed.Store(true)
	firstDone := make(chan error)
	go func() { firstDone <- g.l.Write(record("first", 0)) }()
	<-g.entered
	rest = make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { rest[i] = g.l.Write(record(fmt.Sprintf("b%d", i), i)) })
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		g.l.mu.Lock()
		queued := len(g.l.cur.lines)
		g.l.mu.Unlock()
		if queued == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d writers queued", queued, n)
		}
		time.Sleep(time.Millisecond)
	}
	between()
	close(g.release)
	first = <-firstDone
	wg.Wait()
	return rest, first
}

func TestGroupCommitOneWritePerBatch(t *testing.T) {
	t.Parallel()
	g := newGatedLog(t, Options{Fsync: true})
	before := g.logWrites.Load()
	rest, first := g.lineUp(t, 20, func() {})
	if err := errors.Join(append(rest, first)...); err != nil {
		t.Fatal(err)
	}
	if n := g.logWrites.Load() - before; n != 2 {
		t.Fatalf("21 Writes in %d write calls, want 2 batches", n)
	}
	g.l.Close()
	if res, err := VerifyFile(g.path); err != nil || res.Lines != 21 {
		t.Fatalf("verify: %+v %v", res, err)
	}
}

// TestFailedBatchFailsEveryWrite: a batch that fails halfway through its
// write, its fsync or its sidecar checkpoint fails every Write in it and
// leaves the log as it was; the next Write succeeds.
func TestFailedBatchFailsEveryWrite(t *testing.T) {
	t.Parallel()
	for name, fault := range map[string]func(g *gatedLog) *atomic.Int64{
		"short write":   func(g *gatedLog) *atomic.Int64 { return &g.failWrite },
		"fsync":         func(g *gatedLog) *atomic.Int64 { return &g.failSync },
		"sidecar write": func(g *gatedLog) *atomic.Int64 { return &g.failSidecar },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			g := newGatedLog(t, Options{Fsync: true})
			writeN(t, g.l, "d", 2)
			rest, first := g.lineUp(t, 10, func() {
				// The first batch is in its write; the next one will fail.
				fault(g).Store(g.logWrites.Load() + 1)
			})
			if first != nil {
				t.Fatalf("first batch: %v", first)
			}
			for i, err := range rest {
				if err == nil {
					t.Fatalf("Write %d of the failed batch succeeded", i)
				}
			}
			if !bytes.Equal(readFile(t, g.path), *g.beforeWrite.Load()) {
				t.Fatal("the failed batch left bytes in the log")
			}
			if res, err := VerifyFile(g.path); err != nil || res.Lines != 3 {
				t.Fatalf("after the failed batch: %+v %v", res, err)
			}
			writeN(t, g.l, "e", 1)
			g.l.Close()
			if res, err := VerifyFile(g.path); err != nil || res.Lines != 4 {
				t.Fatalf("after recovery: %+v %v", res, err)
			}
		})
	}
}

// TestFailedUndoBreaksTheLog: when a failed batch cannot be truncated away,
// every later Write fails (and is denied) rather than extend a log whose end
// is unknown.
func TestFailedUndoBreaksTheLog(t *testing.T) {
	t.Parallel()
	g := newGatedLog(t, Options{})
	writeN(t, g.l, "d", 1)
	g.failWrite.Store(g.logWrites.Load() + 1)
	g.failTruncate.Store(true)
	if err := g.l.Write(record("x", 1)); err == nil {
		t.Fatal("failed write succeeded")
	}
	err := g.l.Write(record("y", 2))
	if err == nil || !strings.Contains(err.Error(), "unusable") {
		t.Fatalf("write after a failed undo: %v", err)
	}
	g.l.Close()
}

func TestWriteAfterClose(t *testing.T) {
	t.Parallel()
	_, l := newLog(t, Options{})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Write(record("late", 1)); err == nil {
		t.Fatal("write after Close succeeded")
	}
	if _, err := l.Rotate(); err == nil {
		t.Fatal("rotate after Close succeeded")
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestCloseCommitsPending: Writes racing Close either land (and verify) or
// fail; none is lost after reporting success.
func TestCloseCommitsPending(t *testing.T) {
	t.Parallel()
	path, l := newLog(t, Options{})
	var ok atomic.Int64
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			if l.Write(record(fmt.Sprintf("r%d", i), i)) == nil {
				ok.Add(1)
			}
		})
	}
	l.Close()
	wg.Wait()
	res, err := VerifyFile(path)
	if err != nil || res.Lines != int(ok.Load()) {
		t.Fatalf("verify: %d lines, %d acknowledged, %v", res.Lines, ok.Load(), err)
	}
}

func TestRecordTooLarge(t *testing.T) {
	t.Parallel()
	_, l := newLog(t, Options{})
	r := record("big", 1)
	r.Why = strings.Repeat("x", MaxLineBytes)
	if err := l.Write(r); err == nil {
		t.Fatal("oversized record written")
	}
	writeN(t, l, "d", 1)
}
