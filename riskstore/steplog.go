package riskstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// StepLog keeps each run's step records, shared by every replica: what a run's
// timeline reads back whole when its steps were decided on different
// replicas. Records are opaque to the store; what the run index needs of a
// step comes beside it (StepMeta). Appending never blocks a Check: under
// overload or a store fault a record is dropped and counted (each replica's
// audit file stays the durable record of its own Checks).
//
// The log also indexes runs (ListRuns): every append moves its run to the
// front of one index shared by the replicas, so runs list most recently
// updated first wherever their steps were decided.
type StepLog interface {
	AppendStep(run RunRef, meta StepMeta, record []byte)
	// Steps returns the run's records, oldest first (at most about MaxLogSteps).
	Steps(ctx context.Context, run RunRef) ([][]byte, error)
	// DroppedSteps counts records dropped since start.
	DroppedSteps() uint64
	RunIndex
}

// RunIndex lists the runs with logged steps.
type RunIndex interface {
	// ListRuns returns a page of runs, most recently updated first.
	ListRuns(ctx context.Context, q RunQuery) (RunPage, error)
	// Run returns one run's summary, ErrNotFound when it has no logged step.
	Run(ctx context.Context, run RunRef) (RunSummary, error)
	// RunAgents returns the agents with a logged run of this id, sorted (at
	// most MaxRunAgents): one id may name runs of several agents, since an
	// agent's refused attempt on another's run id is logged under its own.
	RunAgents(ctx context.Context, id string) ([]string, error)
}

// StepMeta is what the run index keeps of a step besides its record.
type StepMeta struct {
	TS             time.Time
	Decision       string
	CumulativeRisk float64
	Committed      bool // only a committed step's risk is the run's
}

// RunSummary is a run as the index lists it.
type RunSummary struct {
	Run          RunRef
	Steps        int64 // every step ever appended, including any trimmed from the log
	LastDecision string
	// CumulativeRisk is the run's risk after its last committed step.
	CumulativeRisk float64
	Started        time.Time // the first step's time
	Updated        time.Time // the latest step's time
	// Decisions counts the run's steps by decision.
	Decisions map[string]int64
}

// RunQuery selects a page of runs.
type RunQuery struct {
	Agent    string    // "": every agent
	Decision string    // "": any; else runs with at least one step of this decision
	Since    time.Time // runs updated at or after Since
	Limit    int       // 1..MaxRunsPage
	// Before continues a listing below this index position (RunPage.Next);
	// 0 starts at the most recently updated run.
	Before uint64
}

// RunPage is one page of a listing. A page may hold fewer than Limit runs
// while Next is set: each call examines at most runScanBudget index entries.
type RunPage struct {
	Runs []RunSummary
	Next uint64 // pass as RunQuery.Before for the next page; 0 at the end
}

const (
	// MaxLogSteps bounds one run's step log; older records are trimmed.
	MaxLogSteps = 10000
	// MaxIndexedRuns bounds the run index (and the memory store's logged runs):
	// beyond it the least recently updated runs leave the index. Their logs
	// stay readable by id until they expire (Redis) or are evicted (memory).
	MaxIndexedRuns = 100000
	// MaxRunsPage bounds RunQuery.Limit.
	MaxRunsPage = 500
	// MaxRunAgents bounds RunAgents' answer.
	MaxRunAgents = 64
	// maxMemLogBytes bounds the memory store's step records in total; the
	// least recently updated runs are evicted beyond it.
	maxMemLogBytes = 256 << 20
	// runScanBudget bounds the index entries one ListRuns examines.
	runScanBudget = 5000
	// sinceSlack: the index is in append order, which follows the replicas'
	// clocks only as closely as they agree; a listing with Since stops only
	// past a run updated this much before it.
	sinceSlack = time.Minute
)

var (
	_ StepLog = (*Memory)(nil)
	_ StepLog = (*Redis)(nil)
)

