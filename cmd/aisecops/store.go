package main

import (
	"errors"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/httpapi"
	"github.com/aisecops/aisecops-envoy/riskstore"
)

// newStore returns the run-state store and its readiness probe.
func newStore(o *options) (any, httpapi.ReadyFunc, error) {
	if o.redisURL != "" || o.redisCluster != "" {
		return nil, nil, errors.New("--redis-url/--redis-cluster: the Redis store is not built into this version yet")
	}
	m := riskstore.NewMemory(time.Now)
	return m, m.Ping, nil
}
