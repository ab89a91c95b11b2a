package riskstore

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// StepLog keeps each run's step records, shared by every replica: what a run's
// timeline reads back whole when its steps were decided on different
// replicas. Records are opaque to the store. Appending never blocks a Check:
// under overload or a store fault a record is dropped and counted (each
// replica's audit file stays the durable record of its own Checks).
type StepLog interface {
	AppendStep(run RunRef, record []byte)
	// Steps returns the run's records, oldest first (at most MaxLogSteps).
	Steps(ctx context.Context, run RunRef) ([][]byte, error)
	// DroppedSteps counts records dropped since start.
	DroppedSteps() uint64
}

// MaxLogSteps bounds one run's step log; older records are trimmed.
const MaxLogSteps = 10000

// maxLoggedRuns bounds the runs the memory store keeps step logs for.
const maxLoggedRuns = 100000

var (
	_ StepLog = (*Memory)(nil)
	_ StepLog = (*Redis)(nil)
)

// memLog is the memory store's step logs, oldest run first.
type memLog struct {
	mu      sync.Mutex
	runs    map[RunRef][][]byte
	order   []RunRef
	dropped atomic.Uint64
}

// AppendStep implements StepLog.
func (m *Memory) AppendStep(run RunRef, record []byte) {
	l := &m.log
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.runs == nil {
		l.runs = map[RunRef][][]byte{}
	}
	steps, ok := l.runs[run]
	if !ok {
		if len(l.order) >= maxLoggedRuns {
			delete(l.runs, l.order[0])
			l.order = l.order[1:]
		}
		l.order = append(l.order, run)
	}
	steps = append(steps, slices.Clone(record))
	if len(steps) > MaxLogSteps {
		steps = steps[len(steps)-MaxLogSteps:]
	}
	l.runs[run] = steps
}

// Steps implements StepLog.
func (m *Memory) Steps(_ context.Context, run RunRef) ([][]byte, error) {
	l := &m.log
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.runs[run]), nil
}

// DroppedSteps implements StepLog.
func (m *Memory) DroppedSteps() uint64 { return m.log.dropped.Load() }

// redisLog appends step records to per-run streams in the background, in
// pipelined batches, so a Check pays a channel send, not a round trip.
type redisLog struct {
	mu      sync.Mutex // guards queue and closed against Close
	queue   chan logEntry
	closed  bool
	dropped atomic.Uint64
	done    chan struct{}
}

type logEntry struct {
	run    RunRef
	record []byte
}

const (
	logQueue = 8192
	logBatch = 256
	// logTTL keeps a run's log for as long as an idle run's state.
	logTTL = DefaultTTL
)

// logKey is a run's step-log stream, under the agent's hash tag.
func (r *Redis) logKey(run RunRef) string {
	return strings.TrimSuffix(r.runKeys(run).run[0], "state") + "log"
}

// AppendStep implements StepLog.
func (r *Redis) AppendStep(run RunRef, record []byte) {
	r.log.mu.Lock()
	defer r.log.mu.Unlock()
	if r.log.closed {
		r.log.dropped.Add(1)
		return
	}
	if r.log.queue == nil {
		r.log.queue = make(chan logEntry, logQueue)
		r.log.done = make(chan struct{})
		go r.drainLog()
	}
	select {
	case r.log.queue <- logEntry{run, slices.Clone(record)}:
	default:
		r.log.dropped.Add(1)
	}
}

func (r *Redis) drainLog() {
	defer close(r.log.done)
	for e := range r.log.queue {
		batch := []logEntry{e}
	more:
		for len(batch) < logBatch {
			select {
			case e, ok := <-r.log.queue:
				if !ok {
					break more
				}
				batch = append(batch, e)
			default:
				break more
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := r.c().Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, e := range batch {
				k := r.logKey(e.run)
				p.XAdd(ctx, &redis.XAddArgs{Stream: k, MaxLen: MaxLogSteps, Approx: true, Values: []any{"r", e.record}})
				p.PExpire(ctx, k, logTTL)
			}
			return nil
		})
		cancel()
		if err != nil {
			r.log.dropped.Add(uint64(len(batch)))
		}
	}
}

// Steps implements StepLog.
func (r *Redis) Steps(ctx context.Context, run RunRef) ([][]byte, error) {
	msgs, err := r.c().XRange(ctx, r.logKey(run), "-", "+").Result()
	if err != nil {
		return nil, err
	}
	out := make([][]byte, 0, len(msgs))
	for _, m := range msgs {
		if v, ok := m.Values["r"].(string); ok {
			out = append(out, []byte(v))
		}
	}
	return out, nil
}

// DroppedSteps implements StepLog.
func (r *Redis) DroppedSteps() uint64 { return r.log.dropped.Load() }

// flushLog stops the background writer after it has written what is queued.
func (r *Redis) flushLog() {
	r.log.mu.Lock()
	started := r.log.queue != nil && !r.log.closed
	if started {
		close(r.log.queue)
	}
	r.log.closed = true
	r.log.mu.Unlock()
	if started {
		<-r.log.done
	}
}
