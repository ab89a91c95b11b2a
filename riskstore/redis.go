package riskstore

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// RedisOptions configure the Redis store. Exactly one of URL and ClusterNodes is set.
type RedisOptions struct {
	// URL of a single Redis: redis://[user:password@]host:port[/db] or rediss://
	// for TLS. go-redis query parameters (dial_timeout, pool_size, …) are honoured
	// but the timeouts and retries below win.
	URL string
	// ClusterNodes are seed addresses (host:port) of a Redis Cluster.
	ClusterNodes []string
	// Username and Password (Redis ACL) override those in URL when set.
	Username string
	Password string
	// TLS, when set, is used for every connection (for rediss:// it replaces the
	// default config, e.g. to add a CA pool or a client certificate).
	TLS *tls.Config

	// OpTimeout bounds one network operation (dial, write, read). The ctx of each
	// call is honoured too, so a Check's deadline always wins. Default 100ms.
	OpTimeout time.Duration
	// MaxRetries is how often go-redis retries a failed command (default 2, -1
	// for none). Retries are safe — Commit is idempotent per request id inside
	// the script — and bounded by the ctx deadline.
	MaxRetries int
	// PoolSize per node (go-redis default when 0).
	PoolSize int
	// KeyPrefix starts every key (default "aisecops"). It must not contain '{' or '}'.
	KeyPrefix string
	// RequireDurable refuses every write while Redis does not persist writes
	// (the append-only file is off on a master): spent budgets, spent tokens
	// and used approvals would come back after a restart. Ping checks it.
	RequireDurable bool
	// ApprovalLimits bound pending approvals per run and per agent.
	ApprovalLimits ApprovalLimits
	// Now is the clock used for approval expiry (default time.Now). Run state
	// uses Redis's clock (TIME inside the scripts) for start times, execution
	// time, agent windows and TTLs, so every replica shares one clock.
	Now func() time.Time
}

const (
	defaultOpTimeout  = 100 * time.Millisecond
	defaultMaxRetries = 2
	defaultKeyPrefix  = "aisecops"
)

// Redis keeps run state, approvals and single-use ids in Redis or Redis
// Cluster (tested on 7.0; the scripts read TIME before writing, which needs
// replication by effects: the default since 5.0, the only mode since 7.0). It
// is safe for concurrent use.
//
// Keys. Ids are hashed (the first 128 bits of SHA-256, in hex) so that any
// bytes are accepted and no id can put a brace in a key:
//
//	<prefix>:{a:<H(agent)>}:r:<H(run id)>:run  hash: counters, risk, start, ttl, expiry, owner mark, facts, request ids
//	<prefix>:{a:<H(agent)>}:use                string: the agent's window usage
//	<prefix>:{o:<H(run id)>}:owner             string: the agent owning the run id
//
// (Before this layout a run took four keys and the usage a hash, under other
// names; an upgrade starts live runs afresh rather than misread them.)
//
// Every run of an agent and the agent's window usage share the hash tag
// {a:<H(agent)>}, so one script commits a step and the agent's window budget
// atomically on a Cluster too. The consequence: all of one agent's run state
// lives in one slot, on one master. A Cluster spreads agents, not one agent's
// runs; an agent busy enough to saturate a master needs a larger master, not
// more of them.
//
// Ownership. The owner key has its own hash tag (by run id): it is global
// across agents. A run records in its hash until when its owner key is known
// to be the agent's (its mark); while that outlives the run, a commit does not
// touch the owner key. A commit's claim keeps the owner for ownerFactor times
// the run's ttl, so the owner is read and extended about once per ttl of a
// run's activity. An owner therefore outlives its run by up to that much:
// meanwhile another agent's use of the run id is refused (RunOwned), which
// fails closed. On a single node the owner key is passed to the run scripts
// in KEYS (a plain Redis does not enforce slots), so a Commit is one round
// trip, first step included. On a Cluster it cannot be: when the run is not
// marked (a run's first commit, or every ttl or so of activity) the script
// changes nothing and answers what it would do; the store checks or claims
// the owner key in a second call, then commits in a third. Loads and
// refusals refresh a run; on a Cluster, to stay one round trip, they do not
// refresh its owner: a run kept alive only by Loads past its owner's lifetime
// is refused (RunOwned) if another agent claims its id meanwhile, which fails
// closed.
type Redis struct {
	cluster    *redis.ClusterClient // nil on a single node
	nodeClient atomic.Pointer[redis.Client]
	node       *node // single node: options, hooks, the reviving watcher (redis_revive.go)
	prefix     string
	now        func() time.Time

	// anonPrefix and anonSeq name steps committed without a request id, so that
	// a go-redis retry of such a Commit (same arguments) still cannot debit twice.
	anonPrefix string
	anonSeq    atomic.Uint64

	durability     durability
	approvalLimits ApprovalLimits
	log            redisLog
	commits        scriptBatcher // Commit's script calls, batched under load
}

