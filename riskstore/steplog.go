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
// A batch is one pipeline: one script call per entry (its record and summary,
// under the agent's hash tag), the agents sets a replica has not renewed
// lately, and one script call that moves the batch's runs to new, unique index
// positions (in batch order) and trims the index to MaxIndexedRuns, so a
// listing pages by position with no ties and no duplicates. Logs and
// summaries expire logTTL after their last step (renewed at most every
// logRenew); an agents set lives at least logTTL−logRenew after the last step
// this replica logged for the run id.
type redisLog struct {
	cap     int        // MaxIndexedRuns unless a test lowers it
	scan    int        // runScanBudget unless a test lowers it
	mu      sync.Mutex // guards queue and closed against Close
	queue   chan logEntry
	closed  bool
	dropped atomic.Uint64
	done    chan struct{}
	// agentsRenewed is when this replica last renewed each agents set
	// (owned by the writer goroutine; cleared when it grows past maxRenewed).
	agentsRenewed map[string]time.Time
}

type logEntry struct {
	run    RunRef
	meta   StepMeta
	record []byte
}

const (
	logQueue  = 8192
	logBatch  = 256
	logLinger = 10 * time.Millisecond
	// logTTL keeps a run's log for as long as an idle run's state.
	logTTL = DefaultTTL
	// logRenew: a log's, summary's or agents set's lifetime is renewed when
	// this much has passed since it last was, not on every step.
	logRenew = logTTL / 16
	// maxRenewed bounds agentsRenewed.
	maxRenewed = 1 << 16
)

