package riskstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/aisecops/aisecops-envoy/internal/redistest"
)

func TestNewRedisOptions(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		opts    RedisOptions
		wantErr string
	}{
		"neither url nor nodes":             {RedisOptions{}, "exactly one"},
		"both":                              {RedisOptions{URL: "redis://x", ClusterNodes: []string{"a:1"}}, "exactly one"},
		"bad scheme":                        {RedisOptions{URL: "http://x"}, "invalid URL scheme"},
		"prefix with brace":                 {RedisOptions{URL: "redis://x", KeyPrefix: "a{b"}, "must not contain"},
		"unparsable url hides the password": {RedisOptions{URL: "redis://u:hunter2@host:notaport"}, "invalid url"},
		"url":                               {RedisOptions{URL: "rediss://u:p@localhost:6380/2"}, ""},
		"cluster":                           {RedisOptions{ClusterNodes: []string{"127.0.0.1:1", "127.0.0.1:2"}}, ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r, err := NewRedis(tc.opts)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				_ = r.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error leaks the password: %v", err)
			}
		})
	}
}

// cmdCounter counts the commands go-redis processes (retries included once,
// pipelines as one), i.e. round trips from the store's point of view.
type cmdCounter struct {
	mu    sync.Mutex
	names []string
}

func (c *cmdCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *cmdCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.mu.Lock()
		c.names = append(c.names, cmd.Name())
		c.mu.Unlock()
		return next(ctx, cmd)
	}
}
func (c *cmdCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.mu.Lock()
		handshake := true
		for _, cmd := range cmds {
			handshake = handshake && cmd.Name() == "client"
		}
		switch {
		case handshake:
			c.names = append(c.names, "client")
		case len(cmds) == 1: // a batch of one (see scriptBatcher) is that command
			c.names = append(c.names, cmds[0].Name())
		default:
			c.names = append(c.names, "pipeline")
		}
		c.mu.Unlock()
		return next(ctx, cmds)
	}
}

func (c *cmdCounter) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.names
	c.names = nil
	return out
}

// countedStore is a store whose commands on the wire are counted: at the node
// clients on a Cluster, since that is where commands hit the wire. Its
// connections are open and the scripts loaded on every master, so that what
// is counted is what every call costs once warm.
func countedStore(t *testing.T, cluster bool) (*Redis, *cmdCounter) {
	counter := &cmdCounter{}
	var r *Redis
	if cluster {
		r = newRedisStore(t, RedisOptions{ClusterNodes: sharedCluster(t).Addrs()})
		r.cluster.OnNewNode(func(c *redis.Client) { c.AddHook(counter) })
	} else {
		r = newRedisStore(t, RedisOptions{URL: "redis://" + sharedNode(t).Addr()})
		r.AddHook(counter)
	}
	ctx := context.Background()
	load := func(ctx context.Context, c redis.Scripter) error {
		for _, s := range []*redis.Script{commitScript, loadScript, ownerScript} {
			if err := s.Load(ctx, c).Err(); err != nil {
				return err
			}
		}
		return nil
	}
	var err error
	if cluster {
		err = r.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return load(ctx, c) })
	} else {
		err = load(ctx, r.c())
	}
	if err != nil {
		t.Fatal(err)
	}
	counter.take()
	return r, counter
}

// scripts are the commands counted, without a Cluster client's slot-map
// refreshes and its one-time fetch of the command table (not per call).
func (c *cmdCounter) scripts() []string {
	var out []string
	for _, name := range c.take() {
		// Not the cluster's topology or a new connection's handshake.
		if name != "cluster" && name != "command" && name != "hello" && name != "client" {
			out = append(out, name)
		}
	}
	return out
}

var clusterNames = map[bool]string{false: "redis", true: "cluster"}

