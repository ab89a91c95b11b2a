package audit

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

const (
	crashChildEnv = "AUDIT_CRASH_CHILD_LOG"
	crashSealEnv  = "AUDIT_CRASH_SEAL_EVERY"
)

// TestCrashChild is the process TestCrashKeepsAcknowledgedLines kills: it
// writes from 8 goroutines until killed and prints each acknowledged id.
func TestCrashChild(t *testing.T) {
	path := os.Getenv(crashChildEnv)
	if path == "" {
		t.Skip("run by TestCrashKeepsAcknowledgedLines")
	}
	sealEvery, _ := time.ParseDuration(os.Getenv(crashSealEnv))
	l, err := Open(path, Options{CheckpointEvery: 50, SealEvery: sealEvery})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				id := fmt.Sprintf("w%d-%d", w, i)
				if err := l.Write(record(id, i)); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(3)
				}
				mu.Lock()
				fmt.Println(id)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

// TestCrashKeepsAcknowledgedLines kills a writing process with SIGKILL: the
// log, reopened, verifies and holds every line a Write acknowledged, once.
// The second round's process seals lazily (SealEvery), so it dies with
// acknowledged lines its sidecar does not seal yet.
func TestCrashKeepsAcknowledgedLines(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts a process")
	}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	for round := range 3 { // crash, reopen and crash again: recovery must compose
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+path)
		if round == 1 {
			cmd.Env = append(cmd.Env, crashSealEnv+"=1h")
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		acked := map[string]bool{}
		sc := bufio.NewScanner(out)
		deadline := time.Now().Add(60 * time.Second)
		for sc.Scan() {
			acked[sc.Text()] = true
			if len(acked) == 400+round*37 {
				cmd.Process.Kill()
			}
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				t.Fatal("child too slow")
			}
		}
		cmd.Wait()
		if len(acked) < 400 {
			t.Fatalf("round %d: child stopped after %d writes: %s", round, len(acked), stderr.String())
		}

		l, err := Open(path, Options{})
		if err != nil {
			t.Fatalf("round %d: reopen after the crash: %v", round, err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		res, err := VerifyFiles([]string{path}, VerifyOptions{Keys: keysOf(t, path), RequireSidecar: true})
		if err != nil {
			t.Fatalf("round %d: verify: %v", round, err)
		}
		recs, err := ReadAll(bytes.NewReader(readFile(t, path)))
		if err != nil {
			t.Fatal(err)
		}
		inLog := map[string]int{}
		for _, r := range recs {
			inLog[fmt.Sprintf("%d/%s", round, r.DecisionID)]++
		}
		for id := range acked {
			if inLog[fmt.Sprintf("%d/%s", round, id)] < 1 {
				t.Fatalf("round %d: acknowledged %s is not in the log", round, id)
			}
		}
		t.Logf("round %d: %d acknowledged, %d records in the log after %d rounds", round, len(acked), res.Lines, round+1)
	}
}
