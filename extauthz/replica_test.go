package extauthz_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz"
	"github.com/aisecops/aisecops-envoy/internal/redistest"
	"github.com/aisecops/aisecops-envoy/riskstore"
)

// TestReplicasShareOneRun: two authz replicas, each with its own run cache,
// take turns on one run. Each decides from the state it last saw; the
// versioned commit refuses a stale decision and the replica decides again, so
// the budget holds exactly and the run's risk is the sum of what was allowed.
func TestReplicasShareOneRun(t *testing.T) { forEachStore(t, testReplicasShareOneRun) }

func testReplicasShareOneRun(t *testing.T, store envOption) {
	a := newEnv(t, store)
	b := newEnv(t, sharing(a))
	replicas := []*env{a, b, a, a, b, b, a}
	allowed, sum := 0, 0.0
	for i, e := range replicas {
		res := e.check(t, a.call(t, "tiny-agent", "db.read", "run-replicas", "")) // a mints; both verify with the same keys
		if res.allowed {
			allowed++
			recs := e.auditRecords(t)
			sum += recs[len(recs)-1].StepRisk.Step
		} else if res.status != 429 {
			t.Fatalf("check %d: %d %v", i, res.status, reasonCodes(res.body))
		}
	}
	st, err := a.store.Load(context.Background(), riskstore.RunRef{Agent: "tiny-agent", ID: "run-replicas"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if allowed != 3 || st.ToolCalls != 3 || math.Abs(st.RiskTotal-sum) > 1e-9 {
		t.Fatalf("allowed %d, state %d calls, risk %v (allowed steps sum to %v); want exactly the budget of 3", allowed, st.ToolCalls, st.RiskTotal, sum)
	}
}

// TestConcurrentChecksKeepBudgetExact: 200 concurrent Checks on one run with 10
// calls of budget left, spread over two replicas.
func TestConcurrentChecksKeepBudgetExact(t *testing.T) {
	forEachStore(t, testConcurrentChecksKeepBudgetExact)
}

func testConcurrentChecksKeepBudgetExact(t *testing.T, store envOption) {
	// Exactness is the point here, not latency: 200 Checks at once on two
	// cores under the race detector need more than the default deadline.
	patient := func(c *extauthz.Config) { c.CheckTimeout = 20 * time.Second }
	a := newEnv(t, store, patient)
	b := newEnv(t, sharing(a), patient)
	for range 5 { // 10 calls of budget left
		if res := a.check(t, a.call(t, "burst-agent", "db.read", "run-burst", "")); !res.allowed {
			t.Fatal(res.body)
		}
	}
	reqs := make([]req, 200)
	for i := range reqs {
		reqs[i] = a.call(t, "burst-agent", "db.read", "run-burst", "")
		reqs[i].id = "burst-" + string(rune('a'+i%26)) + time.Now().Format("150405.000000000")
	}
	var mu sync.Mutex
	allowed, denied, codes := 0, map[int]int{}, map[string]int{}
	var wg sync.WaitGroup
	for i, r := range reqs {
		e := a
		if i%2 == 1 {
			e = b
		}
		wg.Go(func() {
			res := e.check(t, r)
			mu.Lock()
			defer mu.Unlock()
			if res.allowed {
				allowed++
			} else {
				denied[res.status]++
				codes[res.code()]++
			}
		})
	}
	wg.Wait()
	st, _ := a.store.Load(context.Background(), riskstore.RunRef{Agent: "burst-agent", ID: "run-burst"}, "")
	if allowed != 10 || st.ToolCalls != 15 {
		t.Fatalf("allowed %d (denied %v %v), calls %d; want exactly 10 allowed and 15 calls", allowed, denied, codes, st.ToolCalls)
	}
}

// TestRedisDownDeniesAndRecovers: Redis killed under a running service →
// every Check is a 503 store_unavailable within its deadline, audited, never an
// allow; Redis back → allows resume with no restart of the service.
func TestRedisDownDeniesAndRecovers(t *testing.T) {
	srv := redistest.StartServer(t)
	e := newEnv(t, withStore(newRedisStore(t, srv)), func(c *extauthz.Config) { c.CheckTimeout = 300 * time.Millisecond })
	if res := e.check(t, e.call(t, "demo-agent", "db.read", "run-redis-down", "")); !res.allowed {
		t.Fatal(res.body)
	}
	srv.Kill()
	for _, run := range []string{"run-redis-down", "run-redis-new"} { // cached run and a run never seen
		start := time.Now()
		res := e.check(t, e.call(t, "demo-agent", "db.read", run, ""))
		if res.allowed || res.status != 503 || res.code() != "store_unavailable" {
			t.Fatalf("%s with Redis down: allowed=%v status=%d code=%s", run, res.allowed, res.status, res.code())
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("deny took %v: not within the deadline", took)
		}
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		res := e.check(t, e.call(t, "demo-agent", "db.read", "run-redis-down", ""))
		if res.allowed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no allow 10 s after Redis came back: %v", reasonCodes(res.body))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, r := range e.auditRecords(t) {
		if r.Decision == "allow" && !r.Committed {
			t.Errorf("an allow without a commit: %+v", r)
		}
	}
}

// TestRunReadsBackWholeAcrossReplicas: a run whose steps were decided on two
// replicas sharing one store reads back whole from the store's step log, in
// order, every step once.
func TestRunReadsBackWholeAcrossReplicas(t *testing.T) {
	t.Run("redis", func(t *testing.T) {
		store := newRedisStore(t, redistest.StartServer(t))
		a := newEnv(t, withStore(store))
		b := newEnv(t, sharing(a))
		var ids []string
		for i, e := range []*env{a, b, a, b, b, a} {
			res := e.check(t, a.call(t, "demo-agent", "db.read", "run-spread", fmt.Sprintf(`{"table":"t%d"}`, i)))
			if !res.allowed {
				t.Fatal(reasonCodes(res.body))
			}
			ids = append(ids, res.headers[extauthz.HeaderDecisionID])
		}
		var steps [][]byte
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			var err error
			if steps, err = store.Steps(context.Background(), riskstore.RunRef{Agent: "demo-agent", ID: "run-spread"}); err != nil {
				t.Fatal(err)
			}
			if len(steps) >= len(ids) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		var got []string
		for _, s := range steps {
			var st struct {
				DecisionID string `json:"decision_id"`
			}
			if err := json.Unmarshal(s, &st); err != nil {
				t.Fatal(err)
			}
			got = append(got, st.DecisionID)
		}
		if !slices.Equal(got, ids) {
			t.Fatalf("steps read back %v, want %v", got, ids)
		}
	})
}
