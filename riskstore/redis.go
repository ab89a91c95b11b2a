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

// Load, Commit and ClaimRun: placeholder while the Redis side moves to the new contract.
func (r *Redis) Load(ctx context.Context, run RunRef, requestID string) (State, error) {
	return State{}, errors.New("riskstore: redis: not implemented")
}

func (r *Redis) Commit(ctx context.Context, run RunRef, step Step, limits Limits, ttl time.Duration) (CommitResult, error) {
	return CommitResult{}, errors.New("riskstore: redis: not implemented")
}

func (r *Redis) ClaimRun(ctx context.Context, run RunRef, ttl time.Duration) (string, error) {
	return "", errors.New("riskstore: redis: not implemented")
}

func formatFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// truncate keeps an invalid, agent-supplied id short in an error.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
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
