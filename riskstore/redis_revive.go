package riskstore

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Reviving a single-node client after an outage. go-redis stops dialing once
// as many dials as its pool size have failed in a row, and then probes the
// server once a second: after Redis comes back, every Check is refused for
// up to a second more. The store watches instead: the first failed command
// wakes a watcher that probes every reviveEvery; once Redis accepts TCP
// connections again while the client still cannot ping, it swaps in a fresh
// client (same options and hooks) and closes the old one a little later.
// Nothing about what a command does changes, only how soon one can be sent.

// reviveEvery is the watcher's probe interval.
const reviveEvery = 25 * time.Millisecond

// node is the single-node client, swappable.
type node struct {
	opts  *redis.Options
	mu    sync.Mutex // hooks, swaps
	hooks []redis.Hook
	wake  chan struct{}
	stop  chan struct{}
	wg    sync.WaitGroup
	// swaps counts clients replaced (tests, logs).
	swaps int
}

// c is the client commands go through: the cluster client, or the current
// single-node one.
func (r *Redis) c() redis.UniversalClient {
	if r.cluster != nil {
		return r.cluster
	}
	return r.nodeClient.Load()
}

func (r *Redis) startNode(o *redis.Options) {
	r.node = &node{opts: o, wake: make(chan struct{}, 1), stop: make(chan struct{})}
	r.nodeClient.Store(r.newNodeClient())
	r.node.wg.Go(r.watch)
}

// newNodeClient is a client of the node's options with its hooks and the
// hook that wakes the watcher on a failed command.
func (r *Redis) newNodeClient() *redis.Client {
	c := redis.NewClient(r.node.opts)
	c.AddHook(reviveHook{r.node.wake})
	for _, h := range r.node.hooks {
		c.AddHook(h)
	}
	return c
}

// watch revives the client after an outage; it runs until Close.
func (r *Redis) watch() {
	for {
		select {
		case <-r.node.stop:
			return
		case <-r.node.wake:
		}
		for !r.revived() {
			select {
			case <-r.node.stop:
				return
			case <-time.After(reviveEvery):
			}
		}
	}
}

// revived reports whether the client can ping; if it cannot but Redis
// accepts connections, it swaps in a fresh client and reports whether that
// one can.
func (r *Redis) revived() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 4*reviveEvery)
	defer cancel()
	old := r.nodeClient.Load()
	if old.Ping(ctx).Err() == nil {
		return true
	}
	conn, err := (&net.Dialer{Timeout: 2 * reviveEvery}).DialContext(ctx, r.node.opts.Network, r.node.opts.Addr)
	if err != nil {
		return false // still down
	}
	_ = conn.Close()
	r.node.mu.Lock()
	fresh := r.newNodeClient()
	if fresh.Ping(ctx).Err() != nil {
		r.node.mu.Unlock()
		_ = fresh.Close()
		return false
	}
	r.nodeClient.Store(fresh)
	r.node.swaps++
	r.node.mu.Unlock()
	// Commands already on the old client finish or fail on their own.
	time.AfterFunc(5*time.Second, func() { _ = old.Close() })
	return true
}

// reviveHook wakes the watcher when a command fails for any reason other
// than an answer from Redis.
type reviveHook struct{ wake chan struct{} }

func (h reviveHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := next(ctx, network, addr)
		if err != nil {
			h.poke()
		}
		return c, err
	}
}

func (h reviveHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if err != nil && !isReply(err) {
			h.poke()
		}
		return err
	}
}

func (h reviveHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		if err != nil && !isReply(err) {
			h.poke()
		}
		return err
	}
}

func (h reviveHook) poke() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// isReply reports an error Redis answered (nil reply, script error, …), as
// opposed to one of reaching it.
func isReply(err error) bool {
	if errors.Is(err, redis.Nil) {
		return true
	}
	var re redis.Error
	return errors.As(err, &re) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled)
}
