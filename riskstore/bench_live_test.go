//go:build unix

package riskstore

import (
	"context"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/aisecops/aisecops-envoy/internal/redistest"
)

// liveRuns is how many other runs are live in the "live-1M" benchmarks, each
// three steps long.
const liveRuns = 1_000_000

// hotRuns are the runs the live benchmarks commit to, round robin.
const hotRuns = 1000

// BenchmarkCommitLiveRuns: a Commit costs the same whether its run is one of
// a thousand live runs or one of a million, in memory and in Redis. The
// million are made once per store (for Redis by copying a real three-step
// run's keys with a Lua loop, not by a million Commits) and reported as
// bytes/run: the memory one live run holds (heap for Memory, used_memory for
// Redis). Run with a fixed -benchtime, e.g.:
//
//	go test ./riskstore -run '^$' -bench CommitLiveRuns -benchtime 20000x
func BenchmarkCommitLiveRuns(b *testing.B) {
	b.Run("memory", func(b *testing.B) {
		s := NewMemory(nil)
		benchLive(b, s, func(*testing.B) {}, func(*testing.B) {}, func(b *testing.B) float64 {
			before := heapInUse()
			populateMemory(b, s, liveRuns)
			after := heapInUse()
			runtime.KeepAlive(s)
			return float64(after-before) / liveRuns
		})
	})
	b.Run("redis", func(b *testing.B) {
		srv := redistest.StartServer(b)
		r := newRedisStore(b, RedisOptions{URL: "redis://" + srv.Addr()})
		admin := srv.Client(b)
		counter := &cmdCounter{}
		r.AddHook(counter)
		var redisCPU float64
		begin := func(b *testing.B) { counter.take(); redisCPU = redisCPUSeconds(b, admin) }
		end := func(b *testing.B) {
			b.ReportMetric(float64(len(counter.take()))/float64(b.N), "roundtrips/op")
			b.ReportMetric((redisCPUSeconds(b, admin)-redisCPU)*1e9/float64(b.N), "redis-cpu-ns/op")
		}
		benchLive(b, r, begin, end, func(b *testing.B) float64 {
			before := usedMemory(b, admin)
			populateRedis(b, r, admin, liveRuns)
			return float64(usedMemory(b, admin)-before) / liveRuns
		})
	})
}

// benchLive commits round robin to hotRuns runs ("live-1": nothing else is
// live), then populates the store with a million more and does it again
// ("live-1M").
func benchLive(b *testing.B, s Store, begin, end func(*testing.B), populate func(*testing.B) float64) {
	ctx := context.Background()
	bench := func(b *testing.B) {
		b.ReportAllocs()
		begin(b)
		cpu := cpuNow()
		b.ResetTimer()
		for i := range b.N {
			run := benchRun("hot-" + strconv.Itoa(i%hotRuns))
			if _, err := s.Commit(ctx, run, benchStep(i), benchLimits, time.Hour); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		b.ReportMetric(float64(cpuNow()-cpu)/float64(b.N), "cpu-ns/op")
		end(b)
	}
	b.Run("live-1", bench)
	var perRun float64
	populated := false
	b.Run("live-1M", func(b *testing.B) {
		if !populated {
			b.StopTimer()
			start := time.Now()
			perRun, populated = populate(b), true
			b.Logf("%d live runs made in %s", liveRuns, time.Since(start).Round(time.Millisecond))
			b.StartTimer()
		}
		bench(b)
		b.ReportMetric(perRun, "bytes/run")
	})
}

// populateMemory makes n live runs of three steps each.
func populateMemory(b *testing.B, s *Memory, n int) {
	ctx := context.Background()
	for i := range n {
		run := benchRun("live-" + strconv.Itoa(i))
		for j := range 3 {
			if _, err := s.Commit(ctx, run, benchStep(j), benchLimits, time.Hour); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// copyRunsScript copies a template run's hash (ARGV[1]; its TTL comes along)
// to each run named after it, two keys per run (its hash and its owner), and
// claims the owner key for ARGV[2] for ARGV[3] ms. On a single node only: the
// keys are not declared.
var copyRunsScript = redis.NewScript(`
local n = 0
for i = 4, #ARGV, 2 do
  redis.call('COPY', ARGV[1], ARGV[i], 'REPLACE')
  redis.call('SET', ARGV[i + 1], ARGV[2], 'PX', ARGV[3])
  n = n + 1
end
return n
`)

// populateRedis makes n live runs that are copies of one real run of three
// steps: the same keys, fields and lifetimes a Commit leaves, a thousand runs
// per script call.
func populateRedis(b *testing.B, r *Redis, admin *redis.Client, n int) {
	ctx := context.Background()
	tmpl := benchRun("template")
	for j := range 3 {
		if _, err := r.Commit(ctx, tmpl, benchStep(j), benchLimits, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	tk := r.runKeys(tmpl)
	const batch = 1000
	for start := 0; start < n; start += batch {
		args := []any{tk.run[0], tmpl.Agent, ownerFactor * time.Hour.Milliseconds()}
		for i := start; i < min(start+batch, n); i++ {
			k := r.runKeys(benchRun("live-" + strconv.Itoa(i)))
			args = append(args, k.run[0], k.owner)
		}
		if err := copyRunsScript.Run(ctx, admin, nil, args...).Err(); err != nil {
			b.Fatal(err)
		}
	}
	if got := admin.DBSize(ctx).Val(); got < int64(2*n) {
		b.Fatalf("populated %d keys, want at least %d", got, 2*n)
	}
}
