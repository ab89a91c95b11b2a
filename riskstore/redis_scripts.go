package riskstore

import "github.com/redis/go-redis/v9"

// The scripts take every key in KEYS (never built inside the script, so they
// run on Redis Cluster). They store integers as strings formatted by int()
// (Lua's own tostring keeps only 14 digits, too few for a time in
// microseconds) and return them as numbers (Redis replies with a Lua number
// truncated to an integer: exact for the whole numbers below 2^53 they
// hold; checkNumbers keeps costs there); anything else as a string. Risk totals
// are added in Lua doubles and stored with %.17g, so they round-trip bit for
// bit and equal the in-memory store's float64 sums (HINCRBYFLOAT would add in
// long double and drift from it in the last digits).
//
// Time is Redis's: TIME, in microseconds since the epoch (exact in a double
// until the year 2255). Scripts are replicated by their effects (the default
// since Redis 5, the only mode in 7), so reading TIME before writing is safe.

// runLib is shared by the run scripts. KEYS: 1 the run (one hash), 2 the
// agent's window usage (a string), and on a single node 3 the run id's owner.
//
// Run hash fields: v, the counters "<calls>|<writes>|<cost>|<risk total>|
// <start µs>" (calls are also the version); t, the lifetimes "<expiry ms>|
// <mark ms>|<ttl ms>" (the mark is until when the owner key is known to be
// the agent's; ttl is the last commit's, what a Load renews); f, the sticky facts
// joined by newlines in the order they came (Go sorts them); r:<request
// field>, that request's prior; and q:<n>, the request field committed at
// slot n of a ring of maxRequestIDs, so the oldest is forgotten first. One
// hash, one expiry, four fields read and written per commit, and no
// read-back keep a commit to a handful of calls: what a Check costs Redis is
// mostly how many commands its script runs and how many fields they touch (a
// small hash is a list that each field lookup scans; values of at most 64
// bytes keep it one, which is why v and t are two fields).
//
// Usage string: "<window start µs>|<window µs>|<calls>|<cost>|<expiry ms>"; it
// expires when its window ends or ttl after its last commit, whichever is
// later, and never sooner than it did.
//
// The reply: {outcome, limit code, calls, writes, cost, risk, start µs or empty,
// facts, prior or empty, now µs, agent calls, agent cost, agent window start µs
// or empty}. See decodeReply.
const runLib = `
local t = redis.call('TIME')
local nowUs = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nowMs = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function int(n) return string.format('%.0f', n) end

-- readUse reads the agent's usage: {window start, window, calls, cost, expiry}.
local function readUse()
  local v = redis.call('GET', KEYS[2])
  if not v then return nil end
  local u = {string.match(v, '^([^|]+)|([^|]+)|([^|]+)|([^|]+)|([^|]+)$')}
  for i = 1, 5 do
    u[i] = tonumber(u[i])
    -- Never read as no use at all: that would reset the agent's budget.
    if not u[i] then error('malformed agent usage') end
  end
  return u
end

-- inWindow is the use u counted in the window of w µs holding now, and its start.
local function inWindow(u, w)
  if w <= 0 then return 0, 0, nil end
  local start = nowUs - math.fmod(nowUs, w)
  if u and u[1] == start then return u[3], u[4], start end
  return 0, 0, start
end

-- readRun reads the run hash: its state, and the prior of request field rf.
local function readRun(rf)
  local s = redis.call('HMGET', KEYS[1], 'v', 't', 'f', 'r:' .. rf)
  local st = {exists = s[1] ~= false, c = 0, w = 0, cost = 0, risk = '0', start = nil, e = 0, o = 0, ttl = 0,
    f = s[3] or '', prior = s[4] or nil}
  if st.exists then
    local c, w, cost, risk, start = string.match(s[1], '^(%d+)|(%d+)|(-?%d+)|([^|]+)|(%d+)$')
    local e, o, ttl = string.match(s[2] or '', '^(%d+)|(%d+)|(%d+)$')
    if not start or not ttl then error('malformed run state') end
    st.c, st.w, st.cost, st.risk, st.start = tonumber(c), tonumber(w), tonumber(cost), risk, start
    st.e, st.o, st.ttl = tonumber(e), tonumber(o), tonumber(ttl)
  end
  return st
end

-- packRun is the v field of st; packLife its t field, with expiry e and mark o.
local function packRun(st)
  return string.format('%.0f|%.0f|%.0f|%s|%s', st.c, st.w, st.cost, st.risk, st.start)
end
local function packLife(st, e, o)
  return string.format('%.0f|%.0f|%.0f', e, o, st.ttl)
end

-- reply reports st and, as a Load reports it, the agent's use u in the
-- current window of the length it was last counted in.
local function reply(outcome, limit, st, prior, u)
  local ac, acost, as = 0, 0, nil
  if u then ac, acost, as = inWindow(u, u[2]) end
  return {outcome, limit, st.c, st.w, st.cost, st.risk, st.start or '',
    st.f, prior or '', nowUs, ac, acost, as or ''}
end

-- holdOwner (single node) keeps the owner key (KEYS[3]), which is the
-- agent's or nobody's, for at least ms from now, claiming it if claim is set;
-- it returns until when (ms) the key is known to be the agent's, or nil.
local function holdOwner(owner, ms, claim)
  if not owner then
    if not claim then return nil end
    redis.call('SET', KEYS[3], ARGV[3], 'PX', ms)
    return nowMs + ms
  end
  local p = redis.call('PTTL', KEYS[3])
  if p < ms then
    redis.call('PEXPIRE', KEYS[3], ms)
    p = ms
  end
  return nowMs + p
end
`

