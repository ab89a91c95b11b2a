package riskstore

import "github.com/redis/go-redis/v9"

// The scripts take every key in KEYS (never built inside the script, so they
// run on Redis Cluster) and return numbers as strings: Redis truncates Lua
// numbers to integers, and Lua's own tostring keeps only 14 digits, too few
// for a time in microseconds (int() below formats them exactly). Risk totals
// are added in Lua doubles and stored with %.17g, so they round-trip bit for
// bit and equal the in-memory store's float64 sums (HINCRBYFLOAT would add in
// long double and drift from it in the last digits).
//
// Time is Redis's: TIME, in microseconds since the epoch (exact in a double
// until the year 2255). Scripts are replicated by their effects (the default
// since Redis 5, the only mode in 7), so reading TIME before writing is safe.

// runLib is shared by the run scripts. KEYS: 1 the run's state hash, 2 its
// facts (a sorted set, all scores 0, so ranges come back in byte order, as Go
// sorts strings), 3 its request ids (field → prior), 4 their order (a list),
// 5 the agent's window usage hash, and on a single node 6 the run id's owner.
//
// State hash fields: calls (the tool calls, which are also the version),
// writes, cost, risk, start (µs), ttl (ms, of the last commit: what a Load
// renews), exp (ms: when every run key expires), and on a Cluster oexp (ms:
// how long the owner key is known to live). Usage hash: ws (window start, µs),
// w (window length, µs), calls, cost; it expires when its window ends or ttl
// after its last commit, whichever is later.
//
// The reply: {outcome, limit code, calls, writes, cost, risk, start µs or empty,
// {facts…}, prior or empty, now µs, agent calls, agent cost, agent window start
// µs or empty}. See decodeReply.
const runLib = `
local t = redis.call('TIME')
local nowUs = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nowMs = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function int(n) return string.format('%.0f', n) end

-- usage is the agent's use in the window of w µs holding now, and its start.
local function usage(w)
  if w <= 0 then return 0, 0, nil end
  local start = nowUs - math.fmod(nowUs, w)
  local a = redis.call('HMGET', KEYS[5], 'ws', 'calls', 'cost')
  if a[1] and tonumber(a[1]) == start then return tonumber(a[2]), tonumber(a[3]), start end
  return 0, 0, start
end

local function reply(outcome, limit, prior)
  local v = redis.call('HMGET', KEYS[1], 'calls', 'writes', 'cost', 'risk', 'start')
  -- The agent's use as a Load reports it: in the current window of the
  -- length it was last counted in.
  local ac, acost, as = 0, 0, nil
  local w = redis.call('HGET', KEYS[5], 'w')
  if w then ac, acost, as = usage(tonumber(w)) end
  return {outcome, tostring(limit), v[1] or '0', v[2] or '0', v[3] or '0', v[4] or '0', v[5] or '',
    redis.call('ZRANGE', KEYS[2], 0, -1), prior or '', int(nowUs), int(ac), int(acost), as and int(as) or ''}
end

-- extend keeps every key of the run until at least now + ttl ms, never
-- shortening its life; exp is when it expires now.
local function extend(ttl, exp)
  local e = math.max(exp, nowMs + ttl)
  redis.call('HSET', KEYS[1], 'exp', int(e))
  for i = 1, 4 do redis.call('PEXPIREAT', KEYS[i], int(e)) end
end

-- touchOwner (single node) extends the owner's life to now + ttl ms if agent owns the run id.
local function touchOwner(agent, ttl)
  if redis.call('GET', KEYS[6]) == agent and redis.call('PTTL', KEYS[6]) < ttl then
    redis.call('PEXPIRE', KEYS[6], ttl)
  end
end
`

