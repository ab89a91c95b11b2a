package riskstore

import "github.com/redis/go-redis/v9"

// The scripts take every key in KEYS (never built inside the script, so they
// run on Redis Cluster) and return numbers that are not integers as strings
// (Redis truncates Lua numbers to integers). Risk totals are added in Lua
// doubles and stored with %.17g, so they round-trip bit for bit and equal the
// in-memory store's float64 sums (HINCRBYFLOAT would add in long double and
// drift from it in the last digits).

// runReply is shared by both run scripts; see decodeReply for the layout.
const runReply = `
local function reply(outcome, limit, prior)
  local v = redis.call('HMGET', KEYS[1], 'calls', 'writes', 'cost', 'risk', 'ss', 'sn')
  return {outcome, tostring(limit), v[1] or '0', v[2] or '0', v[3] or '0', v[4] or '0',
    v[5] or '', v[6] or '', redis.call('LRANGE', KEYS[2], 0, -1), prior or ''}
end
`

// commitScript mirrors Memory.Commit: duplicate, then version, then the
// limits of Exceeds (same order, same epsilon).
//
// The run's version is its 'calls' counter: every commit adds exactly one and
// nothing else changes it, so it is the number of commits by definition. Not a
// field of its own, so runs written before versions existed (and commits by a
// replica that predates them, during a rolling upgrade) keep it right.
//
// KEYS: state hash, steps list, request-id hash, request-id order list.
// ARGV[20]: the expected version, or -1 for any.
var commitScript = redis.NewScript(runReply + `
local field = ARGV[1]
local prior = redis.call('HGET', KEYS[3], field)
if prior then return reply('dup', 0, prior) end

local v = redis.call('HMGET', KEYS[1], 'calls', 'writes', 'cost', 'risk', 'ss', 'sn')
local calls, writes = tonumber(v[1] or '0'), tonumber(v[2] or '0')
local expect = tonumber(ARGV[20])
if expect >= 0 and calls ~= expect then return reply('stale', 0, nil) end
local cost, risk = tonumber(v[3] or '0'), tonumber(v[4] or '0')
local maxCalls, maxWrites, maxCost = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local maxRisk, eps = tonumber(ARGV[10]), tonumber(ARGV[11])
local write = ARGV[12] == '1'
local stepCost, stepRisk = tonumber(ARGV[13]), tonumber(ARGV[14])

local limit = 0
if maxCalls > 0 and calls + 1 > maxCalls then
  limit = 1
elseif maxWrites > 0 and write and writes + 1 > maxWrites then
  limit = 2
elseif maxCost > 0 and cost + stepCost > maxCost then
  limit = 3
end
if limit == 0 and ARGV[8] ~= '' and ARGV[2] == '1' and v[5] then
  local ds = tonumber(ARGV[3]) - tonumber(v[5])
  local dn = tonumber(ARGV[4]) - tonumber(v[6])
  if dn < 0 then ds, dn = ds - 1, dn + 1000000000 end
  local ms, mn = tonumber(ARGV[8]), tonumber(ARGV[9])
  if ds > ms or (ds == ms and dn > mn) then limit = 4 end
end
if limit == 0 and maxRisk > 0 and risk + stepRisk > maxRisk + eps then
  limit = 5
end
if limit ~= 0 then return reply('refused', limit, nil) end

if not v[5] and ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'ss', ARGV[3], 'sn', ARGV[4])
end
redis.call('HINCRBY', KEYS[1], 'calls', 1)
if write then redis.call('HINCRBY', KEYS[1], 'writes', 1) end
if stepCost ~= 0 then redis.call('HINCRBY', KEYS[1], 'cost', ARGV[13]) end
local total = string.format('%.17g', risk + stepRisk)
redis.call('HSET', KEYS[1], 'risk', total)

local window = tonumber(ARGV[17])
redis.call('RPUSH', KEYS[2], ARGV[15])
redis.call('LTRIM', KEYS[2], -window, -1)

redis.call('HSET', KEYS[3], field, total .. '|' .. ARGV[16])
if redis.call('RPUSH', KEYS[4], field) > tonumber(ARGV[18]) then
  redis.call('HDEL', KEYS[3], redis.call('LPOP', KEYS[4]))
end

local ttl = ARGV[19]
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ttl) end
return reply('ok', 0, nil)
`)

// loadScript reads a run and, when ARGV[1] is not empty, the prior of that
// request id. KEYS: state hash, steps list, request-id hash.
var loadScript = redis.NewScript(runReply + `
local prior = nil
if ARGV[1] ~= '' then prior = redis.call('HGET', KEYS[3], ARGV[1]) or nil end
return reply('', 0, prior)
`)

// Approvals live in four hashes under one hash tag so a listing is one slot:
// body (the approval as created, JSON), status, decision (JSON of who/when/why)
// and exp (a sorted set of expiry times in ms of the store's clock). Expired
// entries are swept lazily, a bounded number per call.
const approvalLib = `
local function gone(id)
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

// ARGV: id, body, status, now ms, expiry ms, ttl ms.
var approvalCreateScript = redis.NewScript(approvalLib + `
local id, now = ARGV[1], ARGV[4]
sweep(now)
if alive(id, now) then return 'conflict' end
gone(id)
redis.call('HSET', KEYS[1], id, ARGV[2])
redis.call('HSET', KEYS[2], id, ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[5], id)
for i = 1, 4 do keep(KEYS[i], ARGV[6]) end
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
redis.call('HSET', KEYS[2], id, ARGV[3])
redis.call('HSET', KEYS[3], id, ARGV[4])
keep(KEYS[3], redis.call('PTTL', KEYS[1]))
return {'ok', a[1], ARGV[3], ARGV[4]}
`)

// ARGV: id, now ms, plan hash. The plan hash is read from the stored body.
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