// commitScript mirrors Memory.Commit: the owner, then duplicate, then version,
// then the limits of Exceeds (same order, same epsilon), then the step.
//
// The run's version is its 'c' counter: every commit adds exactly one and
// nothing else changes it, so it is the number of commits by definition.
//
// The run's owner. The hash's 'o' says until when the owner key is known to
// be the agent's; while that outlives the run (its "mark"), no other agent
// can own the id and the owner key is not read. On a single node an unmarked
// commit reads the owner key, refuses the step if another agent holds it, and
// claims or extends it for ARGV[2] ms (ownerFactor × ttl, so that this happens
// about once per ttl of activity, not on every step). On a Cluster the owner
// key is in another slot: see Redis.Commit.
//
// ARGV: 1 mode ("node" or "cluster"), 2 on a single node the ms a claim keeps
// the owner for; on a Cluster what is known of the owner (-1: nothing, rely on
// the run's mark; 0: checked, nobody else owns it, not claimed; > 0: claimed
// by the agent, for that many ms), 3 agent, 4 request field, 5 prior payload
// "<step risk>|<decision id>", 6 expected version or -1, 7 max calls, 8 max
// writes, 9 max cost, 10 max execution µs or empty, 11 max risk, 12 epsilon,
// 13 agent window µs or 0, 14 agent max calls, 15 agent max cost, 16 write
// 0/1, 17 step cost, 18 step risk, 19 ttl ms, 20 request ids kept, 21 max
// facts, 22 nonce owner, 23 nonce ttl ms, 24… the step's facts (none holding
// a newline). KEYS[4], on a single node, is the step's nonce (Step.Nonce):
// refused as 'replayed' when another owner holds it, set when the step
// commits.
//
// On a Cluster, when the run is not marked, the script returns its outcome
// prefixed with '?' and changes nothing; Redis.Commit then checks or claims
// the owner and calls it again with ARGV[2] set.
var commitScript = redis.NewScript(runLib + `
local node, agent = ARGV[1] == 'node', ARGV[3]
local ttl = tonumber(ARGV[19])
local st = readRun(ARGV[4])
local newExp = math.max(st.e, nowMs + ttl)
local marked = st.exists and st.o >= newExp
local owner = false
if node and not marked then
  owner = redis.call('GET', KEYS[3])
  if owner and owner ~= agent then return reply('refused', 8, st, nil, readUse()) end
end

local u = readUse()
local write = ARGV[16] == '1'
local stepCost, stepRisk = tonumber(ARGV[17]), tonumber(ARGV[18])
local agentW = tonumber(ARGV[13])
local acalls, acost, astart = inWindow(u, agentW)

local outcome, limit, prior = 'ok', 0, nil
if st.exists and ARGV[4] ~= '' then prior = st.prior end
local expect = tonumber(ARGV[6])
local nonceKey = node and KEYS[4] or nil
local holder = nonceKey and redis.call('GET', nonceKey) or false
if prior then
  outcome = 'dup'
elseif holder and holder ~= ARGV[22] then
  outcome = 'replayed'
elseif expect >= 0 and st.c ~= expect then
  outcome = 'stale'
else
  -- A cost total past 2^53 would round in a double (and pass a limit it
  -- exceeds): an error, as in Memory, never a rounded total. The test
  -- itself does not add, so it is exact.
  local exact = 9007199254740992
  if st.cost > exact - stepCost or st.cost < -exact - stepCost or
    (agentW > 0 and (acost > exact - stepCost or acost < -exact - stepCost)) then
    error('cost total out of range (|micros| > 2^53)')
  end
  local maxCalls, maxWrites, maxCost = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
  local maxRisk, eps = tonumber(ARGV[11]), tonumber(ARGV[12])
  local aMaxCalls, aMaxCost = tonumber(ARGV[14]), tonumber(ARGV[15])
  if maxCalls > 0 and st.c + 1 > maxCalls then
    limit = 1
  elseif maxWrites > 0 and write and st.w + 1 > maxWrites then
    limit = 2
  elseif maxCost > 0 and st.cost + stepCost > maxCost then
    limit = 3
  elseif ARGV[10] ~= '' and st.start and nowUs - tonumber(st.start) > tonumber(ARGV[10]) then
    limit = 4
  elseif maxRisk > 0 and tonumber(st.risk) + stepRisk > maxRisk + eps then
    limit = 5
  elseif agentW > 0 and aMaxCalls > 0 and acalls + 1 > aMaxCalls then
    limit = 6
  elseif agentW > 0 and aMaxCost > 0 and acost + stepCost > aMaxCost then
    limit = 7
  end
  if limit ~= 0 then outcome = 'refused' end
end

-- mark is the run's new 'o', when this call learns one.
local mark = nil
if not node then
  local ownerR = tonumber(ARGV[2])
  if not marked and (ownerR < 0 or (ownerR == 0 and outcome == 'ok')) then
    return reply('?' .. outcome, limit, st, prior, u)
  end
  if ownerR > 0 and (st.exists or outcome == 'ok') then
    mark = nowMs + ownerR
    if outcome ~= 'ok' and outcome ~= 'refused' then redis.call('HSET', KEYS[1], 't', packLife(st, st.e, mark)) end
  end
end

if outcome == 'dup' then return reply('dup', 0, st, prior, u) end
if outcome == 'replayed' then return reply('replayed', 0, st, nil, u) end
if outcome == 'stale' then return reply('stale', 0, st, nil, u) end
if outcome == 'refused' then
  -- A refused run stays refused: it does not expire and come back fresh.
  if st.exists then
    if node and not marked then mark = holdOwner(owner, tonumber(ARGV[2]), false) end
    redis.call('HSET', KEYS[1], 't', packLife(st, newExp, mark or st.o))
    redis.call('PEXPIREAT', KEYS[1], int(newExp))
  end
  return reply('refused', limit, st, nil, u)
end

local total = string.format('%.17g', tonumber(st.risk) + stepRisk)
local f = {'r:' .. ARGV[4], total .. '|' .. ARGV[5]}
if write then st.w = st.w + 1 end
st.cost = st.cost + stepCost
if not st.exists then st.start = int(nowUs) end

-- Facts: the union, bounded like mergeFacts (in ARGV order, none once full).
local facts, n = st.f, 0
if facts ~= '' then n = select(2, string.gsub(facts, '\n', '')) + 1 end
local maxFacts, grown = tonumber(ARGV[21]), false
for i = 24, #ARGV do
  if n >= maxFacts then break end
  if not string.find('\n' .. facts .. '\n', '\n' .. ARGV[i] .. '\n', 1, true) then
    if facts == '' then facts = ARGV[i] else facts = facts .. '\n' .. ARGV[i] end
    n, grown = n + 1, true
  end
end
if grown then
  st.f = facts
  f[#f + 1] = 'f'; f[#f + 1] = facts
end

-- Request ids: slot c mod kept of the ring; the id it held is forgotten.
local kept = tonumber(ARGV[20])
local slot = 'q:' .. int(math.fmod(st.c, kept))
if st.c >= kept then
  local old = redis.call('HGET', KEYS[1], slot)
  if old then redis.call('HDEL', KEYS[1], 'r:' .. old) end
end
f[#f + 1] = slot; f[#f + 1] = ARGV[4]

if node and not marked then mark = holdOwner(owner, tonumber(ARGV[2]), true) end
st.c, st.risk, st.ttl = st.c + 1, total, ttl
f[#f + 1] = 'v'; f[#f + 1] = packRun(st)
f[#f + 1] = 't'; f[#f + 1] = packLife(st, newExp, mark or st.o)
redis.call('HSET', KEYS[1], unpack(f))
redis.call('PEXPIREAT', KEYS[1], int(newExp))

if agentW > 0 then
  local e = math.max(nowMs + ttl, (astart + agentW) / 1000, u and u[5] or 0)
  u = {astart, agentW, acalls + 1, acost + stepCost, e}
  redis.call('SET', KEYS[2], string.format('%.0f|%.0f|%.0f|%.0f|%.0f', astart, agentW, acalls + 1, acost + stepCost, e), 'PXAT', int(e))
end

if nonceKey then redis.call('SET', nonceKey, ARGV[22], 'PX', ARGV[23]) end
return reply('ok', 0, st, nil, u)
`)