// TestRedisOneRoundTripPerCall: once the scripts are cached, a Load, a
// ClaimRun and a Commit on a known run — whatever its outcome, versioned or
// not — are each exactly one command on the wire. On a single node a run's
// first Commit is one too; on a Cluster it takes three (the commit script,
// the owner claim, the commit script again), and a first step that does not
// commit two.
func TestRedisOneRoundTripPerCall(t *testing.T) {
	t.Parallel()
	for _, cluster := range []bool{false, true} {
		t.Run(clusterNames[cluster], func(t *testing.T) {
			r, counter := countedStore(t, cluster)
			ctx := context.Background()
			// Warm up: the first call of each script loads it (NOSCRIPT → EVAL).
			if _, err := r.Commit(ctx, RunRef{Agent: "warm", ID: "warm"}, st("w", 0), Limits{}, time.Hour); err != nil {
				t.Fatal(err)
			}
			if _, err := r.Load(ctx, RunRef{Agent: "warm", ID: "warm"}, "w"); err != nil {
				t.Fatal(err)
			}
			first := 1
			if cluster {
				first = 3
			}
			unCommitted := 1
			if cluster {
				unCommitted = 2
			}
			known := RunRef{Agent: "rt", ID: "known"}
			commitOK := func(run RunRef, s Step, lim Limits, want Outcome) error {
				res, err := r.Commit(ctx, run, s, lim, time.Hour)
				if err == nil && res.Outcome != want {
					err = fmt.Errorf("outcome %v %q, want %v", res.Outcome, res.Limit, want)
				}
				return err
			}
			fresh := func(i int) RunRef { return RunRef{Agent: "rt", ID: "fresh-" + strconv.Itoa(i)} }
			tests := []struct {
				name string
				call func(i int) error
				want int
			}{
				{"first commit", func(i int) error { return commitOK(fresh(i), st("a", 0), Limits{}, Committed) }, first},
				{"commit", func(i int) error {
					return commitOK(known, st("c"+strconv.Itoa(i), 0), Limits{AgentWindow: time.Hour}, Committed)
				}, 1},
				{"duplicate", func(i int) error { return commitOK(known, st("c"+strconv.Itoa(i), 0), Limits{}, Duplicate) }, 1},
				{"refused", func(i int) error { return commitOK(known, st("r", 0), Limits{MaxToolCalls: 1}, Refused) }, 1},
				// A versioned Commit, even a stale one that returns the whole
				// state, is still one command.
				{"stale", func(i int) error { return commitOK(known, st("v", 0).withVersion(0), Limits{}, Stale) }, 1},
				{"load", func(i int) error { _, err := r.Load(ctx, known, "c1"); return err }, 1},
				{"load of an unknown run", func(i int) error { _, err := r.Load(ctx, fresh(100+i), ""); return err }, 1},
				{"claim", func(i int) error { _, err := r.ClaimRun(ctx, fresh(200+i), time.Hour); return err }, 1},
				{"refused first step", func(i int) error { return commitOK(fresh(300+i), st("a", 1), Limits{MaxRisk: 0.5}, Refused) }, unCommitted},
				{"stale first step", func(i int) error { return commitOK(fresh(400+i), st("a", 0).withVersion(3), Limits{}, Stale) }, unCommitted},
				{"another agent's run id", func(i int) error {
					return commitOK(RunRef{Agent: "other", ID: known.ID}, st("a", 0), Limits{}, Refused)
				}, unCommitted},
			}
			if err := commitOK(known, st("k", 0), Limits{}, Committed); err != nil {
				t.Fatal(err)
			}
			for _, tc := range tests {
				counter.take()
				const n = 10
				for i := range n {
					if err := tc.call(i); err != nil {
						t.Fatalf("%s: %v", tc.name, err)
					}
				}
				want := slices.Repeat([]string{"evalsha"}, n*tc.want)
				if diff := cmp.Diff(want, counter.scripts()); diff != "" {
					t.Errorf("%s: commands for %d calls (-want +got):\n%s", tc.name, n, diff)
				}
			}
		})
	}
}

