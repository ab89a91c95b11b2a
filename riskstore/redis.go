package riskstore

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
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
	// Now is the clock used for approval expiry (default time.Now). Run TTLs
	// are Redis's own (PEXPIRE).
	Now func() time.Time
}

const (
	defaultOpTimeout  = 100 * time.Millisecond
	defaultMaxRetries = 2
	defaultKeyPrefix  = "aisecops"
)

// Redis keeps run state, approvals and single-use ids in Redis or Redis Cluster.
// Every key of one run carries the hash tag {run:<id>} so the Commit script
// touches one slot. It is safe for concurrent use.
type Redis struct {
	client  redis.UniversalClient
	cluster *redis.ClusterClient // nil on a single node
	prefix  string
	now     func() time.Time

	// anonPrefix and anonSeq name steps committed without a request id, so that
	// a go-redis retry of such a Commit (same arguments) still cannot debit twice.
	anonPrefix string
	anonSeq    atomic.Uint64
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
		r.client = redis.NewClient(o)
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
	r.client, r.cluster = cc, cc
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

// Close releases the connections.
func (r *Redis) Close() error { return r.client.Close() }

// AddHook attaches a go-redis hook (instrumentation: counting round trips,
// tracing). It must be called before the store is used.
func (r *Redis) AddHook(h redis.Hook) { r.client.AddHook(h) }

// Ping reports whether Redis answers (every master, on a cluster); for /readyz.
func (r *Redis) Ping(ctx context.Context) error {
	var err error
	if r.cluster != nil {
		err = r.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			return c.Ping(ctx).Err()
		})
	} else {
		err = r.client.Ping(ctx).Err()
	}
	if err != nil {
		return fmt.Errorf("riskstore: ping redis: %w", err)
	}
	return nil
}

// maxRunIDLen and validRunID mirror the plan parser's run id syntax. The id
// ends up inside a hash tag, so '{' and '}' (and anything else) must not pass.
const maxRunIDLen = 128

func validRunID(id string) bool {
	if id == "" || len(id) > maxRunIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.' || c == '_' || c == ':' || c == '@' || c == '-':
		default:
			return false
		}
	}
	return true
}

// runKeys are the keys of one run; all share the hash tag {run:<id>}.
type runKeys [4]string