// loadScript reads a run and, when ARGV[1] is not empty, the prior of that
// request field, and renews the run's lifetime by the ttl of its last commit.
// On a single node (ARGV[2] = '1') an unmarked run also renews its owner, if
// that is still the agent (ARGV[3]), for ARGV[4] (ownerFactor) times that ttl.
var loadScript = redis.NewScript(runLib + `
local st = readRun(ARGV[1])
local prior = nil
if st.exists then
  if ARGV[1] ~= '' then prior = st.prior end
  local newExp = math.max(st.e, nowMs + st.ttl)
  local mark = nil
  if ARGV[2] == '1' and st.o < newExp then
    local owner = redis.call('GET', KEYS[3])
    if owner == ARGV[3] then mark = holdOwner(owner, tonumber(ARGV[4]) * st.ttl, false) end
  end
  if mark or newExp > st.e then redis.call('HSET', KEYS[1], 't', packLife(st, newExp, mark or st.o)) end
  if newExp > st.e then redis.call('PEXPIREAT', KEYS[1], int(newExp)) end
end
return reply('', 0, st, prior, readUse())
`)

// ownerScript reads, refreshes or claims a run id's owner (KEYS[1]).
// ARGV: op ("get", "touch" or "claim"), agent, ttl ms. It returns the owner
// (empty if none) and, when that is the agent and op is not "get", the key's
// remaining lifetime in ms (else 0). A claim or touch never shortens it.
var ownerScript = redis.NewScript(`
local op, agent, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local o = redis.call('GET', KEYS[1])
if not o then
  if op == 'claim' then
    redis.call('SET', KEYS[1], agent, 'PX', ttl)
    return {agent, ttl}
  end
  return {'', 0}
end
if o ~= agent or op == 'get' then return {o, 0} end
local p = redis.call('PTTL', KEYS[1])
if p < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
  p = ttl
end
return {o, p}
`)

