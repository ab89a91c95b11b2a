package main

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	t.Parallel()
	// The command name may hold spaces and parentheses.
	line := "4242 (aisecops (x) y) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 12 0 1000 123456 789 18446744073709551615"
	got, err := parseProcStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if want := ticks(325); got != want {
		t.Fatalf("CPU %v, want %v (utime 250 + stime 75 ticks)", got, want)
	}
	if _, err := parseProcStat("4242 (short) S 1"); err == nil {
		t.Fatal("a truncated stat line parsed")
	}
}

func TestParseMachineStat(t *testing.T) {
	t.Parallel()
	// user nice system idle iowait irq softirq steal guest guest_nice
	got, err := parseMachineStat("cpu  100 5 50 9000 30 1 4 2 7 0\ncpu0 1 2 3 4 5 6 7\n")
	if err != nil {
		t.Fatal(err)
	}
	if want := ticks(100 + 5 + 50 + 1 + 4); got != want { // user nice system irq softirq
		t.Fatalf("busy %v, want %v", got, want)
	}
}

func TestParseRedisInfo(t *testing.T) {
	t.Parallel()
	info := "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\n# Stats\r\ntotal_commands_processed:900\r\ntotal_reads_processed:120\r\n" +
		"# Commandstats\r\ncmdstat_evalsha:calls=100,usec=5000,usec_per_call=50.00\r\ncmdstat_eval:calls=2,usec=100\r\ncmdstat_hset:calls=300,usec=1\r\n" +
		"# Memory\r\nused_memory:1048576\r\n# Keyspace\r\ndb0:keys=42,expires=40,avg_ttl=0\r\n"
	got, err := parseRedisInfo(info)
	if err != nil {
		t.Fatal(err)
	}
	want := redisStats{cpu: 3750 * time.Millisecond, reads: 120, scripts: 102, commands: 900, memory: 1 << 20, keys: 42}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if _, err := parseRedisInfo("# Server\r\nredis_version:5.0\r\n"); err == nil {
		t.Fatal("INFO without the fields needed parsed")
	}
}

func TestPercentile(t *testing.T) {
	t.Parallel()
	var lat []time.Duration
	for i := 1; i <= 1000; i++ {
		lat = append(lat, time.Duration(i))
	}
	for p, want := range map[float64]time.Duration{50: 500, 90: 900, 99: 990, 100: 1000, 0: 1} {
		if got := percentile(lat, p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
	if percentile(nil, 99) != 0 {
		t.Error("percentile of nothing")
	}
}

func TestServeAnnouncement(t *testing.T) {
	t.Parallel()
	for line, want := range map[string][2]string{
		`{"time":"x","level":"INFO","msg":"ext_authz gRPC listening","addr":"127.0.0.1:4000"}`: {"grpc", "127.0.0.1:4000"},
		`{"level":"INFO","msg":"HTTP API listening","addr":"127.0.0.1:4001"}`:                  {"http", "127.0.0.1:4001"},
		`{"level":"WARN","msg":"pprof listening: profiling is on","addr":"127.0.0.1:4002"}`:    {"pprof", "127.0.0.1:4002"},
		`{"level":"INFO","msg":"xDS listening","addr":"127.0.0.1:4003"}`:                       {},
		`not json at all`: {},
		`{"level":"WARN","msg":"store load failed; denying","run_id":"r","err":"dial tcp: refused"}`: {},
	} {
		k, v, ok := serveAnnouncement(line)
		if got := [2]string{k, v}; ok != (want != [2]string{}) || (ok && got != want) {
			t.Errorf("%s: got %v %v, want %v", line, got, ok, want)
		}
	}
}

func TestLoopbackOnly(t *testing.T) {
	t.Parallel()
	for _, a := range []string{"127.0.0.1:1", "[::1]:1", "localhost:1"} {
		if err := loopback(a); err != nil {
			t.Errorf("%s: %v", a, err)
		}
	}
	for _, a := range []string{":1", "0.0.0.0:1", "10.0.0.1:1", "example.com:1", "garbage"} {
		if loopback(a) == nil {
			t.Errorf("%s accepted", a)
		}
	}
}

// syncBuffer is an io.Writer safe for the noop's goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestClosedLoopOnTheFloor drives the real floor server over gRPC: every
// Check is answered OK, only the measured window is tallied, and the hooks
// run once each around it.
func TestClosedLoopOnTheFloor(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- runNoop(ctx, []string{"--addr", "127.0.0.1:0"}, out, io.Discard) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	var addr string
	for deadline := time.Now().Add(10 * time.Second); addr == "" && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if a, ok := strings.CutPrefix(strings.TrimSpace(out.String()), "listening "); ok {
			addr = a
		}
	}
	if addr == "" {
		t.Fatal("the floor did not say where it listens")
	}
	clients, closeAll, err := dial(addr, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll()
	p := newInProcess(t)
	gens := make([]func() (call, error), 4)
	for w := range gens {
		gens[w] = newRunner(p.mix, loadAgent, "floor", 20, w).next
	}
	var begun, ended int
	tl, elapsed, err := closedLoop(ctx, clients, gens, 5*time.Second, 50*time.Millisecond, 300*time.Millisecond,
		func() error { begun++; return nil }, func() error { ended++; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if begun != 1 || ended != 1 {
		t.Fatalf("hooks ran %d and %d times", begun, ended)
	}
	if tl.checks() == 0 || tl.allowed != tl.checks() || len(tl.denied) != 0 {
		t.Fatalf("floor: %d Checks, %d allowed, denied %v", tl.checks(), tl.allowed, tl.denied)
	}
	if elapsed < 300*time.Millisecond || elapsed > 5*time.Second {
		t.Fatalf("measured %v, want about 300ms", elapsed)
	}
	for i := 1; i < len(tl.lat); i++ {
		if tl.lat[i] < tl.lat[i-1] {
			t.Fatal("latencies not sorted")
		}
	}
}

// TestStartSystemFailsCleanly: a system that cannot start (here: no such
// binary) is an error, not a panic in the cleanup of what started.
func TestStartSystemFailsCleanly(t *testing.T) {
	t.Parallel()
	s, err := startSystem(context.Background(), systemOptions{aisecops: filepath.Join(t.TempDir(), "no-such-aisecops")}, io.Discard)
	if err == nil || s != nil {
		t.Fatalf("startSystem = %v, %v; want an error", s, err)
	}
}