// ErrBadQuery is returned for a RunQuery out of bounds.
var ErrBadQuery = errors.New("riskstore: bad run query")

func (q RunQuery) check() error {
	if q.Limit < 1 || q.Limit > MaxRunsPage || len(q.Agent) > MaxIDLen || len(q.Decision) > 64 {
		return fmt.Errorf("%w: limit 1..%d, agent and decision bounded", ErrBadQuery, MaxRunsPage)
	}
	return nil
}

// matches reports whether s passes q's filters, and whether s is so far
// before q.Since that no later entry can pass it (the listing may stop).
func (q RunQuery) matches(s *RunSummary) (ok, past bool) {
	if !q.Since.IsZero() && s.Updated.Before(q.Since) {
		return false, s.Updated.Before(q.Since.Add(-sinceSlack))
	}
	if q.Agent != "" && s.Run.Agent != q.Agent {
		return false, false
	}
	if q.Decision != "" && s.Decisions[q.Decision] == 0 {
		return false, false
	}
	return true, false
}

func (s *RunSummary) add(m StepMeta) {
	if s.Steps == 0 || m.TS.Before(s.Started) {
		s.Started = m.TS
	}
	s.Steps++
	if !m.TS.Before(s.Updated) {
		s.Updated = m.TS
	}
	s.LastDecision = m.Decision
	if m.Committed {
		s.CumulativeRisk = m.CumulativeRisk
	}
	if s.Decisions == nil {
		s.Decisions = map[string]int64{}
	}
	s.Decisions[m.Decision]++
}

func (s RunSummary) clone() RunSummary {
	s.Decisions = maps.Clone(s.Decisions)
	return s
}

// memLog is the memory store's step logs and run index. The index is a slice
// of (position, run) in position order; an append gives its run a new
// position at the end and leaves the old entry stale, and the slice is
// compacted when stale entries outnumber live ones, so appends cost O(1)
// amortised and a listing is a binary search and a walk.
type memLog struct {
	mu      sync.Mutex
	cap     int // MaxIndexedRuns unless a test lowers it
	scan    int // runScanBudget unless a test lowers it
	runs    map[RunRef]*memLogRun
	byID    map[string]map[string]struct{} // run id → agents
	slots   []memSlot
	pos     uint64
	bytes   int
	dropped atomic.Uint64
}

type memLogRun struct {
	steps [][]byte
	bytes int
	sum   RunSummary
	pos   uint64
}

type memSlot struct {
	pos uint64
	run RunRef
}

// AppendStep implements StepLog.
func (m *Memory) AppendStep(run RunRef, meta StepMeta, record []byte) {
	if !run.valid() {
		m.log.dropped.Add(1)
		return
	}
	l := &m.log
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.runs == nil {
		l.runs, l.byID = map[RunRef]*memLogRun{}, map[string]map[string]struct{}{}
	}
	r, ok := l.runs[run]
	if !ok {
		for len(l.runs) >= cmp.Or(l.cap, MaxIndexedRuns) {
			l.evictOldest()
		}
		r = &memLogRun{sum: RunSummary{Run: run}}
		l.runs[run] = r
		if l.byID[run.ID] == nil {
			l.byID[run.ID] = map[string]struct{}{}
		}
		l.byID[run.ID][run.Agent] = struct{}{}
	}
	r.steps = append(r.steps, slices.Clone(record))
	r.bytes += len(record)
	l.bytes += len(record)
	if len(r.steps) > MaxLogSteps {
		cut := len(r.steps) - MaxLogSteps
		for _, s := range r.steps[:cut] {
			r.bytes -= len(s)
			l.bytes -= len(s)
		}
		r.steps = slices.Clone(r.steps[cut:])
	}
	r.sum.add(meta)
	l.pos++
	r.pos = l.pos
	l.slots = append(l.slots, memSlot{pos: l.pos, run: run})
	if len(l.slots) > 2*len(l.runs)+1024 {
		l.compact()
	}
	for l.bytes > maxMemLogBytes && len(l.runs) > 1 {
		l.evictOldest()
	}
}