// Approvals live in five keys under one hash tag so a listing is one slot:
// body (the approval as created, JSON), status, decision (JSON of who/when/why),
// exp (a sorted set of expiry times in ms of the store's clock) and pending
// (counts of pending approvals per agent "a:<agent>" and per run
// "r:<agent>|<run>", for the bounds). Expired entries are swept lazily, a
// bounded number per call.
const approvalLib = `
local function unpend(id)
  if redis.call('HGET', KEYS[2], id) ~= 'pending' then return end
  local ok, doc = pcall(cjson.decode, redis.call('HGET', KEYS[1], id) or '')
  if not ok or type(doc) ~= 'table' then return end
  local a, r = tostring(doc.agent_id), tostring(doc.agent_id) .. '|' .. tostring(doc.run_id)
  if redis.call('HINCRBY', KEYS[5], 'a:' .. a, -1) <= 0 then redis.call('HDEL', KEYS[5], 'a:' .. a) end
  if redis.call('HINCRBY', KEYS[5], 'r:' .. r, -1) <= 0 then redis.call('HDEL', KEYS[5], 'r:' .. r) end
end
local function gone(id)
  unpend(id)
  redis.call('HDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[4], id)
end
local function sweep(now)
  local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. now, 'LIMIT', 0, 256)
  for _, id in ipairs(old) do gone(id) end
end
local function alive(id, now)
  local exp = redis.call('ZSCORE', KEYS[4], id)
  return exp and tonumber(exp) >= tonumber(now) and redis.call('HEXISTS', KEYS[1], id) == 1
end
local function keep(key, ttl)
  local cur = redis.call('PTTL', key)
  if cur ~= -2 and cur < tonumber(ttl) then redis.call('PEXPIRE', key, ttl) end
end
local function get(id)
  return {redis.call('HGET', KEYS[1], id), redis.call('HGET', KEYS[2], id) or '',
    redis.call('HGET', KEYS[3], id) or ''}
end
`