// commitScript mirrors Memory.Commit: the owner, then duplicate, then version,
// then the limits of Exceeds (same order, same epsilon), then the step.
//
// The run's version is its 'calls' counter: every commit adds exactly one and
// nothing else changes it, so it is the number of commits by definition.
//
// ARGV: 1 mode ("node" or "cluster"), 2 owner knowledge on a Cluster (-1: none,
// rely on the run's mark; 0: checked, nobody else owns it, not claimed; > 0:
// claimed by the agent, for that many ms), 3 agent, 4 request field, 5 prior
// payload "<step risk>|<decision id>", 6 expected version or -1, 7 max calls,
// 8 max writes, 9 max cost, 10 max execution µs or empty, 11 max risk, 12 epsilon,
// 13 agent window µs or 0, 14 agent max calls, 15 agent max cost, 16 write
// 0/1, 17 step cost, 18 step risk, 19 ttl ms, 20 request ids kept, 21 max
// facts, 22 nonce owner, 23 nonce ttl ms, 24… the step's facts. KEYS[7], on a
// single node, is the step's nonce (Step.Nonce): refused as 'replayed' when
// another owner holds it, set when the step commits.
//
// On a Cluster, when the run is not known to be owned by the agent for longer
// than it will live, the script returns its outcome prefixed with '?' and
// changes nothing; Redis.Commit then checks or claims the owner and calls it
// again with ARGV[2] set.
var commitScript = redis.NewScript(runLib + `
local node, ownerR, agent = ARGV[1] == 'node', tonumber(ARGV[2]), ARGV[3]
local ttl = tonumber(ARGV[19])
if node then
  local o = redis.call('GET', KEYS[6])
  if o and o ~= agent then return reply('refused', 8, nil) end
end

local s = redis.call('HMGET', KEYS[1], 'calls', 'writes', 'cost', 'risk', 'start', 'exp', 'oexp')
local exists = s[1] ~= false
local calls, writes = tonumber(s[1] or '0'), tonumber(s[2] or '0')
local cost, risk = tonumber(s[3] or '0'), tonumber(s[4] or '0')
local exp = tonumber(s[6] or '0')
local write = ARGV[16] == '1'
local stepCost, stepRisk = tonumber(ARGV[17]), tonumber(ARGV[18])
local agentW = tonumber(ARGV[13])
local acalls, acost, astart = usage(agentW)

local outcome, limit, prior = 'ok', 0, nil
if exists and ARGV[4] ~= '' then prior = redis.call('HGET', KEYS[3], ARGV[4]) end
local expect = tonumber(ARGV[6])
local nonceKey = node and KEYS[7] or nil
local holder = nonceKey and redis.call('GET', nonceKey) or false
if prior then
  outcome = 'dup'
elseif holder and holder ~= ARGV[22] then
  outcome = 'replayed'
elseif expect >= 0 and calls ~= expect then
  outcome = 'stale'
else
  local maxCalls, maxWrites, maxCost = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
  local maxRisk, eps = tonumber(ARGV[11]), tonumber(ARGV[12])
  local aMaxCalls, aMaxCost = tonumber(ARGV[14]), tonumber(ARGV[15])
  if maxCalls > 0 and calls + 1 > maxCalls then
    limit = 1
  elseif maxWrites > 0 and write and writes + 1 > maxWrites then
    limit = 2
  elseif maxCost > 0 and cost + stepCost > maxCost then
    limit = 3
  elseif ARGV[10] ~= '' and s[5] and nowUs - tonumber(s[5]) > tonumber(ARGV[10]) then
    limit = 4
  elseif maxRisk > 0 and risk + stepRisk > maxRisk + eps then
    limit = 5
  elseif agentW > 0 and aMaxCalls > 0 and acalls + 1 > aMaxCalls then
    limit = 6
  elseif agentW > 0 and aMaxCost > 0 and acost + stepCost > aMaxCost then
    limit = 7
  end
  if limit ~= 0 then outcome = 'refused' end
end

if not node then
  -- The run's mark: its owner key outlives the run even after this call.
  local marked = s[7] and tonumber(s[7]) >= math.max(exp, nowMs + ttl)
  if not marked and (ownerR < 0 or (ownerR == 0 and outcome == 'ok')) then
    return reply('?' .. outcome, limit, prior)
  end
  if ownerR > 0 and (exists or outcome == 'ok') then
    redis.call('HSET', KEYS[1], 'oexp', int(nowMs + ownerR))
  end
end

if outcome == 'dup' then return reply('dup', 0, prior) end
if outcome == 'replayed' then return reply('replayed', 0, nil) end
if outcome == 'stale' then return reply('stale', 0, nil) end
if outcome == 'refused' then
  -- A refused run stays refused: it does not expire and come back fresh.
  if exists then
    extend(ttl, exp)
    if node then touchOwner(agent, ttl) end
  end
  return reply('refused', limit, nil)
end

if not exists then redis.call('HSET', KEYS[1], 'start', int(nowUs)) end
redis.call('HINCRBY', KEYS[1], 'calls', 1)
if write then redis.call('HINCRBY', KEYS[1], 'writes', 1) end
if stepCost ~= 0 then redis.call('HINCRBY', KEYS[1], 'cost', ARGV[17]) end
local total = string.format('%.17g', risk + stepRisk)
redis.call('HSET', KEYS[1], 'risk', total, 'ttl', ARGV[19])

-- Facts: the sorted union, bounded like mergeFacts (in ARGV order, none once full).
local n = redis.call('ZCARD', KEYS[2])
for i = 24, #ARGV do
  if n >= tonumber(ARGV[21]) then break end
  n = n + redis.call('ZADD', KEYS[2], 'NX', 0, ARGV[i])
end

if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[4], total .. '|' .. ARGV[5])
  if redis.call('RPUSH', KEYS[4], ARGV[4]) > tonumber(ARGV[20]) then
    redis.call('HDEL', KEYS[3], redis.call('LPOP', KEYS[4]))
  end
end

if agentW > 0 then
  redis.call('HSET', KEYS[5], 'ws', int(astart), 'w', ARGV[13], 'calls', int(acalls + 1), 'cost', int(acost + stepCost))
  local e = math.max(nowMs + ttl, (astart + agentW) / 1000)
  local p = redis.call('PTTL', KEYS[5])
  if p > 0 then e = math.max(e, nowMs + p) end
  redis.call('PEXPIREAT', KEYS[5], int(e))
end

if nonceKey then redis.call('SET', nonceKey, ARGV[22], 'PX', ARGV[23]) end

if node then
  -- The first commit claims the run id; later ones keep the claim alive.
  if redis.call('SET', KEYS[6], agent, 'NX', 'PX', ttl) == false then touchOwner(agent, ttl) end
end
extend(ttl, exp)
return reply('ok', 0, nil)
`)

// loadScript reads a run and, when ARGV[1] is not empty, the prior of that
// request id, and renews the run's lifetime by the ttl of its last commit (and
// on a single node, ARGV[2] = '1', its owner's). ARGV[3] is the agent.
var loadScript = redis.NewScript(runLib + `
local s = redis.call('HMGET', KEYS[1], 'calls', 'ttl', 'exp')
local prior = nil
if s[1] then
  if ARGV[1] ~= '' then prior = redis.call('HGET', KEYS[3], ARGV[1]) end
  local ttl = tonumber(s[2])
  extend(ttl, tonumber(s[3]))
  if ARGV[2] == '1' then touchOwner(ARGV[3], ttl) end
end
return reply('', 0, prior)
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
