//go:build unix

package riskstore

import (
	"context"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/aisecops/aisecops-envoy/internal/redistest"
)

// Run with e.g.:
//
//	go test -run XXX -bench . -benchtime 2000x ./riskstore/
//
// Besides ns/op and allocs/op the Redis benchmarks report client CPU per
// Commit (cpu-ns/op, from getrusage: what the authz process pays), Redis CPU
// per Commit (redis-cpu-ns/op, from INFO cpu) and round trips per Commit.

// benchFacts are what a Check adds to its run: the tool's class and trust,
// and once in a while a finding.
var benchFacts = [][]string{{"class:read", "trust:internal"}, {"class:read", "trust:internal", "finding:pii"}}

func benchStep(i int) Step {
	return Step{
		RequestID:     "req-" + strconv.Itoa(i),
		DecisionID:    "dec-" + strconv.Itoa(i),
		Risk:          0.001,
		CostMicros:    10,
		Facts:         benchFacts[i&1],
		ExpectVersion: AnyVersion,
	}
}

// benchLimits set every limit, the agent's window included, so every check runs.
var benchLimits = Limits{MaxToolCalls: 1 << 40, MaxWriteOperations: 1 << 40, MaxExecutionTime: 24 * time.Hour, MaxCostMicros: 1 << 50, MaxRisk: 1e9,
	AgentWindow: time.Hour, AgentMaxToolCalls: 1 << 40, AgentMaxCostMicros: 1 << 50}

func benchRun(name string) RunRef { return RunRef{Agent: "bench-agent", ID: name} }