func (r *Redis) runKeys(runID string) runKeys {
	base := r.prefix + ":{run:" + runID + "}:"
	return runKeys{base + "state", base + "steps", base + "req", base + "reqorder"}
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

// maxExactInt is the largest integer a Lua number (a double) holds exactly;
// the script compares money in micro-units as Lua numbers.
const maxExactInt = 1 << 53

// Commit implements Store with one script call: one round trip, atomic.
func (r *Redis) Commit(ctx context.Context, runID string, step Step, limits Limits, now time.Time, ttl time.Duration) (CommitResult, error) {
	if !validRunID(runID) {
		return CommitResult{}, fmt.Errorf("riskstore: commit: invalid run id %q", truncate(runID))
	}
	if err := checkNumbers(step, limits); err != nil {
		return CommitResult{}, fmt.Errorf("riskstore: commit run %s: %w", runID, err)
	}
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	field := ""
	if step.RequestID != "" {
		field = requestField(step.RequestID)
	} else {
		field = r.anonPrefix + strconv.FormatUint(r.anonSeq.Add(1), 36)
	}
	nowSet, nowS, nowN := "0", "0", "0"
	if !now.IsZero() {
		nowSet, nowS, nowN = "1", strconv.FormatInt(now.Unix(), 10), strconv.Itoa(now.Nanosecond())
	}
	execS, execN := "", ""
	if limits.MaxExecutionTime > 0 {
		d := int64(limits.MaxExecutionTime)
		execS, execN = strconv.FormatInt(d/1e9, 10), strconv.FormatInt(d%1e9, 10)
	}
	write := "0"
	if step.Write {
		write = "1"
	}
	risk := formatFloat(step.Summary.Risk)
	keys := r.runKeys(runID)
	res, err := commitScript.Run(ctx, r.client, keys[:],
		field, nowSet, nowS, nowN,
		strconv.FormatInt(limits.MaxToolCalls, 10),
		strconv.FormatInt(limits.MaxWriteOperations, 10),
		strconv.FormatInt(limits.MaxCostMicros, 10),
		execS, execN,
		formatFloat(limits.MaxRisk), formatFloat(riskEpsilon),
		write, strconv.FormatInt(step.CostMicros, 10), risk,
		encodeStep(step.Summary), risk+"|"+step.DecisionID,
		strconv.Itoa(Window), strconv.Itoa(maxRequestIDs),
		strconv.FormatInt(max(ttl.Milliseconds(), 1), 10),
		strconv.FormatInt(step.ExpectVersion, 10),
	).Slice()
	if err != nil {
		return CommitResult{}, fmt.Errorf("riskstore: commit run %s: %w", runID, err)
	}
	out, err := decodeReply(runID, res)
	if err != nil {
		return CommitResult{}, fmt.Errorf("riskstore: commit run %s: %w", runID, err)
	}
	res0, _ := res[0].(string)
	switch res0 {
	case "ok":
		out.Outcome = Committed
	case "dup":
		out.Outcome = Duplicate
		out.Prior, out.State.Prior = out.State.Prior, nil
	case "refused":
		out.Outcome = Refused
	case "stale":
		out.Outcome = Stale
	default:
		return CommitResult{}, fmt.Errorf("riskstore: commit run %s: unexpected outcome %q", runID, res0)
	}
	return out, nil
}

// Load implements Store with one read-only script call.
func (r *Redis) Load(ctx context.Context, runID, requestID string) (State, error) {
	if !validRunID(runID) {
		return State{}, fmt.Errorf("riskstore: load: invalid run id %q", truncate(runID))
	}
	field := ""
	if requestID != "" {
		field = requestField(requestID)
	}
	keys := r.runKeys(runID)
	res, err := loadScript.Run(ctx, r.client, keys[:3], field).Slice()
	if err != nil {
		return State{}, fmt.Errorf("riskstore: load run %s: %w", runID, err)
	}
	out, err := decodeReply(runID, res)
	if err != nil {
		return State{}, fmt.Errorf("riskstore: load run %s: %w", runID, err)
	}
	return out.State, nil
}

// checkNumbers refuses values the script cannot compare exactly, and a risk
// that is not a number: a NaN total would never exceed any threshold again.
func checkNumbers(step Step, l Limits) error {
	if math.IsNaN(step.Summary.Risk) || math.IsInf(step.Summary.Risk, 0) {
		return errors.New("step risk is not a finite number")
	}
	if math.IsNaN(l.MaxRisk) || math.IsInf(l.MaxRisk, 0) {
		return errors.New("max risk is not a finite number")
	}
	if step.CostMicros > maxExactInt || step.CostMicros < -maxExactInt || l.MaxCostMicros > maxExactInt {
		return errors.New("cost out of range (|micros| > 2^53)")
	}
	if step.ExpectVersion < AnyVersion || step.ExpectVersion > maxExactInt {
		return fmt.Errorf("expected version %d out of range", step.ExpectVersion)
	}
	return nil
}

// Reply layout shared by the commit and load scripts:
// {outcome, limit, calls (also the version), writes, cost, risk, startedSec,
// startedNsec, {steps…}, prior}.
const replyLen = 10

// limitNames maps the script's limit codes to Budget names.
var limitNames = [...]string{"", BudgetToolCalls, BudgetWriteOps, BudgetCost, BudgetExecutionTime, BudgetRisk}

func decodeReply(runID string, res []any) (CommitResult, error) {
	if len(res) != replyLen {
		return CommitResult{}, fmt.Errorf("unexpected reply of %d elements", len(res))
	}
	str := func(i int) string { s, _ := res[i].(string); return s }
	var out CommitResult
	out.State.RunID = runID
	code, err := strconv.Atoi(str(1))
	if err != nil || code < 0 || code >= len(limitNames) {
		return CommitResult{}, fmt.Errorf("bad limit code %q", str(1))
	}
	out.Limit = limitNames[code]
	ints := [3]*int64{&out.State.ToolCalls, &out.State.WriteOps, &out.State.CostMicros}
	for i, p := range ints {
		if *p, err = strconv.ParseInt(str(2+i), 10, 64); err != nil {
			return CommitResult{}, fmt.Errorf("bad counter: %w", err)
		}
	}
	// Every commit, and nothing else, adds one to calls: it is the version (see
	// commitScript).
	out.State.Version = out.State.ToolCalls
	if out.State.RiskTotal, err = strconv.ParseFloat(str(5), 64); err != nil {
		return CommitResult{}, fmt.Errorf("bad risk total: %w", err)
	}
	if s := str(6); s != "" {
		sec, err1 := strconv.ParseInt(s, 10, 64)
		nsec, err2 := strconv.ParseInt(str(7), 10, 64)
		if err1 != nil || err2 != nil {
			return CommitResult{}, errors.New("bad start time")
		}
		out.State.StartedAt = time.Unix(sec, nsec).UTC()
	}
	steps, _ := res[8].([]any)
	if len(steps) > 0 {
		out.State.Recent = make([]StepSummary, len(steps))
		for i, v := range steps {
			s, _ := v.(string)
			if out.State.Recent[i], err = decodeStep(s); err != nil {
				return CommitResult{}, err
			}
		}
	}
	if s := str(9); s != "" {
		p, err := decodePrior(s)
		if err != nil {
			return CommitResult{}, err
		}
		out.State.Prior = &p
	}
	return out, nil
}

func formatFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// truncate keeps an invalid, agent-supplied id short in an error.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