// evictOldest forgets the least recently updated run.
func (l *memLog) evictOldest() {
	for i, s := range l.slots {
		r, ok := l.runs[s.run]
		if !ok || r.pos != s.pos {
			continue
		}
		delete(l.runs, s.run)
		l.bytes -= r.bytes
		if agents := l.byID[s.run.ID]; agents != nil {
			delete(agents, s.run.Agent)
			if len(agents) == 0 {
				delete(l.byID, s.run.ID)
			}
		}
		l.slots = l.slots[i+1:]
		return
	}
}

func (l *memLog) compact() {
	live := make([]memSlot, 0, len(l.runs))
	for _, s := range l.slots {
		if r, ok := l.runs[s.run]; ok && r.pos == s.pos {
			live = append(live, s)
		}
	}
	l.slots = live
}

// Steps implements StepLog.
func (m *Memory) Steps(_ context.Context, run RunRef) ([][]byte, error) {
	l := &m.log
	l.mu.Lock()
	defer l.mu.Unlock()
	if r, ok := l.runs[run]; ok {
		return slices.Clone(r.steps), nil
	}
	return nil, nil
}

// DroppedSteps implements StepLog.
func (m *Memory) DroppedSteps() uint64 { return m.log.dropped.Load() }

// ListRuns implements RunIndex.
func (m *Memory) ListRuns(_ context.Context, q RunQuery) (RunPage, error) {
	if err := q.check(); err != nil {
		return RunPage{}, err
	}
	l := &m.log
	l.mu.Lock()
	defer l.mu.Unlock()
	i := len(l.slots)
	if q.Before > 0 {
		i = sort.Search(len(l.slots), func(j int) bool { return l.slots[j].pos >= q.Before })
	}
	var page RunPage
	for scanned := 0; i > 0; {
		i--
		s := l.slots[i]
		r, ok := l.runs[s.run]
		if !ok || r.pos != s.pos {
			continue
		}
		if scanned++; scanned > cmp.Or(l.scan, runScanBudget) {
			page.Next = s.pos + 1 // continue at this entry
			return page, nil
		}
		ok, past := q.matches(&r.sum)
		if past {
			return page, nil
		}
		if !ok {
			continue
		}
		page.Runs = append(page.Runs, r.sum.clone())
		if len(page.Runs) == q.Limit {
			if i > 0 {
				page.Next = s.pos
			}
			return page, nil
		}
	}
	return page, nil
}

// Run implements RunIndex.
func (m *Memory) Run(_ context.Context, run RunRef) (RunSummary, error) {
	l := &m.log
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.runs[run]
	if !ok {
		return RunSummary{}, ErrNotFound
	}
	return r.sum.clone(), nil
}

// RunAgents implements RunIndex.
func (m *Memory) RunAgents(_ context.Context, id string) ([]string, error) {
	l := &m.log
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for a := range l.byID[id] {
		out = append(out, a)
	}
	slices.Sort(out)
	if len(out) > MaxRunAgents {
		out = out[:MaxRunAgents]
	}
	return out, nil
}

// redisLog appends step records to per-run streams in the background, in
// pipelined batches, so a Check pays a channel send, not a round trip.
//
// Keys, beside the run's own (see Redis):
//
//	<prefix>:{a:<H(agent)>}:r:<H(run id)>:log   stream: the run's step records
//	<prefix>:{a:<H(agent)>}:r:<H(run id)>:sum   hash: the run's summary for the index
//	<prefix>:{o:<H(run id)>}:agents             set: agents with a logged run of this id
//	<prefix>:{runs}:idx                         sorted set: H(agent):H(run id) by index position
//	<prefix>:{runs}:pos                         counter: the last index position
//
// Every append moves its run to a new, unique index position (one script on
// the {runs} slot), so a listing pages by position with no ties and no
// duplicates; the index is trimmed to MaxIndexedRuns, the rest expires with
// the run (logTTL after its last step).
type redisLog struct {
	cap     int        // MaxIndexedRuns unless a test lowers it
	scan    int        // runScanBudget unless a test lowers it
	mu      sync.Mutex // guards queue and closed against Close
	queue   chan logEntry
	closed  bool
	dropped atomic.Uint64
	done    chan struct{}
}

