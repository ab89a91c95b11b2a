package main

import (
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
}

// newStore returns the run-state store (in memory unless Redis is configured)
// and its readiness probe.
func newStore(o *options) (runStore, httpapi.ReadyFunc, func(), error) {
	if o.redisURL == "" && o.redisCluster == "" {
		m := riskstore.NewMemory(time.Now)
		return m, m.Ping, func() {}, nil
	}
	var nodes []string
	if o.redisCluster != "" {
		nodes = strings.Split(o.redisCluster, ",")
	}
	r, err := riskstore.NewRedis(riskstore.RedisOptions{URL: o.redisURL, ClusterNodes: nodes})
	if err != nil {
		return nil, nil, nil, err
	}
	return r, r.Ping, func() { r.Close() }, nil
}
