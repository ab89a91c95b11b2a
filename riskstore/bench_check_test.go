//go:build unix

package riskstore

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aisecops/aisecops-envoy/internal/redistest"
)

// BenchmarkRedisPerCheck is what a Check costs Redis under load: 32
// concurrent callers, each committing a step of its run and logging it, as
// the authz server does; runs of 1, 20 and 200 steps; a third of the steps
// are writes that spend a nonce. Redis runs with its append-only file, as in
// `make bench`. It reports Redis CPU (redis-cpu-us/op) and round trips per
// Check, the step log's included (the writer is drained before measuring).
//
//	go test ./riskstore -run '^$' -bench RedisPerCheck -benchtime 20000x
func BenchmarkRedisPerCheck(b *testing.B) {
	for _, steps := range []int{1, 20, 200} {
		b.Run("steps"+strconv.Itoa(steps), func(b *testing.B) {
			srv := redistest.StartServer(b, "--appendonly", "yes", "--appendfsync", "everysec")
			r := newRedisStore(b, RedisOptions{URL: "redis://" + srv.Addr()})
			admin := srv.Client(b)
			counter := &cmdCounter{}
			r.AddHook(counter)
			record := []byte(`{"ts":"2026-12-02T18:00:00.123456789Z","decision_id":"d_0123456789abcdef0123","decision":"allow","reason_code":"ok","tool":"crm.read","action":"read","class":"read","trust":"internal","risk":0.2,"cumulative_risk":1.4,"committed":true,"cost_micros":10,"findings":[],"policy":"sha256:` + strings.Repeat("ab", 32) + `","latency_us":412}`)
			const workers = 32
			var next atomic.Int64
			ctx := context.Background()
			limits := Limits{MaxToolCalls: 1 << 40, MaxWriteOperations: 1 << 40, MaxExecutionTime: 24 * time.Hour, MaxCostMicros: 1 << 50, MaxRisk: 1e9}
			counter.take()
			cpu0 := redisCPUSeconds(b, admin)
			b.ResetTimer()
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					for {
						i := int(next.Add(1)) - 1
						if i >= b.N {
							return
						}
						n := i / workers // this worker's n-th step
						run := RunRef{Agent: "agent-" + strconv.Itoa(w%4), ID: "run-" + strconv.Itoa(b.N) + "-" + strconv.Itoa(w) + "-" + strconv.Itoa(n/steps)}
						step := Step{RequestID: "req-" + strconv.Itoa(i), DecisionID: "d-" + strconv.Itoa(i), Risk: 0.01, CostMicros: 10,
							Facts: benchFacts[i&1], ExpectVersion: AnyVersion}
						if i%3 == 0 {
							step.Write, step.Nonce, step.NonceOwner, step.NonceTTL = true, "jti-"+strconv.Itoa(b.N)+"-"+strconv.Itoa(i), run.Agent, 10*time.Minute
						}
						res, err := r.Commit(ctx, run, step, limits, time.Hour)
						if err != nil || res.Outcome != Committed {
							b.Errorf("commit: %v %v", res.Outcome, err)
							return
						}
						r.AppendStep(run, StepMeta{TS: time.Now(), Decision: "allow", CumulativeRisk: res.State.RiskTotal, Committed: true}, record)
					}
				})
			}
			wg.Wait()
			r.flushLog()
			b.StopTimer()
			b.ReportMetric((redisCPUSeconds(b, admin)-cpu0)*1e6/float64(b.N), "redis-cpu-us/op")
			b.ReportMetric(float64(len(counter.take()))/float64(b.N), "roundtrips/op")
			if d := r.DroppedSteps(); d > 0 {
				b.Errorf("%d steps dropped", d)
			}
		})
	}
}
