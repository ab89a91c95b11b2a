package riskstore

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// TestCostTotalPast2p53IsAnError: each cost and limit is within 2^53, but a
// total past it would round in Redis's Lua doubles and then pass the limit it
// exceeds, forever. Both stores refuse such a commit with an error, the
// run's and the agent's totals alike.
func TestCostTotalPast2p53IsAnError(t *testing.T) {
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, time.Now)
			ctx := context.Background()
			step := func(id string, c int64) Step { return Step{RequestID: id, ExpectVersion: AnyVersion, CostMicros: c} }
			run := RunRef{Agent: "cost53", ID: "run-" + kind.name}
			lim := Limits{MaxCostMicros: maxExactInt}
			if r, err := s.Commit(ctx, run, step("1", maxExactInt-1), lim, time.Hour); err != nil || r.Outcome != Committed {
				t.Fatal(r.Outcome, err)
			}
			if r, err := s.Commit(ctx, run, step("2", 2), lim, time.Hour); err == nil {
				t.Errorf("2^53-1 + 2: %v, cost %d; want an error", r.Outcome, r.State.CostMicros)
			}
			if r, err := s.Commit(ctx, run, step("3", 1), lim, time.Hour); err != nil || r.Outcome != Committed || r.State.CostMicros != maxExactInt {
				t.Errorf("2^53-1 + 1: %v %v, cost %d; want committed at 2^53", r.Outcome, err, r.State.CostMicros)
			}
			if r, err := s.Commit(ctx, run, step("4", 1), lim, time.Hour); err == nil {
				t.Errorf("2^53 + 1: %v; want an error", r.Outcome)
			}
			agentLim := Limits{AgentWindow: time.Hour, AgentMaxCostMicros: maxExactInt}
			other := RunRef{Agent: "cost53-agent-" + kind.name, ID: "a"}
			if r, err := s.Commit(ctx, other, step("1", maxExactInt), agentLim, time.Hour); err != nil || r.Outcome != Committed {
				t.Fatal(r.Outcome, err)
			}
			if r, err := s.Commit(ctx, RunRef{Agent: other.Agent, ID: "b"}, step("1", 1), agentLim, time.Hour); err == nil {
				t.Errorf("agent window at 2^53 + 1: %v; want an error", r.Outcome)
			}
		})
	}
}

// TestRequestIDsForgottenAfterAnyCommits: a request id is remembered for
// maxRequestIDs commits, with or without request ids, in every store alike.
func TestRequestIDsForgottenAfterAnyCommits(t *testing.T) {
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, time.Now)
			ctx := context.Background()
			run := RunRef{Agent: "ring", ID: "run-" + kind.name}
			commit := func(id string) Outcome {
				t.Helper()
				r, err := s.Commit(ctx, run, Step{RequestID: id, ExpectVersion: AnyVersion}, Limits{}, time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				return r.Outcome
			}
			commit("keep-me")
			for range maxRequestIDs - 1 {
				commit("")
			}
			if got := commit("keep-me"); got != Duplicate {
				t.Fatalf("after %d commits: %v, want a duplicate", maxRequestIDs-1, got)
			}
			commit("")
			if got := commit("keep-me"); got != Committed {
				t.Fatalf("after %d commits: %v, want it forgotten", maxRequestIDs, got)
			}
		})
	}
}

// TestStepLogRenewsARecreatedLog: a log deleted while its summary lived on
// (a forgotten run's keys deleted by another replica meanwhile, or by hand)
// is recreated by the next step with a lifetime.
func TestStepLogRenewsARecreatedLog(t *testing.T) {
	t.Parallel()
	s := newRedisStore(t, RedisOptions{URL: "redis://" + sharedNode(t).Addr(), KeyPrefix: "renew" + strconv.FormatInt(time.Now().UnixNano(), 36)})
	ctx := context.Background()
	run := RunRef{Agent: "a", ID: "ttl"}
	wait := func(n int) {
		t.Helper()
		for d := time.Now().Add(5 * time.Second); time.Now().Before(d); time.Sleep(10 * time.Millisecond) {
			if g, _ := s.Steps(ctx, run); len(g) == n {
				return
			}
		}
		t.Fatalf("never %d steps", n)
	}
	s.AppendStep(run, StepMeta{TS: time.Now(), Decision: "allow"}, []byte("0"))
	wait(1)
	s.c().Del(ctx, s.logKey(run))
	s.AppendStep(run, StepMeta{TS: time.Now(), Decision: "allow"}, []byte("1"))
	wait(1)
	if p := s.c().PTTL(ctx, s.logKey(run)).Val(); p <= 0 {
		t.Errorf("recreated log lives %v", p)
	}
}

// TestStepLogIndexFailureCountsOnce: when only the run index's call fails,
// the steps are indexed again, not logged again: the summary counts each
// step once.
func TestStepLogIndexFailureCountsOnce(t *testing.T) {
	t.Parallel()
	s := newRedisStore(t, RedisOptions{URL: "redis://" + sharedNode(t).Addr(), KeyPrefix: "idx" + strconv.FormatInt(time.Now().UnixNano(), 36)})
	ctx := context.Background()
	idx := s.indexKeys()
	if err := s.c().Set(ctx, idx[1], "not a counter", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	run := RunRef{Agent: "a", ID: "once"}
	s.AppendStep(run, StepMeta{TS: time.Now(), Decision: "allow"}, []byte("0"))
	for d := time.Now().Add(5 * time.Second); time.Now().Before(d) && s.DroppedSteps() == 0; time.Sleep(10 * time.Millisecond) {
		if g, _ := s.Steps(ctx, run); len(g) == 1 {
			break
		}
	}
	time.Sleep(200 * time.Millisecond) // the writer's retry, if any
	sum, err := s.c().HGet(ctx, s.sumKey(run), "steps").Result()
	if err != nil || sum != "1" {
		t.Errorf("summary counts %q steps (%v), want 1", sum, err)
	}
}

// TestStepLogBatchKeepsLastPlace: steps of one run gathered in one batch
// (the writer lingers for them) count each, and the run takes the place of
// its last step in the index.
func TestStepLogBatchKeepsLastPlace(t *testing.T) {
	t.Parallel()
	s := newRedisStore(t, RedisOptions{URL: "redis://" + sharedNode(t).Addr(), KeyPrefix: "last" + strconv.FormatInt(time.Now().UnixNano(), 36)})
	ctx := context.Background()
	a, b := RunRef{Agent: "x", ID: "a"}, RunRef{Agent: "x", ID: "b"}
	for i, run := range []RunRef{a, b, a} {
		s.AppendStep(run, StepMeta{TS: time.Now(), Decision: "allow"}, []byte(strconv.Itoa(i)))
	}
	s.flushLog()
	page, err := s.ListRuns(ctx, RunQuery{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Runs) != 2 || page.Runs[0].Run != a || page.Runs[0].Steps != 2 || page.Runs[1].Run != b || page.Runs[1].Steps != 1 {
		t.Fatalf("runs %+v, want a (2 steps) before b (1 step)", page.Runs)
	}
	if agents, err := s.RunAgents(ctx, "a"); err != nil || len(agents) != 1 || agents[0] != "x" {
		t.Fatalf("agents of run a: %v %v", agents, err)
	}
}
