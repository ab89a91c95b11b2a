package extauthz_test

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/risk"
	"github.com/aisecops/aisecops-envoy/riskstore"
)

// BenchmarkCheckFlat: a Check costs the same at a run's first step and at its
// thousandth, and whether one run or a million are live, on the in-memory
// store (BenchmarkCheckRedis is the same on Redis, and riskstore's
// BenchmarkCommitLiveRuns the store alone with a million live runs).
//
//   - step-1: every Check is the first of a new run;
//   - step-1000: every Check is on a run already 1,000 steps deep;
//   - live-1: Checks round robin over 1,000 runs, nothing else live;
//   - live-1M: the same with 1,000,000 more runs of three steps live in the
//     store (made by Commits, not Checks), and the heap one live run holds;
//   - live-1M-cold: Checks round robin over 200,000 of the million, so the
//     server never has the run cached and reads it from the store first.
//
// Use a fixed -benchtime (each sub-benchmark sets its runs up once):
//
//	go test ./extauthz -run '^$' -bench CheckFlat -benchtime 5000x -benchmem
func BenchmarkCheckFlat(b *testing.B) {
	e := newEnv(b)
	cr := benchRequest(b, e)
	httpReq := cr.Attributes.Request.Http
	ctx := context.Background()
	seq := 0
	bench := func(b *testing.B, run func(i int) string) {
		b.ReportAllocs()
		b.ResetTimer()
		cpu0 := cpuNow()
		for i := range b.N {
			seq++
			httpReq.Id = "flat-" + strconv.Itoa(seq)
			httpReq.Headers["x-aisecops-run-id"] = run(i)
			if resp, _ := e.srv.Check(ctx, cr); resp.GetOkResponse() == nil {
				b.Fatal("denied: ", resp.GetDeniedResponse().GetBody())
			}
		}
		b.ReportMetric(float64(cpuNow()-cpu0)/float64(b.N), "cpu-ns/op")
	}
	b.Run("step-1", func(b *testing.B) {
		round := strconv.FormatInt(time.Now().UnixNano(), 36)
		bench(b, func(i int) string { return "fresh-" + round + "-" + strconv.Itoa(i) })
	})
	b.Run("step-1000", func(b *testing.B) {
		deep := "deep-" + strconv.FormatInt(time.Now().UnixNano(), 36)
		for i := range 1000 {
			httpReq.Id = deep + "-warm-" + strconv.Itoa(i)
			httpReq.Headers["x-aisecops-run-id"] = deep
			if resp, _ := e.srv.Check(ctx, cr); resp.GetOkResponse() == nil {
				b.Fatal("warm-up denied")
			}
		}
		bench(b, func(int) string { return deep })
	})
	hot := func(i int) string { return "hot-" + strconv.Itoa(i%1000) }
	b.Run("live-1", func(b *testing.B) { bench(b, hot) })
	var perRun float64
	populated := false
	populate := func(b *testing.B) {
		if populated {
			return
		}
		b.StopTimer()
		defer b.StartTimer()
		start := time.Now()
		before := heapAlloc()
		facts := risk.StepFacts("read", "neutral", false, nil)
		for i := range 1_000_000 {
			run := riskstore.RunRef{Agent: "bench-agent", ID: "live-" + strconv.Itoa(i)}
			for j := range 3 {
				step := riskstore.Step{RequestID: fmt.Sprintf("req-%d-%d/0123456789abcdef0123456789abcdef", i, j), DecisionID: "d_0123456789abcdef01234567",
					Risk: 0.2, CostMicros: 10_000, Facts: facts, ExpectVersion: riskstore.AnyVersion}
				if _, err := e.store.Commit(ctx, run, step, riskstore.Limits{MaxRisk: 2e9}, 24*time.Hour); err != nil {
					b.Fatal(err)
				}
			}
		}
		perRun = float64(heapAlloc()-before) / 1_000_000
		populated = true
		b.Logf("1,000,000 live runs made in %s, %.0f bytes each", time.Since(start).Round(time.Millisecond), perRun)
	}
	b.Run("live-1M", func(b *testing.B) {
		populate(b)
		bench(b, hot)
		b.ReportMetric(perRun, "bytes/run")
	})
	b.Run("live-1M-cold", func(b *testing.B) {
		populate(b)
		bench(b, func(i int) string { return "live-" + strconv.Itoa((i*7919)%200_000) })
	})
	runtime.KeepAlive(e)
}

func heapAlloc() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}