var (
	_ Store     = (*Redis)(nil)
	_ Approvals = (*Redis)(nil)
	_ Nonces    = (*Redis)(nil)
)

// NewRedis builds the store. It does not dial: the first call or Ping does.
func NewRedis(opts RedisOptions) (*Redis, error) {
	if (opts.URL == "") == (len(opts.ClusterNodes) == 0) {
		return nil, errors.New("riskstore: redis: set exactly one of url and cluster nodes")
	}
	prefix := opts.KeyPrefix
	if prefix == "" {
		prefix = defaultKeyPrefix
	}
	if strings.ContainsAny(prefix, "{}") {
		return nil, fmt.Errorf("riskstore: redis: key prefix %q must not contain '{' or '}'", prefix)
	}
	timeout := opts.OpTimeout
	if timeout <= 0 {
		timeout = defaultOpTimeout
	}
	retries := opts.MaxRetries
	switch {
	case retries == 0:
		retries = defaultMaxRetries
	case retries < 0:
		retries = -1
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	var anon [8]byte
	if _, err := rand.Read(anon[:]); err != nil {
		return nil, fmt.Errorf("riskstore: redis: %w", err)
	}
	r := &Redis{prefix: prefix, now: now, anonPrefix: "\x00" + hex.EncodeToString(anon[:]) + ":"}
	r.commits = scriptBatcher{script: commitScript, client: r.c, maxInFlight: maxBatchInFlight,
		timeout: timeout * time.Duration(max(retries, 0)+2)}
	r.durability.required = opts.RequireDurable
	r.approvalLimits = opts.ApprovalLimits

	// Why these numbers: a dial is retried once (not go-redis's 5× at 100ms) so a
	// dead Redis fails a Check fast; the backoff between command retries is short
	// because the Check deadline is short; ContextTimeoutEnabled makes socket
	// deadlines follow the ctx.
	const dialRetries = 1
	minBackoff, maxBackoff := 2*time.Millisecond, 20*time.Millisecond
	disabled := &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}

	if opts.URL != "" {
		o, err := redis.ParseURL(opts.URL)
		if err != nil {
			return nil, fmt.Errorf("riskstore: redis url: %w", redactURLError(err))
		}
		if opts.Username != "" {
			o.Username = opts.Username
		}
		if opts.Password != "" {
			o.Password = opts.Password
		}
		if opts.TLS != nil {
			o.TLSConfig = opts.TLS
		}
		o.ClientName = "aisecops-envoy"
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout = timeout, timeout, timeout
		o.ContextTimeoutEnabled = true
		o.MaxRetries = retries
		o.MinRetryBackoff, o.MaxRetryBackoff = minBackoff, maxBackoff
		o.DialerRetries = dialRetries
		o.DialerRetryTimeout = minBackoff
		o.PoolTimeout = timeout
		if opts.PoolSize > 0 {
			o.PoolSize = opts.PoolSize
		}
		o.MaintNotificationsConfig = disabled
		r.startNode(o)
		return r, nil
	}
	co := &redis.ClusterOptions{
		Addrs:                 append([]string(nil), opts.ClusterNodes...),
		ClientName:            "aisecops-envoy",
		Username:              opts.Username,
		Password:              opts.Password,
		TLSConfig:             opts.TLS,
		DialTimeout:           timeout,
		ReadTimeout:           timeout,
		WriteTimeout:          timeout,
		ContextTimeoutEnabled: true,
		// The cluster client retries through MaxRedirects (its node clients do
		// not retry); one more attempt than MaxRetries leaves room for a MOVED
		// redirect even when retries are off.
		MaxRedirects:             max(retries, 0) + 1,
		MinRetryBackoff:          minBackoff,
		MaxRetryBackoff:          maxBackoff,
		DialerRetries:            dialRetries,
		DialerRetryTimeout:       minBackoff,
		PoolTimeout:              timeout,
		PoolSize:                 opts.PoolSize,
		MaintNotificationsConfig: disabled,
	}
	cc := redis.NewClusterClient(co)
	r.cluster = cc
	return r, nil
}