type logEntry struct {
	run    RunRef
	meta   StepMeta
	record []byte
}

const (
	logQueue = 8192
	logBatch = 256
	// logTTL keeps a run's log for as long as an idle run's state.
	logTTL = DefaultTTL
)

// indexScript gives a run the next index position and trims the index; it
// returns the members it trimmed, whose logs and summaries the writer then
// deletes (their keys are in other slots).
var indexScript = redis.NewScript(`
local pos = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], pos, ARGV[1])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
if over <= 0 then return {} end
local gone = redis.call('ZRANGE', KEYS[1], 0, over - 1)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1)
return gone
`)

// logKey is a run's step-log stream, under the agent's hash tag.
func (r *Redis) logKey(run RunRef) string { return r.runBase(run) + "log" }

// sumKey is a run's summary hash, under the agent's hash tag.
func (r *Redis) sumKey(run RunRef) string { return r.runBase(run) + "sum" }

func (r *Redis) runBase(run RunRef) string {
	return strings.TrimSuffix(r.runKeys(run).run[0], "state")
}

func (r *Redis) agentsKey(id string) string { return r.prefix + ":{o:" + idHash(id) + "}:agents" }

func (r *Redis) indexKeys() []string {
	return []string{r.prefix + ":{runs}:idx", r.prefix + ":{runs}:pos"}
}

// indexMember names a run in the index: fixed size, whatever its ids.
func indexMember(run RunRef) string { return idHash(run.Agent) + ":" + idHash(run.ID) }

// AppendStep implements StepLog.
func (r *Redis) AppendStep(run RunRef, meta StepMeta, record []byte) {
	r.log.mu.Lock()
	defer r.log.mu.Unlock()
	if r.log.closed || !run.valid() {
		r.log.dropped.Add(1)
		return
	}
	if r.log.queue == nil {
		r.log.queue = make(chan logEntry, logQueue)
		r.log.done = make(chan struct{})
		go r.drainLog()
	}
	select {
	case r.log.queue <- logEntry{run, meta, slices.Clone(record)}:
	default:
		r.log.dropped.Add(1)
	}
}

func (r *Redis) drainLog() {
	defer close(r.log.done)
	idx, capacity := r.indexKeys(), cmp.Or(r.log.cap, MaxIndexedRuns)
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
		failed := r.writeLog(batch, idx, capacity)
		if len(failed) > 0 {
			// One more try for the entries a fault or a slow node cut short
			// (the client's read deadline covers a whole pipeline): an entry
			// that did land after all is harmless twice, since Steps drops
			// the repeated record; only its summary's counts may run one high.
			failed = r.writeLog(failed, idx, capacity)
		}
		r.log.dropped.Add(uint64(len(failed)))
	}
}

// logCmds is how many commands writeLog queues per entry.
const logCmds = 10

