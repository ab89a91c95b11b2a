package riskstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// ErrVolatile is returned, when the store requires a durable Redis, by every
// write while Redis does not persist them: spent budgets would come back after
// a restart.
var ErrVolatile = errors.New("riskstore: redis does not persist writes (appendonly is off)")

// durability tracks whether Redis persists writes: every master has the
// append-only file on. RDB snapshots alone lose the writes since the last
// snapshot, so they do not count. It is checked on every Ping (the readiness
// probe, once a second), so a Redis restarted without persistence is noticed
// at its reconnect.
type durability struct {
	mu       sync.Mutex
	checked  bool
	durable  bool
	required bool
}

func (d *durability) set(durable bool) {
	d.mu.Lock()
	d.checked, d.durable = true, durable
	d.mu.Unlock()
}

// refuse is ErrVolatile when writes must be durable and Redis was last seen
// not persisting them (a Redis never checked yet is given the benefit of the
// first Ping, which the server runs before serving).
func (d *durability) refuse() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.required && d.checked && !d.durable {
		return ErrVolatile
	}
	return nil
}

// Durable reports whether Redis (every master, on a Cluster) persists writes
// with its append-only file, and remembers the answer for the writes that
// follow.
func (r *Redis) Durable(ctx context.Context) (bool, error) {
	check := func(ctx context.Context, c *redis.Client) (bool, error) {
		info, err := c.Info(ctx, "persistence").Result()
		if err != nil {
			return false, err
		}
		return strings.Contains(info, "aof_enabled:1"), nil
	}
	durable := true
	var err error
	if r.cluster != nil {
		var mu sync.Mutex
		err = r.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			ok, err := check(ctx, c)
			mu.Lock()
			durable = durable && ok
			mu.Unlock()
			return err
		})
	} else {
		durable, err = check(ctx, r.nodeClient.Load())
	}
	if err != nil {
		return false, fmt.Errorf("riskstore: redis persistence: %w", err)
	}
	r.durability.set(durable)
	return durable, nil
}