// ARGV: id, body, status, now ms, expiry ms, ttl ms, agent, run, max pending
// per run, max pending per agent (0: unbounded).
var approvalCreateScript = redis.NewScript(approvalLib + `
local id, now = ARGV[1], ARGV[4]
sweep(now)
if alive(id, now) then return 'conflict' end
gone(id)
local fa, fr = 'a:' .. ARGV[7], 'r:' .. ARGV[7] .. '|' .. ARGV[8]
if ARGV[3] == 'pending' then
  local perRun, perAgent = tonumber(ARGV[9]), tonumber(ARGV[10])
  if perRun > 0 and tonumber(redis.call('HGET', KEYS[5], fr) or '0') >= perRun then return 'limit' end
  if perAgent > 0 and tonumber(redis.call('HGET', KEYS[5], fa) or '0') >= perAgent then return 'limit' end
  redis.call('HINCRBY', KEYS[5], fa, 1)
  redis.call('HINCRBY', KEYS[5], fr, 1)
end
redis.call('HSET', KEYS[1], id, ARGV[2])
redis.call('HSET', KEYS[2], id, ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[5], id)
for i = 1, 5 do keep(KEYS[i], ARGV[6]) end
return 'ok'
`)

// ARGV: id, now ms.
var approvalGetScript = redis.NewScript(approvalLib + `
if not alive(ARGV[1], ARGV[2]) then return false end
return get(ARGV[1])
`)

// ARGV: now ms. Returns a flat list of id, body, status, decision.
var approvalListScript = redis.NewScript(approvalLib + `
local now = ARGV[1]
sweep(now)
local out = {}
local ids = redis.call('HKEYS', KEYS[1])
for _, id in ipairs(ids) do
  if alive(id, now) then
    local a = get(id)
    table.insert(out, id)
    table.insert(out, a[1])
    table.insert(out, a[2])
    table.insert(out, a[3])
  end
end
return out
`)

// ARGV: id, now ms, new status, decision JSON.
var approvalDecideScript = redis.NewScript(approvalLib + `
local id = ARGV[1]
if not alive(id, ARGV[2]) then return {'notfound'} end
local a = get(id)
if a[2] ~= 'pending' then return {'conflict', a[1], a[2], a[3]} end
unpend(id)
redis.call('HSET', KEYS[2], id, ARGV[3])
redis.call('HSET', KEYS[3], id, ARGV[4])
keep(KEYS[3], redis.call('PTTL', KEYS[1]))
return {'ok', a[1], ARGV[3], ARGV[4]}
`)

// ARGV: id, now ms, binding. The binding is read from the stored body.
var approvalConsumeScript = redis.NewScript(approvalLib + `
local id = ARGV[1]
if not alive(id, ARGV[2]) then return {'notfound'} end
local a = get(id)
local ok, doc = pcall(cjson.decode, a[1])
if a[2] ~= 'approved' or not ok or type(doc) ~= 'table' or doc.binding ~= ARGV[3] then
  return {'conflict', a[1], a[2], a[3]}
end
redis.call('HSET', KEYS[2], id, 'used')
return {'ok', a[1], 'used', a[3]}
`)