// writeLog writes a batch in one pipeline and returns the entries with a
// command that failed.
func (r *Redis) writeLog(batch []logEntry, idx []string, capacity int) []logEntry {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	cmds, _ := r.c().Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, e := range batch {
			k, sk, ak := r.logKey(e.run), r.sumKey(e.run), r.agentsKey(e.run.ID)
			p.XAdd(ctx, &redis.XAddArgs{Stream: k, MaxLen: MaxLogSteps, Approx: true, Values: []any{"r", e.record}})
			p.PExpire(ctx, k, logTTL)
			ts := strconv.FormatInt(e.meta.TS.UnixNano(), 10)
			fields := []any{"agent", e.run.Agent, "id", e.run.ID, "last", e.meta.Decision, "updated", ts}
			if e.meta.Committed {
				fields = append(fields, "risk", strconv.FormatFloat(e.meta.CumulativeRisk, 'g', -1, 64))
			}
			p.HSet(ctx, sk, fields...)
			p.HSetNX(ctx, sk, "started", ts)
			p.HIncrBy(ctx, sk, "steps", 1)
			p.HIncrBy(ctx, sk, "d:"+e.meta.Decision, 1)
			p.PExpire(ctx, sk, logTTL)
			p.SAdd(ctx, ak, e.run.Agent)
			p.PExpire(ctx, ak, logTTL)
			// EVAL, not EVALSHA: a pipeline cannot fall back on NOSCRIPT,
			// and Redis caches the script by its hash either way.
			indexScript.Eval(ctx, p, idx, indexMember(e.run), capacity)
		}
		return nil
	})
	if len(cmds) != len(batch)*logCmds {
		return batch
	}
	var failed []logEntry
	last := make(map[string]int, len(batch)) // a member's last entry in the batch
	for i, e := range batch {
		last[indexMember(e.run)] = i
	}
	var gone []string
	for i, e := range batch {
		for _, c := range cmds[i*logCmds : (i+1)*logCmds] {
			if c.Err() != nil {
				failed = append(failed, e)
				break
			}
		}
		c, ok := cmds[(i+1)*logCmds-1].(*redis.Cmd)
		if !ok || c.Err() != nil {
			continue
		}
		members, _ := c.StringSlice()
		for _, m := range members {
			if j, again := last[m]; !again || j < i {
				gone = append(gone, m) // not indexed again later in this batch
			}
		}
	}
	r.forgetRuns(gone)
	return failed
}

// forgetRuns deletes the logs and summaries of runs the index trimmed, so
// the step log's memory is bounded by MaxIndexedRuns (× MaxLogSteps) rather
// than by everything a day of traffic logged. A replica that logs a step of
// a trimmed run at the same moment may lose that step from the log (the
// audit files keep it); the run's next step indexes it again.
func (r *Redis) forgetRuns(members []string) {
	if len(members) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, _ = r.c().Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, m := range members {
			agent, id, ok := strings.Cut(m, ":")
			if !ok {
				continue
			}
			base := r.prefix + ":{a:" + agent + "}:r:" + id + ":"
			p.Del(ctx, base+"log")
			p.Del(ctx, base+"sum")
		}
		return nil
	}) // a failed delete leaves the keys to their TTL
}

// Steps implements StepLog.
func (r *Redis) Steps(ctx context.Context, run RunRef) ([][]byte, error) {
	msgs, err := r.c().XRange(ctx, r.logKey(run), "-", "+").Result()
	if err != nil {
		return nil, err
	}
	out := make([][]byte, 0, len(msgs))
	seen := make(map[string]struct{}, len(msgs))
	for _, m := range msgs {
		v, ok := m.Values["r"].(string)
		if _, again := seen[v]; !ok || again {
			continue // a retried write that had landed the first time
		}
		seen[v] = struct{}{}
		out = append(out, []byte(v))
	}
	return out, nil
}

// DroppedSteps implements StepLog.
func (r *Redis) DroppedSteps() uint64 { return r.log.dropped.Load() }