// benchCommit measures Commits at step 1 of fresh runs ("step1", a run's
// first Commit: it claims the run id) and on a run already 1,000 steps long
// ("step1000"); sticky facts instead of a history keep them equal.
// "versioned" is step1000 as a replica caching the run commits it: each step
// expects the version the previous Commit returned.
func benchCommit(b *testing.B, s Store, begin func(b *testing.B), after func(b *testing.B)) {
	ctx := context.Background()
	b.Run("step1", func(b *testing.B) {
		b.ReportAllocs()
		begin(b)
		cpu := cpuNow()
		b.ResetTimer()
		for i := range b.N {
			if _, err := s.Commit(ctx, benchRun("b1-"+strconv.Itoa(b.N)+"-"+strconv.Itoa(i)), benchStep(i), benchLimits, time.Hour); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		b.ReportMetric(float64(cpuNow()-cpu)/float64(b.N), "cpu-ns/op")
		after(b)
	})
	b.Run("step1000", func(b *testing.B) {
		run := benchRun("long-" + strconv.Itoa(b.N))
		for i := range 1000 {
			if _, err := s.Commit(ctx, run, benchStep(-i-1), benchLimits, time.Hour); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportAllocs()
		begin(b)
		cpu := cpuNow()
		b.ResetTimer()
		for i := range b.N {
			if _, err := s.Commit(ctx, run, benchStep(i), benchLimits, time.Hour); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		b.ReportMetric(float64(cpuNow()-cpu)/float64(b.N), "cpu-ns/op")
		after(b)
	})
	b.Run("versioned", func(b *testing.B) {
		run := benchRun("versioned-" + strconv.Itoa(b.N))
		var st State
		for i := range 1000 {
			res, err := s.Commit(ctx, run, benchStep(-i-1), benchLimits, time.Hour)
			if err != nil {
				b.Fatal(err)
			}
			st = res.State
		}
		b.ReportAllocs()
		begin(b)
		cpu := cpuNow()
		b.ResetTimer()
		for i := range b.N {
			step := benchStep(i)
			step.ExpectVersion = st.Version
			res, err := s.Commit(ctx, run, step, benchLimits, time.Hour)
			if err != nil {
				b.Fatal(err)
			}
			if res.Outcome != Committed {
				b.Fatalf("outcome %v at version %d", res.Outcome, st.Version)
			}
			st = res.State
		}
		b.StopTimer()
		b.ReportMetric(float64(cpuNow()-cpu)/float64(b.N), "cpu-ns/op")
		after(b)
	})
}

func BenchmarkCommitMemory(b *testing.B) {
	benchCommit(b, NewMemory(nil), func(*testing.B) {}, func(*testing.B) {})
}

// BenchmarkCommitRedis reports roundtrips/op: 1 on a single node, first
// commits included.
func BenchmarkCommitRedis(b *testing.B) {
	srv := redistest.StartServer(b)
	r := newRedisStore(b, RedisOptions{URL: "redis://" + srv.Addr()})
	admin := srv.Client(b)
	counter := &cmdCounter{}
	r.AddHook(counter)
	if _, err := r.Commit(context.Background(), benchRun("warm"), benchStep(0), benchLimits, time.Hour); err != nil {
		b.Fatal(err)
	}
	var redisCPU float64
	begin := func(b *testing.B) { counter.take(); redisCPU = redisCPUSeconds(b, admin) }
	benchCommit(b, r, begin, func(b *testing.B) {
		b.ReportMetric(float64(len(counter.take()))/float64(b.N), "roundtrips/op")
		b.ReportMetric((redisCPUSeconds(b, admin)-redisCPU)*1e9/float64(b.N), "redis-cpu-ns/op")
	})
}

func BenchmarkLoadRedis(b *testing.B) {
	srv := redistest.StartServer(b)
	r := newRedisStore(b, RedisOptions{URL: "redis://" + srv.Addr()})
	ctx := context.Background()
	for i := range 100 {
		if _, err := r.Commit(ctx, benchRun("load"), benchStep(i), benchLimits, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := r.Load(ctx, benchRun("load"), "req-"+strconv.Itoa(i%100)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRedisMemoryPerRun reports Redis memory per live run: 10,000 runs of
// 3 steps each (their owner keys included; 100 agents, so the agents' usage is
// shared), used_memory before and after. Run with -benchtime 1x.
func BenchmarkRedisMemoryPerRun(b *testing.B) {
	srv := redistest.StartServer(b)
	r := newRedisStore(b, RedisOptions{URL: "redis://" + srv.Addr()})
	admin := srv.Client(b)
	ctx := context.Background()
	const runs, steps = 10_000, 3
	var perRun float64
	for n := range b.N {
		before := usedMemory(b, admin)
		for i := range runs {
			run := RunRef{Agent: "agent-" + strconv.Itoa(i%100), ID: "mem-" + strconv.Itoa(n) + "-" + strconv.Itoa(i)}
			for j := range steps {
				if _, err := r.Commit(ctx, run, benchStep(j), benchLimits, time.Hour); err != nil {
					b.Fatal(err)
				}
			}
		}
		perRun += float64(usedMemory(b, admin)-before) / runs
	}
	b.ReportMetric(perRun/float64(b.N), "bytes/run")
}

func cpuNow() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func infoField(b *testing.B, c *redis.Client, section, field string) string {
	info, err := c.Info(context.Background(), section).Result()
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.SplitSeq(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return v
		}
	}
	b.Fatalf("INFO %s has no %s", section, field)
	return ""
}

func redisCPUSeconds(b *testing.B, c *redis.Client) float64 {
	sys, _ := strconv.ParseFloat(infoField(b, c, "cpu", "used_cpu_sys"), 64)
	user, _ := strconv.ParseFloat(infoField(b, c, "cpu", "used_cpu_user"), 64)
	return sys + user
}

func usedMemory(b *testing.B, c *redis.Client) int64 {
	v, err := strconv.ParseInt(infoField(b, c, "memory", "used_memory"), 10, 64)
	if err != nil {
		b.Fatal(err)
	}
	return v
}

// BenchmarkMemoryPerRun reports the in-process store's heap per live run, on
// the same workload as BenchmarkRedisMemoryPerRun. Run with -benchtime 1x.
func BenchmarkMemoryPerRun(b *testing.B) {
	ctx := context.Background()
	const runs, steps = 10_000, 3
	var perRun float64
	for range b.N {
		m := NewMemory(nil)
		before := heapInUse()
		for i := range runs {
			run := RunRef{Agent: "agent-" + strconv.Itoa(i%100), ID: "mem-" + strconv.Itoa(i)}
			for j := range steps {
				if _, err := m.Commit(ctx, run, benchStep(j), benchLimits, time.Hour); err != nil {
					b.Fatal(err)
				}
			}
		}
		perRun += float64(heapInUse()-before) / runs
		runtime.KeepAlive(m)
	}
	b.ReportMetric(perRun/float64(b.N), "bytes/run")
}

func heapInUse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}