// TestRedisClusterOwnerRefresh: on a Cluster a run's commits stay one round
// trip while its owner key is known to outlive it; when it no longer is, a
// commit claims the owner again (three round trips) and the next ones are
// one round trip again.
//
// Not parallel: it expects the owner key's TTL to fall below 1s after 1.2s of a
// 2s lifetime, too tight for a CPU shared with the parallel tests.
func TestRedisClusterOwnerRefresh(t *testing.T) {
	r, counter := countedStore(t, true)
	admin := sharedCluster(t).Client(t)
	ctx := context.Background()
	const ttl = time.Second
	commitN := func(req string) []string {
		t.Helper()
		counter.take()
		res, err := r.Commit(ctx, runA, st(req, 0), Limits{}, ttl)
		if err != nil || res.Outcome != Committed {
			t.Fatalf("commit %s: %v %v", req, res.Outcome, err)
		}
		return counter.scripts()
	}
	ownerTTL := func() time.Duration {
		t.Helper()
		d, err := admin.PTTL(ctx, r.runKeys(runA).owner).Result()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if n := commitN("a"); len(n) != 3 {
		t.Errorf("first commit: %q, want 3 script calls", n)
	}
	if d := ownerTTL(); d <= ttl || d > ownerFactor*ttl {
		t.Errorf("owner key lives %v after the claim, want (%v, %v]", d, ttl, ownerFactor*ttl)
	}
	if n := commitN("b"); len(n) != 1 {
		t.Errorf("second commit: %q, want 1 script call", n)
	}
	// Keep the run alive with Loads until less than ttl is left of the owner.
	for range 2 {
		time.Sleep(600 * time.Millisecond)
		if _, err := r.Load(ctx, runA, ""); err != nil {
			t.Fatal(err)
		}
	}
	if d := ownerTTL(); d >= ttl {
		t.Fatalf("owner key lives %v, test expects less than %v", d, ttl)
	}
	if n := commitN("c"); len(n) != 3 {
		t.Errorf("commit with the owner key running out: %q, want 3 script calls", n)
	}
	if d := ownerTTL(); d <= ttl {
		t.Errorf("owner key lives %v after the commit, want it claimed again for %v", d, ownerFactor*ttl)
	}
	if n := commitN("d"); len(n) != 1 {
		t.Errorf("next commit: %q, want 1 script call", n)
	}
	if got, err := r.Load(ctx, runA, ""); err != nil || got.Version != 4 {
		t.Errorf("the run: version %d (%v), want 4 (the same run throughout)", got.Version, err)
	}
}

// TestRedisOwnerKeptAliveByLoads: a run kept alive by Loads only keeps its
// owner on a single node (as in Memory). On a Cluster the owner key is not
// refreshed by Loads; once it has expired another agent may claim the run id,
// and the first agent is then refused (it fails closed).
//
// Not parallel: a 300ms TTL kept alive every 100ms leaves too little slack for
// a CPU shared with the parallel tests.
func TestRedisOwnerKeptAliveByLoads(t *testing.T) {
	for _, cluster := range []bool{false, true} {
		t.Run(clusterNames[cluster], func(t *testing.T) {
			r, _ := countedStore(t, cluster)
			ctx := context.Background()
			const ttl = 300 * time.Millisecond
			if res, err := r.Commit(ctx, runA, st("a", 0), Limits{}, ttl); err != nil || res.Outcome != Committed {
				t.Fatalf("%v %v", res.Outcome, err)
			}
			for range 10 { // a second: past the owner's lifetime on a Cluster
				time.Sleep(ttl / 3)
				if got, err := r.Load(ctx, runA, ""); err != nil || got.Version != 1 {
					t.Fatalf("the run expired while loaded: %+v %v", got, err)
				}
			}
			owner, err := r.ClaimRun(ctx, runB, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			res, err := r.Commit(ctx, runA, st("b", 0), Limits{}, ttl)
			if err != nil {
				t.Fatal(err)
			}
			if !cluster {
				if owner != runA.Agent || res.Outcome != Committed {
					t.Errorf("single node: claim by another agent = %q, then commit %v %q; want %q and committed", owner, res.Outcome, res.Limit, runA.Agent)
				}
				return
			}
			if owner != runB.Agent || res.Outcome != Refused || res.Limit != RunOwned {
				t.Errorf("cluster: claim by another agent = %q, then commit %v %q; want %q and refused %q", owner, res.Outcome, res.Limit, runB.Agent, RunOwned)
			}
		})
	}
}

// pttls returns the remaining lifetime of keys (-2 for a missing key).
func pttls(t *testing.T, c redis.Cmdable, keys ...string) []time.Duration {
	t.Helper()
	out := make([]time.Duration, len(keys))
	for i, k := range keys {
		d, err := c.PTTL(context.Background(), k).Result()
		if err != nil {
			t.Fatal(err)
		}
		out[i] = d
	}
	return out
}

// TestRedisLifetime holds the keys' TTLs to Memory's lifetimes (see
// TestMemoryLifetime): a commit, a refusal (with its own ttl) and a Load
// (with the last commit's ttl) extend every key of the run, never shortening
// it; a duplicate or stale commit does not. A commit's claim keeps the owner
// key ownerFactor times the ttl; on a single node a Load or refusal renews it
// when it would no longer outlive the run.
//
// Not parallel: it reads TTLs against a 250ms slack, too tight for a CPU shared
// with the parallel tests.
func TestRedisLifetime(t *testing.T) {
	for _, cluster := range []bool{false, true} {
		t.Run(clusterNames[cluster], func(t *testing.T) {
			r, _ := countedStore(t, cluster)
			var admin redis.Cmdable
			if cluster {
				admin = sharedCluster(t).Client(t)
			} else {
				admin = sharedNode(t).Client(t)
			}
			ctx := context.Background()
			k := r.runKeys(runA)
			mustCommit := func(s Step, lim Limits, ttl time.Duration, want Outcome) {
				t.Helper()
				if res, err := r.Commit(ctx, runA, s, lim, ttl); err != nil || res.Outcome != want {
					t.Fatalf("commit %s: %v %v, want %v", s.RequestID, res.Outcome, err, want)
				}
			}
			// near reports whether every d is within (want-slack, want].
			near := func(ds []time.Duration, want time.Duration) bool {
				for _, d := range ds {
					if d > want || d < want-250*time.Millisecond {
						return false
					}
				}
				return true
			}
			mustCommit(st("a", 0, "fact"), Limits{AgentWindow: time.Hour}, 10*time.Second, Committed)
			if got := pttls(t, admin, k.run[0]); !near(got, 10*time.Second) {
				t.Errorf("run keys after a commit with ttl 10s: %v", got)
			}
			owner := pttls(t, admin, k.owner)[0]
			if !near([]time.Duration{owner}, ownerFactor*10*time.Second) {
				t.Errorf("owner key after the first commit: %v", owner)
			}
			if usage := pttls(t, admin, k.run[1])[0]; usage < 9*time.Second || usage > time.Hour {
				t.Errorf("agent usage key lives %v, want the later of the window's end and the ttl", usage)
			}

			time.Sleep(400 * time.Millisecond)
			before := pttls(t, admin, k.run[0])
			mustCommit(st("b", 0), Limits{MaxToolCalls: 1}, 10*time.Second, Refused)
			if got := pttls(t, admin, k.run[0]); !near(got, 10*time.Second) {
				t.Errorf("run keys after a refusal with ttl 10s: %v (before %v)", got, before)
			}
			if got := pttls(t, admin, k.owner)[0]; got < 19*time.Second {
				t.Errorf("owner key after a refusal: %v, want the claim's 20s kept", got)
			}
			mustCommit(st("c", 0), Limits{MaxToolCalls: 1}, 30*time.Second, Refused)
			if got := pttls(t, admin, k.run[0]); !near(got, 30*time.Second) {
				t.Errorf("run keys after a refusal with ttl 30s: %v", got)
			}
			if !cluster { // the claim's 20s no longer outlive the run: renewed for 2 × 30s
				if got := pttls(t, admin, k.owner)[0]; !near([]time.Duration{got}, ownerFactor*30*time.Second) {
					t.Errorf("owner key after a refusal with ttl 30s: %v", got)
				}
			}
			if _, err := r.Load(ctx, runA, ""); err != nil { // the last commit's 10s: shortens nothing
				t.Fatal(err)
			}
			if got := pttls(t, admin, k.run[0]); !near(got, 30*time.Second) {
				t.Errorf("run keys after a Load: %v, want the 30s of the refusal kept", got)
			}

			time.Sleep(400 * time.Millisecond)
			before = pttls(t, admin, k.run[0])
			mustCommit(st("a", 0), Limits{}, time.Hour, Duplicate)
			mustCommit(st("d", 0).withVersion(0), Limits{}, time.Hour, Stale)
			if got := pttls(t, admin, k.run[0]); got[0] > before[0] {
				t.Errorf("a duplicate or stale commit extended the run: %v, before %v", got, before)
			}

			k2 := r.runKeys(runA2)
			if res, err := r.Commit(ctx, runA2, st("a", 0, "f"), Limits{}, 2*time.Second); err != nil || res.Outcome != Committed {
				t.Fatalf("%v %v", res.Outcome, err)
			}
			time.Sleep(500 * time.Millisecond)
			if _, err := r.Load(ctx, runA2, ""); err != nil {
				t.Fatal(err)
			}
			if got := pttls(t, admin, k2.run[0]); !near(got, 2*time.Second) {
				t.Errorf("run keys after a Load: %v, want the 2s of the last commit", got)
			}
			if !cluster {
				// Loads alone keep the run alive past the claim's 4s: on a
				// single node they renew the owner before the run outlives it.
				for range 6 {
					time.Sleep(500 * time.Millisecond)
					if _, err := r.Load(ctx, runA2, ""); err != nil {
						t.Fatal(err)
					}
				}
				run, owner := pttls(t, admin, k2.run[0])[0], pttls(t, admin, k2.owner)[0]
				if run <= 0 || owner < run {
					t.Errorf("after Loads for 3.5s the run lives %v and its owner %v", run, owner)
				}
			}
		})
	}
}

// TestRedisEveryKeyHasTTL scans a server the store wrote runs, agent usage,
// owners, approvals and token ids to: every key must expire.
func TestRedisEveryKeyHasTTL(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t)
	r := newRedisStore(t, RedisOptions{URL: "redis://" + srv.Addr()})
	ctx := context.Background()
	var many []string
	for i := range 2 * MaxFacts {
		many = append(many, "fact-"+strconv.Itoa(i))
	}
	lim := Limits{AgentWindow: time.Minute}
	for i := range maxRequestIDs + 100 { // past maxRequestIDs, so request ids are evicted too
		run := runA
		if i%1000 == 0 {
			run = runA2
		}
		if _, err := r.Commit(ctx, run, st("req"+strconv.Itoa(i), 0.001, many[i%len(many)]), lim, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.ClaimRun(ctx, runC, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := r.CreateApproval(ctx, Approval{ID: "a1", Binding: "h"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := r.DecideApproval(ctx, "a1", true, "alice", "", t0); err != nil {
		t.Fatal(err)
	}
	if _, err := r.UseOnce(ctx, "jti", "owner", time.Hour); err != nil {
		t.Fatal(err)
	}
	c := srv.Client(t)
	keys, err := c.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	// 2 runs, the agent's usage, 3 owners, 4 approval keys, 1 token id.
	if len(keys) != 2+1+3+4+1 {
		t.Errorf("got %d keys, want 11: %q", len(keys), keys)
	}
	for _, k := range keys {
		ttl, err := c.PTTL(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		if ttl <= 0 || ttl > ownerFactor*time.Hour { // an owner outlives its run (see Redis)
			t.Errorf("key %q has TTL %v, want within (0, %v]", k, ttl, ownerFactor*time.Hour)
		}
	}
	fields, err := c.HGetAll(ctx, r.runKeys(runA).run[0]).Result()
	if err != nil {
		t.Fatal(err)
	}
	requests, slots := 0, 0
	for f := range fields {
		switch {
		case strings.HasPrefix(f, "r:"):
			requests++
		case strings.HasPrefix(f, "q:"):
			slots++
		}
	}
	if requests != maxRequestIDs || slots != maxRequestIDs {
		t.Errorf("request ids remembered = %d in %d ring slots, want %d", requests, slots, maxRequestIDs)
	}
	if n := len(strings.Split(fields["f"], "\n")); n != MaxFacts {
		t.Errorf("facts kept = %d, want %d", n, MaxFacts)
	}
}

// TestRedisClusterAgentKeysShareASlot: every key of all of an agent's runs and
// the agent's usage hash to one slot, whatever bytes the ids hold, and no id
// puts a brace in a key; the owner keys carry their own tag; the run really
// lives on the cluster.
func TestRedisClusterAgentKeysShareASlot(t *testing.T) {
	t.Parallel()
	cl := sharedCluster(t)
	r := newRedisStore(t, RedisOptions{ClusterNodes: cl.Addrs()})
	c := cl.Client(t)
	ctx := context.Background()
	for _, agent := range []string{"a", "{agent}", "x}{y\x00"} {
		slots := map[int64]bool{}
		for _, id := range []string{"a", "run-42", "{run}", "}", strings.Repeat("{", MaxIDLen-len(agent))} {
			ref := RunRef{Agent: agent, ID: agent + id} // run ids are owned across agents: one set per agent
			if res, err := r.Commit(ctx, ref, st("r", 0, "f"), Limits{AgentWindow: time.Hour}, time.Hour); err != nil || res.Outcome != Committed {
				t.Fatalf("%+v: %v %v", ref, res.Outcome, err)
			}
			k := r.runKeys(ref)
			for _, key := range append(k.run[:], k.owner) {
				if strings.Count(key, "{") != 1 || strings.Count(key, "}") != 1 {
					t.Errorf("key %q holds braces of an id", key)
				}
				if n, err := c.Exists(ctx, key).Result(); err != nil || n != 1 {
					t.Errorf("key %q exists = %d (%v)", key, n, err)
				}
			}
			for _, key := range k.run {
				s, err := c.ClusterKeySlot(ctx, key).Result()
				if err != nil {
					t.Fatal(err)
				}
				slots[s] = true
			}
		}
		if len(slots) != 1 {
			t.Errorf("agent %q: keys span slots %v", agent, slots)
		}
	}
	slots := map[int64]bool{}
	for _, k := range r.approvalKeys() {
		s, err := c.ClusterKeySlot(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		slots[s] = true
	}
	if len(slots) != 1 {
		t.Errorf("approval keys span slots %v", slots)
	}
	if err := r.Ping(ctx); err != nil {
		t.Errorf("Ping: %v", err)
	}
}

// TestRedisKillAndRestart: a dead Redis fails a Commit within the caller's
// deadline, never with an outcome; the same store works again after restart.
func TestRedisKillAndRestart(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t)
	r := newRedisStore(t, RedisOptions{URL: "redis://" + srv.Addr(), OpTimeout: 100 * time.Millisecond})
	ctx := context.Background()
	if _, err := r.Commit(ctx, runA, Step{ExpectVersion: AnyVersion, RequestID: "before"}, Limits{}, time.Hour); err != nil {
		t.Fatal(err)
	}

	// Load while it dies: concurrent callers see errors, never an outcome
	// without a reply from the script.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var bad atomic.Int64
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
				res, err := r.Commit(cctx, runA, Step{ExpectVersion: AnyVersion, RequestID: "g" + strconv.Itoa(g) + "-" + strconv.Itoa(i)}, Limits{}, time.Hour)
				cancel()
				if err != nil && res.Outcome != 0 {
					bad.Add(1)
				}
			}
		}()
	}
	time.Sleep(20 * time.Millisecond) // let the load start; not a timing assertion
	srv.Kill()

	const deadline = 200 * time.Millisecond
	for i := range 5 {
		cctx, cancel := context.WithTimeout(ctx, deadline)
		start := time.Now()
		res, err := r.Commit(cctx, runA, Step{ExpectVersion: AnyVersion, RequestID: "down" + strconv.Itoa(i)}, Limits{}, time.Hour)
		took := time.Since(start)
		cancel()
		if err == nil || res.Outcome != 0 {
			t.Fatalf("Commit with Redis down = %+v, %v; want an error and no outcome", res, err)
		}
		// Bound, not a speed target: it must honour the ctx instead of stalling
		// on go-redis's defaults (seconds). Slack for -race on two cores.
		if took > deadline+time.Second {
			t.Errorf("Commit with Redis down took %v, deadline %v", took, deadline)
		}
	}
	if err := r.Ping(ctx); err == nil {
		t.Error("Ping succeeded with Redis down")
	}
	close(stop)
	wg.Wait()
	if bad.Load() != 0 {
		t.Errorf("%d Commits returned an outcome together with an error", bad.Load())
	}

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	var err error
	for i := range 100 { // go-redis re-tests a failing pool about once a second
		cctx, cancel := context.WithTimeout(ctx, deadline)
		var res CommitResult
		res, err = r.Commit(cctx, runA, Step{ExpectVersion: AnyVersion, RequestID: "after" + strconv.Itoa(i)}, Limits{}, time.Hour)
		cancel()
		if err == nil {
			// No persistence in the test server: the run starts over.
			if res.Outcome != Committed || res.State.ToolCalls != 1 {
				t.Errorf("after restart: %+v", res)
			}
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("store did not recover after restart: %v", err)
	}
	if err := r.Ping(ctx); err != nil {
		t.Errorf("Ping after restart: %v", err)
	}
}

// TestRedisScriptFlushUnderLoad: SCRIPT FLUSH while Commits run → no error
// (EVALSHA falls back to EVAL on NOSCRIPT).
func TestRedisScriptFlushUnderLoad(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t)
	r := newRedisStore(t, RedisOptions{URL: "redis://" + srv.Addr()})
	admin := srv.Client(t)
	ctx := context.Background()
	stop := make(chan struct{})
	flushes := make(chan int)
	go func() {
		n := 0
		defer func() { flushes <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := admin.ScriptFlush(ctx).Err(); err == nil {
				n++
			}
			time.Sleep(time.Millisecond)
		}
	}()
	const workers, each = 4, 250
	var wg sync.WaitGroup
	var errs atomic.Int64
	var firstErr atomic.Value
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				req := strconv.Itoa(w) + "-" + strconv.Itoa(i)
				_, err := r.Commit(ctx, runA, Step{ExpectVersion: AnyVersion, RequestID: req}, Limits{}, time.Hour)
				if err == nil {
					_, err = r.Load(ctx, runA, req)
				}
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	n := <-flushes
	if errs.Load() != 0 {
		t.Fatalf("%d errors under SCRIPT FLUSH, first: %v", errs.Load(), firstErr.Load())
	}
	if n == 0 {
		t.Fatal("no SCRIPT FLUSH ran")
	}
	got, err := r.Load(ctx, runA, "")
	if err != nil || got.ToolCalls != workers*each {
		t.Errorf("tool calls = %d (%v), want %d", got.ToolCalls, err, workers*each)
	}
	t.Logf("%d SCRIPT FLUSHes during %d Commits", n, workers*each)
}

// TestRedisDelayedReplyOneDebit: the reply to a Commit is delayed past the
// client's timeout (go-redis retries meanwhile, and stuck commands can run
// late); the caller's retry with the same request id → exactly one debit.
//
// Not parallel: the Commit must reach Redis within a 400ms pause, too tight for
// a CPU shared with the parallel tests.
func TestRedisDelayedReplyOneDebit(t *testing.T) {
	tests := map[string]struct {
		block       func(ctx context.Context, admin *redis.Client) error
		mustTimeout bool // the block is in place before the Commit is sent
	}{
		"client pause": {
			block: func(ctx context.Context, admin *redis.Client) error {
				return admin.Do(ctx, "CLIENT", "PAUSE", 400, "WRITE").Err()
			},
			mustTimeout: true,
		},
		"debug sleep": {
			block: func(ctx context.Context, admin *redis.Client) error {
				go func() { _ = admin.Do(context.Background(), "DEBUG", "SLEEP", "0.4").Err() }()
				time.Sleep(50 * time.Millisecond) // let it start; the assertion holds either way
				return nil
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			srv := redistest.StartServer(t, "--enable-debug-command", "local")
			r := newRedisStore(t, RedisOptions{URL: "redis://" + srv.Addr(), OpTimeout: 50 * time.Millisecond, MaxRetries: 3})
			admin := redis.NewClient(&redis.Options{Addr: srv.Addr(), ReadTimeout: 2 * time.Second})
			t.Cleanup(func() { _ = admin.Close() })
			ctx := context.Background()
			if _, err := r.Commit(ctx, runA, Step{ExpectVersion: AnyVersion, RequestID: "warm"}, Limits{}, time.Hour); err != nil {
				t.Fatal(err)
			}
			if err := tc.block(ctx, admin); err != nil {
				t.Fatal(err)
			}
			step := Step{ExpectVersion: AnyVersion, RequestID: "once", DecisionID: "d1", Risk: 0.25}
			cctx, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
			_, err := r.Commit(cctx, runA, step, Limits{}, time.Hour)
			cancel()
			err0 := err
			switch {
			case err == nil && tc.mustTimeout:
				t.Fatal("Commit succeeded while Redis was paused")
			case err == nil:
				t.Log("the block was not in place in time; retry path not exercised")
			}
			// The caller retries with the same request id until Redis answers.
			var res CommitResult
			for range 100 {
				cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
				res, err = r.Commit(cctx, runA, step, Limits{}, time.Hour)
				cancel()
				if err == nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("first attempt: %v; retry: %v", err0, res.Outcome)
			if res.Outcome != Committed && res.Outcome != Duplicate {
				t.Fatalf("retry outcome %v", res.Outcome)
			}
			got, err := r.Load(ctx, runA, "once")
			if err != nil {
				t.Fatal(err)
			}
			if got.ToolCalls != 2 || got.RiskTotal != 0.25 {
				t.Errorf("after the retry: tool calls %d, risk %v; want 2 and 0.25 (one debit)", got.ToolCalls, got.RiskTotal)
			}
			if got.Prior == nil || got.Prior.DecisionID != "d1" {
				t.Errorf("prior = %+v, want decision d1", got.Prior)
			}
		})
	}
}

// TestRedisACL: ACL user and password from the URL (or the options); a wrong
// password fails without the password in the error.
func TestRedisACL(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t, "--user", "default", "off", "--user", "authz", "on", ">s3cret-pw", "~*", "&*", "+@all")
	ctx := context.Background()
	tests := map[string]struct {
		opts RedisOptions
		ok   bool
	}{
		"url credentials":    {RedisOptions{URL: "redis://authz:s3cret-pw@" + srv.Addr()}, true},
		"option credentials": {RedisOptions{URL: "redis://" + srv.Addr(), Username: "authz", Password: "s3cret-pw"}, true},
		"wrong password":     {RedisOptions{URL: "redis://authz:wrong-pw@" + srv.Addr()}, false},
		"no credentials":     {RedisOptions{URL: "redis://" + srv.Addr()}, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := newRedisStore(t, tc.opts)
			_, err := r.Commit(ctx, runA, Step{ExpectVersion: AnyVersion, RequestID: name}, Limits{}, time.Hour)
			if (err == nil) != tc.ok {
				t.Fatalf("Commit err = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && (strings.Contains(err.Error(), "wrong-pw") || strings.Contains(err.Error(), "s3cret")) {
				t.Errorf("error leaks the password: %v", err)
			}
			if err := r.Ping(ctx); (err == nil) != tc.ok {
				t.Errorf("Ping err = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestRedisPingCluster(t *testing.T) {
	t.Parallel()
	r := newRedisStore(t, RedisOptions{ClusterNodes: sharedCluster(t).Addrs()})
	if err := r.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	dead := newRedisStore(t, RedisOptions{ClusterNodes: []string{"127.0.0.1:1"}, OpTimeout: 50 * time.Millisecond})
	cctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := dead.Ping(cctx); err == nil {
		t.Fatal("Ping of an unreachable cluster succeeded")
	} else if !strings.HasPrefix(err.Error(), "riskstore: ping redis:") {
		t.Errorf("error lacks context: %v", err)
	}
}

// TestRedisRefusesVolatile: a store that requires durability is not ready and
// refuses every write while Redis has no append-only file, and serves as soon
// as the file is turned on (a restarted Redis is checked again the same way).
func TestRedisRefusesVolatile(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t) // --appendonly no
	ctx := context.Background()
	r := newRedisStore(t, RedisOptions{URL: "redis://" + srv.Addr(), RequireDurable: true})
	if err := r.Ping(ctx); !errors.Is(err, ErrVolatile) {
		t.Fatalf("Ping on a volatile Redis: %v", err)
	}
	run := RunRef{Agent: "a", ID: "r"}
	if _, err := r.Commit(ctx, run, Step{ExpectVersion: AnyVersion, RequestID: "x"}, Limits{}, time.Hour); !errors.Is(err, ErrVolatile) {
		t.Fatalf("Commit on a volatile Redis: %v", err)
	}
	if _, err := r.UseOnce(ctx, "jti:x", "owner", time.Minute); !errors.Is(err, ErrVolatile) {
		t.Fatalf("UseOnce on a volatile Redis: %v", err)
	}
	if err := srv.Client(t).ConfigSet(ctx, "appendonly", "yes").Err(); err != nil {
		t.Fatal(err)
	}
	if err := r.Ping(ctx); err != nil {
		t.Fatalf("Ping with AOF on: %v", err)
	}
	if res, err := r.Commit(ctx, run, Step{ExpectVersion: AnyVersion, RequestID: "x"}, Limits{}, time.Hour); err != nil || res.Outcome != Committed {
		t.Fatalf("Commit with AOF on: %v %v", res, err)
	}
	// Without the requirement a volatile Redis serves, and says so.
	loose := newRedisStore(t, RedisOptions{URL: "redis://" + redistest.StartServer(t).Addr()})
	if err := loose.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if durable, err := loose.Durable(ctx); err != nil || durable {
		t.Fatalf("Durable = %v %v", durable, err)
	}
}

// TestUseOnceSurvivesItsOwnRetry: when the reply to the write that records a
// token id is lost (here: held past the read timeout), go-redis sends the
// command again on a new connection. That retry must not read the call's own
// write as a replay — before owners, it came back "first = false" and the
// call was denied token_replayed. Another call with the same id still is.
func TestUseOnceSurvivesItsOwnRetry(t *testing.T) {
	t.Parallel()
	const timeout = 200 * time.Millisecond
	proxy := newStallingProxy(t, sharedNode(t).Addr(), []byte("jti:retry"), 3*timeout)
	r := newRedisStore(t, RedisOptions{URL: "redis://" + proxy.addr, OpTimeout: timeout, MaxRetries: 2})
	ctx := context.Background()
	// Load the script first, so the stalled command is the one that writes.
	if _, err := r.UseOnce(ctx, "jti:warm", "d0", time.Minute); err != nil {
		t.Fatal(err)
	}
	first, err := r.UseOnce(ctx, "jti:retry", "d1", time.Minute)
	if err != nil || !first {
		t.Fatalf("UseOnce after a lost reply = %v, %v; want first", first, err)
	}
	if proxy.stalled.Load() != 1 {
		t.Fatalf("the proxy stalled %d replies; the test did not lose one", proxy.stalled.Load())
	}
	if first, err := r.UseOnce(ctx, "jti:retry", "d2", time.Minute); err != nil || first {
		t.Fatalf("another call with the same id = %v, %v; want a replay", first, err)
	}
}

// stallingProxy forwards TCP to a Redis and, once, holds back the reply to
// the first request that contains marker for stall.
type stallingProxy struct {
	addr    string
	stalled atomic.Int32
}

func newStallingProxy(t *testing.T, upstream string, marker []byte, stall time.Duration) *stallingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	p := &stallingProxy{addr: ln.Addr().String()}
	var armed atomic.Bool
	armed.Store(true)
	go func() {
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", upstream)
			if err != nil {
				_ = down.Close()
				continue
			}
			var stallThis atomic.Bool
			go func() { // client to Redis
				defer func() { _ = up.Close() }()
				buf := make([]byte, 64<<10)
				for {
					n, err := down.Read(buf)
					if n > 0 {
						if bytes.Contains(buf[:n], marker) && armed.CompareAndSwap(true, false) {
							stallThis.Store(true)
						}
						if _, werr := up.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
			go func() { // Redis to client
				defer func() { _ = down.Close() }()
				buf := make([]byte, 64<<10)
				for {
					n, err := up.Read(buf)
					if n > 0 {
						if stallThis.CompareAndSwap(true, false) {
							p.stalled.Add(1)
							time.Sleep(stall)
						}
						if _, werr := down.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return p
}

// TestRedisRevivesAfterOutage: after Redis is killed — long enough for
// go-redis to stop dialing and fall back to its once-a-second probe — and
// restarted, the store serves again: its watcher finds Redis answering and
// swaps in a fresh client instead of waiting for that probe. (How soon is
// measured by the soak, `make soak`: allows resume after Redis answers.)
func TestRedisRevivesAfterOutage(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t)
	r := newRedisStore(t, RedisOptions{URL: "redis://" + srv.Addr(), OpTimeout: 200 * time.Millisecond, PoolSize: 2, MaxRetries: -1})
	ctx := context.Background()
	run := RunRef{Agent: "a", ID: "revive"}
	if _, err := r.Commit(ctx, run, st("r1", 0), Limits{}, time.Hour); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	for i := range 10 { // more failed dials than the pool size: go-redis stops dialing
		if _, err := r.Commit(ctx, run, st(fmt.Sprintf("down%d", i), 0), Limits{}, time.Hour); err == nil {
			t.Fatal("a commit succeeded with Redis down")
		}
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := r.Commit(ctx, RunRef{Agent: "a", ID: "after"}, st("up", 0), Limits{}, time.Hour)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the store did not serve again after Redis came back: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.node.mu.Lock()
	t.Logf("clients swapped: %d", r.node.swaps)
	r.node.mu.Unlock()
}