// ListRuns implements RunIndex: positions below q.Before, newest first, in
// batches, each batch's summaries read in one pipelined round trip.
func (r *Redis) ListRuns(ctx context.Context, q RunQuery) (RunPage, error) {
	if err := q.check(); err != nil {
		return RunPage{}, err
	}
	idx := r.indexKeys()[0]
	agentPrefix := ""
	if q.Agent != "" {
		agentPrefix = idHash(q.Agent) + ":"
	}
	batch := min(max(2*q.Limit, 64), 1000)
	maxScore := "+inf"
	if q.Before > 0 {
		maxScore = "(" + strconv.FormatUint(q.Before, 10)
	}
	var page RunPage
	scanned := 0
	for {
		zs, err := r.c().ZRevRangeByScoreWithScores(ctx, idx, &redis.ZRangeBy{Max: maxScore, Min: "-inf", Count: int64(batch)}).Result()
		if err != nil {
			return RunPage{}, fmt.Errorf("riskstore: list runs: %w", err)
		}
		sums := make([]*redis.MapStringStringCmd, len(zs))
		_, err = r.c().Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, z := range zs {
				m, _ := z.Member.(string)
				if agentPrefix != "" && !strings.HasPrefix(m, agentPrefix) {
					continue // another agent's run: no need to read it
				}
				agentH, runH, _ := strings.Cut(m, ":")
				sums[i] = p.HGetAll(ctx, r.prefix+":{a:"+agentH+"}:r:"+runH+":sum")
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return RunPage{}, fmt.Errorf("riskstore: list runs: %w", err)
		}
		var gone []any
		forget := func() {
			if len(gone) > 0 { // runs expired with their logs: best effort, a listing skips them anyway
				_ = r.c().ZRem(ctx, idx, gone...).Err()
			}
		}
		done := func(next uint64) (RunPage, error) {
			forget()
			page.Next = next
			return page, nil
		}
		for i, z := range zs {
			pos := uint64(z.Score)
			if scanned++; scanned > cmp.Or(r.log.scan, runScanBudget) {
				return done(pos + 1) // continue at this entry
			}
			if sums[i] == nil {
				continue
			}
			fields := sums[i].Val()
			if len(fields) == 0 {
				gone = append(gone, z.Member)
				continue
			}
			s := parseSummary(fields)
			ok, past := q.matches(&s)
			if past {
				return done(0)
			}
			if !ok {
				continue
			}
			page.Runs = append(page.Runs, s)
			if len(page.Runs) == q.Limit {
				if i == len(zs)-1 && len(zs) < batch {
					return done(0)
				}
				return done(pos)
			}
		}
		if len(zs) < batch {
			return done(0)
		}
		forget()
		maxScore = "(" + strconv.FormatUint(uint64(zs[len(zs)-1].Score), 10)
	}
}

func parseSummary(f map[string]string) RunSummary {
	s := RunSummary{Run: RunRef{Agent: f["agent"], ID: f["id"]}, LastDecision: f["last"], Decisions: map[string]int64{}}
	s.Steps, _ = strconv.ParseInt(f["steps"], 10, 64)
	s.CumulativeRisk, _ = strconv.ParseFloat(f["risk"], 64)
	if ns, err := strconv.ParseInt(f["started"], 10, 64); err == nil {
		s.Started = time.Unix(0, ns).UTC()
	}
	if ns, err := strconv.ParseInt(f["updated"], 10, 64); err == nil {
		s.Updated = time.Unix(0, ns).UTC()
	}
	for k, v := range f {
		if d, ok := strings.CutPrefix(k, "d:"); ok {
			s.Decisions[d], _ = strconv.ParseInt(v, 10, 64)
		}
	}
	return s
}

// Run implements RunIndex.
func (r *Redis) Run(ctx context.Context, run RunRef) (RunSummary, error) {
	if !run.valid() {
		return RunSummary{}, ErrNotFound
	}
	f, err := r.c().HGetAll(ctx, r.sumKey(run)).Result()
	if err != nil {
		return RunSummary{}, fmt.Errorf("riskstore: run summary: %w", err)
	}
	if len(f) == 0 {
		return RunSummary{}, ErrNotFound
	}
	return parseSummary(f), nil
}

// RunAgents implements RunIndex.
func (r *Redis) RunAgents(ctx context.Context, id string) ([]string, error) {
	if id == "" || len(id) > MaxIDLen {
		return nil, nil
	}
	out, err := r.c().SRandMemberN(ctx, r.agentsKey(id), MaxRunAgents).Result()
	if err != nil {
		return nil, fmt.Errorf("riskstore: run agents: %w", err)
	}
	slices.Sort(out)
	return out, nil
}

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