// redactURLError drops the URL (which may hold a password) from a parse error.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("invalid url: %w", ue.Err)
	}
	return err
}

// Close writes the queued step records, then releases the connections.
func (r *Redis) Close() error {
	r.flushLog()
	if r.cluster != nil {
		return r.cluster.Close()
	}
	close(r.node.stop)
	r.node.wg.Wait()
	return r.nodeClient.Load().Close()
}

// AddHook attaches a go-redis hook (instrumentation: counting round trips,
// tracing). It must be called before the store is used.
func (r *Redis) AddHook(h redis.Hook) {
	if r.cluster != nil {
		r.cluster.AddHook(h)
		return
	}
	r.node.mu.Lock()
	defer r.node.mu.Unlock()
	r.node.hooks = append(r.node.hooks, h)
	r.nodeClient.Load().AddHook(h)
}

// Ping reports whether Redis answers (every master, on a cluster); for /readyz.
func (r *Redis) Ping(ctx context.Context) error {
	var err error
	if r.cluster != nil {
		err = r.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			return c.Ping(ctx).Err()
		})
	} else {
		err = r.c().Ping(ctx).Err()
	}
	if err != nil {
		return fmt.Errorf("riskstore: ping redis: %w", err)
	}
	durable, err := r.Durable(ctx)
	switch {
	case err != nil:
		return err
	case !durable && r.durability.required:
		return ErrVolatile
	}
	return nil
}

// ownerFactor: a Commit's claim keeps the owner key this many times the
// run's ttl (see Redis).
const ownerFactor = 2

// idHash names an id in keys: the first 128 bits of its SHA-256, in hex.
func idHash(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:16])
}

// runKeys are the keys a run script touches, in KEYS order: the run and the
// agent's usage (both under the agent's hash tag), then, on a single node
// only, the run id's owner.
type runKeys struct {
	run   [2]string
	owner string
}

func (r *Redis) runKeys(ref RunRef) runKeys {
	agent, id := r.agentBase(ref.Agent), idHash(ref.ID) // each id hashed once
	return runKeys{
		run:   [2]string{agent + "r:" + id + ":run", agent + "use"},
		owner: r.prefix + ":{o:" + id + "}:owner",
	}
}

// agentBase starts the keys under an agent's hash tag.
func (r *Redis) agentBase(agent string) string { return r.prefix + ":{a:" + idHash(agent) + "}:" }

// runBase starts a run's keys (its hash, step log and summary).
func (r *Redis) runBase(ref RunRef) string {
	return r.agentBase(ref.Agent) + "r:" + idHash(ref.ID) + ":"
}

// keys returns KEYS for a run script: the owner key is included on a single
// node only (on a Cluster it lives in another slot).
func (r *Redis) keys(k runKeys) []string {
	if r.cluster != nil {
		return k.run[:]
	}
	return append(k.run[:], k.owner)
}

