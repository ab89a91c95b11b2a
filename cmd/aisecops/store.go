package main

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/httpapi"
	"github.com/aisecops/aisecops-envoy/riskstore"
)

// runStore is everything the authz server needs of a run-state store.
type runStore interface {
	riskstore.Store
	riskstore.Approvals
	riskstore.Nonces
	riskstore.StepLog
}

// newStore returns the run-state store (in memory unless Redis is configured)
// and its readiness probe. A Redis that does not persist writes is refused
// (spent budgets would come back after its restart) unless
// --allow-volatile-redis, which the log and /readyz then repeat (warning).
func newStore(ctx context.Context, o *options, log *slog.Logger) (store runStore, ready httpapi.ReadyFunc, closeStore func(), warning string, err error) {
	if o.redisURL == "" && o.redisCluster == "" {
		m := riskstore.NewMemory(time.Now)
		return m, m.Ping, func() {}, "", nil
	}
	var nodes []string
	if o.redisCluster != "" {
		nodes = strings.Split(o.redisCluster, ",")
	}
	r, err := riskstore.NewRedis(riskstore.RedisOptions{URL: o.redisURL, ClusterNodes: nodes, RequireDurable: !o.allowVolatileRedis})
	if err != nil {
		return nil, nil, nil, "", err
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	switch err := r.Ping(pctx); {
	case errors.Is(err, riskstore.ErrVolatile):
		r.Close()
		return nil, nil, nil, "", errors.New("redis does not persist writes (appendonly is off): turn it on (appendonly yes), or start with --allow-volatile-redis and accept that spent budgets come back after a Redis restart")
	case err != nil:
		log.Warn("redis not reachable at start; every Check is denied until it answers", "err", err)
	}
	if o.allowVolatileRedis {
		if durable, _ := r.Durable(pctx); !durable {
			warning = "redis does not persist writes (--allow-volatile-redis): spent budgets come back after a Redis restart"
			log.Warn(warning)
		}
	}
	return r, r.Ping, func() { r.Close() }, warning, nil
}
