package extauthz_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/aisecops/aisecops-envoy/extauthz"
	"github.com/aisecops/aisecops-envoy/internal/redistest"
)

// roundTrips counts commands and pipelines sent to Redis.
type roundTrips struct{ n atomic.Int64 }

func (c *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { c.n.Add(1); return next(ctx, cmd) }
}
func (c *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { c.n.Add(1); return next(ctx, cmds) }
}

// cpuNow is this process's user+system CPU time.
func cpuNow() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestOneRoundTripPerCheck: an allowed Check costs exactly one Redis round
// trip, the versioned commit — a run's first step included (it is decided as
// new and the commit's version check would find out otherwise), and a
// single-use token's spend included (it is spent inside the commit).
// (The run's shared step log is written off the Check's path, in pipelined
// batches by a background writer: it is left out here.)
func TestOneRoundTripPerCheck(t *testing.T) {
	store := newRedisStore(t, redistest.StartServer(t))
	var rt roundTrips
	store.AddHook(&rt)
	e := newEnv(t, withStore(store), func(c *extauthz.Config) { c.StepLog = nil })
	// Warm up: the first calls load the scripts into Redis (NOSCRIPT, EVAL).
	for _, tool := range []string{"db.read", "db.write"} {
		if res := e.check(t, e.call(t, "demo-agent", tool, "run-warm", "")); !res.allowed {
			t.Fatal(res.body)
		}
	}
	calls := []struct{ tool, run string }{
		{"db.read", "run-rtt"}, // a new run
		{"db.read", "run-rtt"},
		{"db.write", "run-rtt"}, // a single-use token
		{"db.read", "run-rtt"},
		{"db.write", "run-rtt-2"}, // both: a new run and a single-use token
	}
	for i, c := range calls {
		before := rt.n.Load()
		if res := e.check(t, e.call(t, "demo-agent", c.tool, c.run, fmt.Sprintf(`{"i":%d}`, i))); !res.allowed {
			t.Fatal(res.body)
		}
		if got := rt.n.Load() - before; got != 1 {
			t.Fatalf("allowed Check %d (%s on %s) used %d round trips, want 1", i, c.tool, c.run, got)
		}
	}
	// The write's token was spent: replaying it is refused.
	r := e.call(t, "demo-agent", "db.write", "run-rtt", `{"i":99}`)
	tok := r.headers["authorization"]
	if res := e.check(t, r); !res.allowed {
		t.Fatal(res.body)
	}
	r = e.call(t, "demo-agent", "db.write", "run-rtt", `{"i":100}`)
	r.headers["authorization"] = tok
	if res := e.check(t, r); res.allowed || res.code() != "token_replayed" {
		t.Fatalf("a spent single-use token: allowed=%v code=%s", res.allowed, res.code())
	}
}

// BenchmarkCheckRedis is BenchmarkCheck with the run state in a real local
// redis-server. cpu-ns/op is this process's CPU (Redis's own is not counted);
// rtt/op the Redis round trips per Check.
//
//	go test ./extauthz -run '^$' -bench 'BenchmarkCheck' -benchmem
func BenchmarkCheckRedis(b *testing.B) {
	srv := redistest.StartServer(b, "--enable-debug-command", "local")
	store := newRedisStore(b, srv)
	var rt roundTrips
	store.AddHook(&rt)
	e := newEnv(b, withStore(store))
	bench := func(b *testing.B, runs []string) {
		cr := benchRequest(b, e)
		httpReq := cr.Attributes.Request.Http
		ctx := context.Background()
		b.ReportAllocs()
		b.ResetTimer()
		rt.n.Store(0)
		cpu0 := cpuNow()
		for i := 0; i < b.N; i++ {
			httpReq.Id = fmt.Sprintf("%s-req-%d", runs[0], i)
			httpReq.Headers["x-aisecops-run-id"] = runs[i%len(runs)]
			if resp, _ := e.srv.Check(ctx, cr); resp.GetOkResponse() == nil {
				b.Fatal("denied: ", resp.GetDeniedResponse().GetBody())
			}
		}
		b.ReportMetric(float64(cpuNow()-cpu0)/float64(b.N), "cpu-ns/op")
		b.ReportMetric(float64(rt.n.Load())/float64(b.N), "rtt/op")
	}
	b.Run("step-1000", func(b *testing.B) {
		// One run already 1,000 steps deep: the cost stays flat because a run
		// keeps a bounded window of steps.
		warm := benchRequest(b, e)
		warm.Attributes.Request.Http.Headers["x-aisecops-run-id"] = "deep-run"
		for i := range 1000 {
			warm.Attributes.Request.Http.Id = fmt.Sprint("warm-", i)
			if resp, _ := e.srv.Check(context.Background(), warm); resp.GetOkResponse() == nil {
				b.Fatal("warm-up denied")
			}
		}
		bench(b, []string{"deep-run"})
	})
	b.Run("step-1", func(b *testing.B) {
		runs := make([]string, b.N)
		for i := range runs {
			runs[i] = fmt.Sprintf("fresh-%d-%d-%d", time.Now().UnixNano(), b.N, i)
		}
		bench(b, runs)
	})
	b.Run("1M-live-keys", func(b *testing.B) {
		// A million other keys in the keyspace (DEBUG POPULATE) change nothing.
		c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
		defer c.Close()
		if err := c.Do(context.Background(), "DEBUG", "POPULATE", 1_000_000, "aisecops:filler", 64).Err(); err != nil {
			b.Fatal(err)
		}
		bench(b, []string{"deep-run"})
	})
}