// requestField is the idempotency field for a request id. Long ids are hashed
// so an agent-influenced header cannot make each remembered id large.
func requestField(id string) string {
	if len(id) <= 64 {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "#" + hex.EncodeToString(sum[:])
}

// CommitsNonces implements NonceCommitter: on a single node the commit script
// spends Step.Nonce; a Cluster cannot (the nonce key is in another slot).
func (r *Redis) CommitsNonces() bool { return r.cluster == nil }

// Positions in the commit script's ARGV (1-based, as in Lua) that Commit
// changes between attempts; see commitScript for the rest.
const (
	argMode   = 1 // "node" or "cluster"
	argOwnerR = 2 // node: how long a claim keeps the owner; cluster: what the store knows of it (see commitScript)
)

// Commit implements Store. On a single node it is one script call. On a
// Cluster it is one script call while the run is known to be owned by its
// agent; otherwise see Redis for the extra calls.
func (r *Redis) Commit(ctx context.Context, ref RunRef, step Step, limits Limits, ttl time.Duration) (CommitResult, error) {
	if err := r.durability.refuse(); err != nil {
		return CommitResult{}, err
	}
	if !ref.valid() {
		return CommitResult{}, errors.New("riskstore: commit: invalid run reference")
	}
	if err := checkNumbers(step, limits); err != nil {
		return CommitResult{}, fmt.Errorf("riskstore: commit run %q: %w", truncate(ref.ID), err)
	}
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	k := r.runKeys(ref)
	args := r.commitArgs(ref, step, limits, ttl)
	if r.cluster == nil {
		args[argMode-1] = "node"
		args[argOwnerR-1] = max(ownerFactor*ttl.Milliseconds(), 1)
		keys := r.keys(k)
		if step.Nonce != "" {
			keys = append(keys, r.nonceKey(step.Nonce))
		}
		res, err := r.runCommit(ctx, ref, keys, args)
		if err != nil {
			return CommitResult{}, err
		}
		return res.result()
	}
	if step.Nonce != "" {
		// A nonce key is global, in its own slot: a Cluster cannot spend it
		// in the run's script (Nonces.UseOnce does it there).
		return CommitResult{}, errors.New("riskstore: commit: a Redis Cluster does not commit nonces")
	}
	args[argMode-1] = "cluster"
	ownerR := int64(-1) // unknown: the script relies on the run's own mark
	for range 3 {
		args[argOwnerR-1] = ownerR
		res, err := r.runCommit(ctx, ref, r.keys(k), args)
		if err != nil {
			return CommitResult{}, err
		}
		if res.predicted == 0 {
			return res.result()
		}
		// The script changed nothing: it needs to know the owner first.
		op := ownerGet
		switch {
		case res.predicted == Committed:
			op = ownerClaim // a first commit claims the run id
		case res.predicted == Refused && res.state.Version > 0:
			op = ownerTouch // a refusal refreshes the owner as it refreshes the run
		}
		opTTL := ttl
		if op == ownerClaim {
			opTTL = ownerFactor * ttl
		}
		sent := time.Now()
		owner, pttl, err := r.ownerCall(ctx, k.owner, op, ref.Agent, opTTL)
		if err != nil {
			return CommitResult{}, fmt.Errorf("riskstore: commit run %q: %w", truncate(ref.ID), err)
		}
		if owner != "" && owner != ref.Agent {
			return CommitResult{Outcome: Refused, Limit: RunOwned, State: res.state}, nil
		}
		if op == ownerGet { // nothing to write: the predicted outcome stands
			res.outcome, res.predicted = res.predicted, 0
			return res.result()
		}
		// What the owner key has left, less the time since it was measured,
		// so that the run's mark never outlives the key.
		ownerR = 0
		if pttl > 0 {
			ownerR = max(pttl-time.Since(sent).Milliseconds()-1, 1)
		}
	}
	return CommitResult{}, fmt.Errorf("riskstore: commit run %q: ownership did not settle", truncate(ref.ID))
}

// commitArgs builds ARGV for commitScript; argMode and argOwnerR are filled in
// by Commit.
func (r *Redis) commitArgs(ref RunRef, step Step, limits Limits, ttl time.Duration) []any {
	field := ""
	if step.RequestID != "" {
		field = requestField(step.RequestID)
	} else {
		field = r.anonPrefix + strconv.FormatUint(r.anonSeq.Add(1), 36)
	}
	execUs := ""
	if limits.MaxExecutionTime > 0 {
		// The script compares whole microseconds elapsed (Redis's clock
		// resolution): d µs > max ns ⇔ d > ⌊max/1000⌋.
		execUs = strconv.FormatInt(int64(limits.MaxExecutionTime/time.Microsecond), 10)
	}
	write := "0"
	if step.Write {
		write = "1"
	}
	risk := formatFloat(step.Risk)
	args := make([]any, 0, 23+len(step.Facts))
	args = append(args,
		"", int64(-1), ref.Agent,
		field, risk+"|"+step.DecisionID,
		strconv.FormatInt(step.ExpectVersion, 10),
		strconv.FormatInt(limits.MaxToolCalls, 10),
		strconv.FormatInt(limits.MaxWriteOperations, 10),
		strconv.FormatInt(limits.MaxCostMicros, 10),
		execUs,
		formatFloat(limits.MaxRisk), formatFloat(riskEpsilon),
		strconv.FormatInt(int64(limits.AgentWindow/time.Microsecond), 10),
		strconv.FormatInt(limits.AgentMaxToolCalls, 10),
		strconv.FormatInt(limits.AgentMaxCostMicros, 10),
		write, strconv.FormatInt(step.CostMicros, 10), risk,
		strconv.FormatInt(max(ttl.Milliseconds(), 1), 10),
		strconv.Itoa(maxRequestIDs), strconv.Itoa(MaxFacts),
		step.NonceOwner, strconv.FormatInt(max(step.NonceTTL.Milliseconds(), 1), 10),
	)
	for _, f := range step.Facts {
		// mergeFacts skips these too; dropping them here keeps ARGV small
		// (and the newline-joined list in the run hash unambiguous).
		if validFact(f) {
			args = append(args, f)
		}
	}
	return args
}

func (r *Redis) runCommit(ctx context.Context, ref RunRef, keys []string, args []any) (runReply, error) {
	raw, err := r.commits.run(ctx, keys, args)
	if err != nil {
		return runReply{}, fmt.Errorf("riskstore: commit run %q: %w", truncate(ref.ID), err)
	}
	res, err := decodeReply(ref, raw)
	if err != nil {
		return runReply{}, fmt.Errorf("riskstore: commit run %q: %w", truncate(ref.ID), err)
	}
	return res, nil
}

// Load implements Store with one script call, which also refreshes the run's
// lifetime (and, on a single node, its owner's).
func (r *Redis) Load(ctx context.Context, ref RunRef, requestID string) (State, error) {
	if !ref.valid() {
		return State{}, errors.New("riskstore: load: invalid run reference")
	}
	field := ""
	if requestID != "" {
		field = requestField(requestID)
	}
	node := "1"
	if r.cluster != nil {
		node = "0"
	}
	raw, err := loadScript.Run(ctx, r.c(), r.keys(r.runKeys(ref)), field, node, ref.Agent, ownerFactor).Slice()
	if err != nil {
		return State{}, fmt.Errorf("riskstore: load run %q: %w", truncate(ref.ID), err)
	}
	res, err := decodeReply(ref, raw)
	if err != nil {
		return State{}, fmt.Errorf("riskstore: load run %q: %w", truncate(ref.ID), err)
	}
	res.state.Prior = res.prior
	return res.state, nil
}

// ClaimRun implements Store with one script call on the owner key.
func (r *Redis) ClaimRun(ctx context.Context, ref RunRef, ttl time.Duration) (string, error) {
	if err := r.durability.refuse(); err != nil {
		return "", err
	}
	if !ref.valid() {
		return "", errors.New("riskstore: claim: invalid run reference")
	}
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	owner, _, err := r.ownerCall(ctx, r.runKeys(ref).owner, ownerClaim, ref.Agent, ttl)
	if err != nil {
		return "", fmt.Errorf("riskstore: claim run %q: %w", truncate(ref.ID), err)
	}
	return owner, nil
}

// Operations of ownerScript.
const (
	ownerGet   = "get"   // read the owner
	ownerTouch = "touch" // extend the owner's lifetime if it is the agent
	ownerClaim = "claim" // touch, or make the agent the owner if there is none
)

// ownerCall runs op on a run id's owner key and returns the owner ("" if none)
// and, when it is the agent and op is not a get, its remaining lifetime in ms.
func (r *Redis) ownerCall(ctx context.Context, key, op, agent string, ttl time.Duration) (string, int64, error) {
	res, err := ownerScript.Run(ctx, r.c(), []string{key}, op, agent, max(ttl.Milliseconds(), 1)).Slice()
	if err != nil {
		return "", 0, err
	}
	if len(res) != 2 {
		return "", 0, fmt.Errorf("unexpected owner reply of %d elements", len(res))
	}
	owner, _ := res[0].(string)
	pttl, ok := res[1].(int64)
	if !ok {
		return "", 0, errors.New("unexpected owner reply")
	}
	return owner, pttl, nil
}

func formatFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// truncate keeps an agent-supplied id short in an error.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
