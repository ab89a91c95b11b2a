package riskstore

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestCommitBatchesConcurrentChecks: concurrent Commits share pipelines
// (fewer round trips than Commits), and each is still decided on its own:
// every debit lands exactly once, a shared run's counters are exact, and a
// budget shared by all of them is never passed.
func TestCommitBatchesConcurrentChecks(t *testing.T) {
	t.Parallel()
	r := newRedisStore(t, RedisOptions{URL: "redis://" + sharedNode(t).Addr()})
	wire := &cmdCounter{} // one name per command or pipeline on the wire
	r.AddHook(wire)
	ctx := context.Background()
	const workers, each, budget = 32, 20, 500
	shared := RunRef{Agent: "batch-agent", ID: "shared-" + strconv.FormatInt(time.Now().UnixNano(), 10)}
	var committed, refused atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				step := st("w"+strconv.Itoa(w)+"-"+strconv.Itoa(i), 0)
				res, err := r.Commit(ctx, shared, step, Limits{MaxToolCalls: budget}, time.Hour)
				if err != nil {
					t.Error(err)
					return
				}
				switch res.Outcome {
				case Committed:
					committed.Add(1)
				case Refused:
					refused.Add(1)
				default:
					t.Errorf("outcome %v", res.Outcome)
				}
				// A retry of the same request is a duplicate, batched or not.
				if res.Outcome == Committed && i%5 == 0 {
					if again, err := r.Commit(ctx, shared, step, Limits{MaxToolCalls: budget}, time.Hour); err != nil || again.Outcome != Duplicate {
						t.Errorf("retry: %v %v", again.Outcome, err)
					}
				}
			}
		})
	}
	wg.Wait()
	got, err := r.Load(ctx, shared, "")
	if err != nil {
		t.Fatal(err)
	}
	if committed.Load() != budget || refused.Load() != workers*each-budget || got.ToolCalls != budget {
		t.Errorf("committed %d, refused %d, run counts %d; want %d, %d, %d",
			committed.Load(), refused.Load(), got.ToolCalls, budget, workers*each-budget, budget)
	}
	trips, calls := int64(len(wire.take())), int64(workers*each+committed.Load()/5)
	t.Logf("%d commits in %d round trips", calls, trips)
	if trips >= calls {
		t.Errorf("%d commits took %d round trips: not batched", calls, trips)
	}
}

// TestCommitBatchCallerDeadline: a Check whose deadline passes while its
// commit waits in the batch fails closed with its ctx's error.
func TestCommitBatchCallerDeadline(t *testing.T) {
	t.Parallel()
	r := newRedisStore(t, RedisOptions{URL: "redis://" + sharedNode(t).Addr()})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Commit(ctx, runA, st("late", 0), Limits{}, time.Hour); err == nil {
		t.Fatal("a commit past its deadline succeeded")
	}
}

// TestRedisCorruptUsageFailsClosed: an agent usage value or a run the script
// cannot read is an error (the Check denies), never a fresh budget.
func TestRedisCorruptUsageFailsClosed(t *testing.T) {
	t.Parallel()
	srv := sharedNode(t)
	r := newRedisStore(t, RedisOptions{URL: "redis://" + srv.Addr(), KeyPrefix: "corrupt" + strconv.FormatInt(time.Now().UnixNano(), 36)})
	ctx := context.Background()
	lim := Limits{AgentWindow: time.Hour, AgentMaxToolCalls: 1}
	if res, err := r.Commit(ctx, runA, st("a", 0), lim, time.Hour); err != nil || res.Outcome != Committed {
		t.Fatalf("%v %v", res.Outcome, err)
	}
	if err := srv.Client(t).Set(ctx, r.runKeys(runA).run[1], "1|x|2|3|4", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	if res, err := r.Commit(ctx, runA, st("b", 0), lim, time.Hour); err == nil {
		t.Fatalf("a corrupt usage value gave %v, want an error", res.Outcome)
	}
	// Nor is a run whose counters do not read a fresh run.
	if err := srv.Client(t).HSet(ctx, r.runKeys(runA).run[0], "t", "1|x|0").Err(); err != nil {
		t.Fatal(err)
	}
	if res, err := r.Commit(ctx, runA, st("c", 0), Limits{MaxToolCalls: 2}, time.Hour); err == nil {
		t.Fatalf("a corrupt run gave %v, want an error", res.Outcome)
	}
	if _, err := r.Load(ctx, runA, ""); err == nil {
		t.Fatal("a corrupt run loaded")
	}
}