// appendScript logs steps: KEYS 2i-1 and 2i are the i-th step's run log and
// summary; ARGV 1 ttl ms, 2 renew ms, 3 max log length, then six per step:
// the record, agent, run id, decision, time (ns), the cumulative risk or ""
// (not committed). It returns 1 or 0 per step: 0 where Redis refused it (its
// keys hold another type), which leaves that step's keys as they were. The
// summary's x is when (ms, Redis's clock) both keys' lifetimes were renewed.
// One call per batch (per agent on a Cluster, whose keys share a slot): what
// a step costs Redis is mostly script calls and the commands they run.
var appendScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl, renewAfter, maxLen = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local function failed(r) return type(r) == 'table' and r.err ~= nil end
local out = {}
for i = 1, #KEYS / 2 do
  local log, sum, a = KEYS[2 * i - 1], KEYS[2 * i], 3 + 6 * (i - 1)
  local s = nil
  -- NOMKSTREAM: a log that does not exist (new, or deleted while its
  -- summary lived on) is created by a second XADD, and renewed below.
  local added = redis.pcall('XADD', log, 'NOMKSTREAM', 'MAXLEN', '~', maxLen, '*', 'r', ARGV[a + 1])
  local created = added == false
  if created then added = redis.pcall('XADD', log, 'MAXLEN', '~', maxLen, '*', 'r', ARGV[a + 1]) end
  if not failed(added) then
    s = redis.pcall('HMGET', sum, 'steps', 'd:' .. ARGV[a + 4], 'x')
  end
  if s == nil or failed(s) then
    out[i] = 0
  else
    local f = {'last', ARGV[a + 4], 'updated', ARGV[a + 5],
      'steps', tostring((tonumber(s[1]) or 0) + 1), 'd:' .. ARGV[a + 4], tostring((tonumber(s[2]) or 0) + 1)}
    if not s[1] then
      f[#f + 1] = 'started'; f[#f + 1] = ARGV[a + 5]
      f[#f + 1] = 'agent'; f[#f + 1] = ARGV[a + 2]
      f[#f + 1] = 'id'; f[#f + 1] = ARGV[a + 3]
    end
    if ARGV[a + 6] ~= '' then f[#f + 1] = 'risk'; f[#f + 1] = ARGV[a + 6] end
    -- Renewed when due, and whenever this step created the log.
    local renew = created or not s[3] or now - tonumber(s[3]) >= renewAfter
    if renew then f[#f + 1] = 'x'; f[#f + 1] = string.format('%.0f', now) end
    redis.call('HSET', sum, unpack(f))
    if renew then
      redis.call('PEXPIRE', log, ttl)
      redis.call('PEXPIRE', sum, ttl)
    end
    out[i] = 1
  end
end
return out
`)

// indexScript gives the runs ARGV[2…] the next index positions, in order,
// and trims the index to ARGV[1] runs; it returns the members it trimmed,
// whose logs and summaries the writer then deletes (their keys are in other
// slots). KEYS: the index and its position counter.
var indexScript = redis.NewScript(`
local n = #ARGV - 1
local first = redis.call('INCRBY', KEYS[2], n) - n
local z = {}
for i = 1, n do
  z[#z + 1] = first + i
  z[#z + 1] = ARGV[i + 1]
end
redis.call('ZADD', KEYS[1], unpack(z))
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1])
if over <= 0 then return {} end
local gone = redis.call('ZRANGE', KEYS[1], 0, over - 1)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1)
return gone
`)

// logKey is a run's step-log stream, under the agent's hash tag.
func (r *Redis) logKey(run RunRef) string { return r.runBase(run) + "log" }

// sumKey is a run's summary hash, under the agent's hash tag.
func (r *Redis) sumKey(run RunRef) string { return r.runBase(run) + "sum" }

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
		r.log.agentsRenewed = make(map[string]time.Time)
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
	r.loadLogScripts()
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	for e := range r.log.queue {
		// A batch gathers for up to logLinger after its first step: the
		// log is read by people, not by Checks, and a batch's script calls
		// and round trip cost Redis about the same for one step as for
		// fifty.
		batch := []logEntry{e}
		linger.Reset(logLinger)
	more:
		for len(batch) < logBatch {
			select {
			case e, ok := <-r.log.queue:
				if !ok {
					break more
				}
				batch = append(batch, e)
			case <-linger.C:
				break more
			}
		}
		linger.Stop()
		failed, noScript := r.writeLog(batch, idx, capacity)
		if len(failed) > 0 {
			// One more try for the entries a fault or a slow node cut short
			// (the client's read deadline covers a whole pipeline), after
			// loading the scripts if Redis had lost them (a restart): an
			// entry that did land after all is harmless twice, since Steps
			// drops the repeated record; only its summary's counts may run
			// one high.
			if noScript {
				r.loadLogScripts()
			}
			failed, _ = r.writeLog(failed, idx, capacity)
		}
		r.log.dropped.Add(uint64(len(failed)))
	}
}

// loadLogScripts loads the writer's scripts (on every master of a Cluster).
func (r *Redis) loadLogScripts() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	load := func(ctx context.Context, c redis.Scripter) {
		_ = appendScript.Load(ctx, c).Err()
		_ = indexScript.Load(ctx, c).Err()
	}
	if r.cluster != nil {
		_ = r.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			load(ctx, c)
			return nil
		})
		return
	}
	load(ctx, r.c())
}

// writeLog writes a batch in one pipeline (see redisLog) and returns the
// entries that failed, and whether a script was missing.
func (r *Redis) writeLog(batch []logEntry, idx []string, capacity int) ([]logEntry, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	now := time.Now()
	groups := r.logGroups(batch)
	appends := make([]*redis.Cmd, len(groups))
	agents := make([][2]redis.Cmder, len(batch))
	renewed := make([]string, len(batch)) // agentsRenewed's key of each entry
	members := make([]any, 1, len(batch)+1)
	members[0] = capacity
	var index *redis.Cmd
	_, _ = r.c().Pipelined(ctx, func(p redis.Pipeliner) error {
		for g, group := range groups {
			keys := make([]string, 0, 2*len(group))
			args := make([]any, 3, 3+6*len(group))
			args[0], args[1], args[2] = logTTL.Milliseconds(), logRenew.Milliseconds(), MaxLogSteps
			for _, i := range group {
				e := batch[i]
				risk := ""
				if e.meta.Committed {
					risk = strconv.FormatFloat(e.meta.CumulativeRisk, 'g', -1, 64)
				}
				base := r.runBase(e.run)
				keys = append(keys, base+"log", base+"sum")
				args = append(args, e.record, e.run.Agent, e.run.ID, e.meta.Decision, strconv.FormatInt(e.meta.TS.UnixNano(), 10), risk)
			}
			appends[g] = appendScript.EvalSha(ctx, p, keys, args...)
		}
		queued := make(map[string]bool, len(batch)) // agents sets renewed in this batch
		for i, e := range batch {
			ak := r.agentsKey(e.run.ID)
			renewed[i] = ak + "\x00" + e.run.Agent
			if at, ok := r.log.agentsRenewed[renewed[i]]; !queued[renewed[i]] && (!ok || now.Sub(at) >= logRenew) {
				agents[i] = [2]redis.Cmder{p.SAdd(ctx, ak, e.run.Agent), p.PExpire(ctx, ak, logTTL)}
				queued[renewed[i]] = true
			}
		}
		// A run's last step of the batch is its place in the index.
		indexed := make(map[string]bool, len(batch))
		for i := len(batch) - 1; i >= 0; i-- {
			if m := indexMember(batch[i].run); !indexed[m] {
				indexed[m] = true
				members = append(members, m)
			}
		}
		slices.Reverse(members[1:])
		index = indexScript.EvalSha(ctx, p, idx, members...)
		return nil
	})
	noScript := false
	failedCmd := func(c redis.Cmder) bool {
		if c == nil || c.Err() == nil {
			return false
		}
		noScript = noScript || redis.HasErrorPrefix(c.Err(), "NOSCRIPT")
		return true
	}
	ok := make([]bool, len(batch))
	for g, group := range groups {
		if failedCmd(appends[g]) {
			continue
		}
		res, _ := appends[g].Int64Slice()
		for j, i := range group {
			ok[i] = j < len(res) && res[j] == 1
		}
	}
	indexed := !failedCmd(index)
	if !indexed {
		// The steps are logged: index them again alone rather than log them
		// twice (their summaries would count them twice).
		index = indexScript.Run(ctx, r.c(), idx, members...)
		indexed = index.Err() == nil
	}
	if len(r.log.agentsRenewed) > maxRenewed {
		clear(r.log.agentsRenewed)
	}
	var failed []logEntry
	for i, e := range batch {
		// Only a step whose record did not land is tried again: one that
		// landed but was not indexed, or whose agents set was not renewed,
		// would be logged and counted twice. It is listed again with its
		// run's next step; its agents set is renewed with that step too.
		if !ok[i] {
			failed = append(failed, e)
			continue
		}
		if agents[i][0] != nil && !failedCmd(agents[i][0]) && !failedCmd(agents[i][1]) {
			r.log.agentsRenewed[renewed[i]] = now
		}
	}
	if indexed {
		gone, _ := index.StringSlice()
		r.forgetRuns(gone)
	}
	return failed, noScript
}

// logGroups splits a batch into appendScript calls, as indexes into batch:
// one on a single node, one per agent on a Cluster (an agent's keys share a
// slot).
func (r *Redis) logGroups(batch []logEntry) [][]int {
	all := make([]int, len(batch))
	for i := range all {
		all[i] = i
	}
	if r.cluster == nil {
		return [][]int{all}
	}
	byAgent := map[string]int{}
	var groups [][]int
	for _, i := range all {
		g, ok := byAgent[batch[i].run.Agent]
		if !ok {
			g = len(groups)
			byAgent[batch[i].run.Agent] = g
			groups = append(groups, nil)
		}
		groups[g] = append(groups[g], i)
	}
	return groups
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
			p.Del(ctx, base+"log", base+"sum") // one slot, one command: never one without the other
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
