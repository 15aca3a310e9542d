-- record_outcome: store a branch's final outcome exactly once per (branch, round); drop its lease.
-- KEYS[1] meta hash     KEYS[2] rounds hash    KEYS[3] outcomes hash   KEYS[4] leases zset
-- KEYS[5] events stream KEYS[6] cancel flag    KEYS[7] owners hash     KEYS[8] queued set
-- ARGV[1] branch key    ARGV[2] round          ARGV[3] outcome JSON     ARGV[4] status
-- ARGV[5] '1' to cancel the siblings when this outcome is a failure (all_or_nothing)
-- ARGV[6] key ttl (s)   ARGV[7] events maxlen  ARGV[8] error summary (for the job's first error)
-- ARGV[9] delivery token (its lease is dropped; another delivery's live lease is left alone)
-- KEYS[9] the job's usage hash; ARGV[10] how many models' spend this outcome brings (0: none, its
--   calls were counted one by one), then per model: name, input, output, cached tokens, cost
--   (nano-USD), calls — counted here, once, with the outcome
-- A pipeline's node (KEYS[10] pending hash, KEYS[11] sent hash) then gives, from ARGV[p] where
--   p = 11 + 6 * models: how many successors it releases (a succeeded node; 0 otherwise) and their
--   names; then how many nodes it stops and, per node, its name and the outcome JSON it gets
--   (skipped, blocked or cancelled) — written unless the node already has this round's outcome, is
--   queued or holds a lease (those record their own).
-- Returns {recorded, complete, ready...}: recorded 1, or 0 for a duplicate (a redelivered or stale
--   message, which changes nothing); complete 1 when this call gave the round its last outcome;
--   ready: the released nodes whose every dependency is now done (marked queued and sent: the
--   caller sends them).
local key, round = ARGV[1], tonumber(ARGV[2])
local owner = redis.call('HGET', KEYS[7], key)
if not owner or owner == ARGV[9] then
  redis.call('ZREM', KEYS[4], key)
  redis.call('HDEL', KEYS[7], key)
end
local recorded = redis.call('HGET', KEYS[2], key)
if recorded and tonumber(recorded) >= round then return {0, 0} end
if round < tonumber(redis.call('HGET', KEYS[1], 'round') or '0') then return {0, 0} end
local size = tonumber(redis.call('HGET', KEYS[1], 'size') or '0')
local before = tonumber(redis.call('HGET', KEYS[1], 'done') or '0')
redis.call('SREM', KEYS[8], key)
redis.call('HSET', KEYS[2], key, round)
redis.call('HSET', KEYS[3], key, ARGV[3])
redis.call('HINCRBY', KEYS[1], 'done', 1)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'last_outcome_at', now)
if ARGV[4] == 'failed' then
  redis.call('HINCRBY', KEYS[1], 'failed', 1)
  redis.call('HSETNX', KEYS[1], 'first_error', ARGV[8])
  if ARGV[5] == '1' then
    redis.call('SET', KEYS[6], 'failure', 'NX', 'EX', ARGV[6])
  end
end
for i = 2, 3 do redis.call('EXPIRE', KEYS[i], ARGV[6]) end
local fields = {'in', 'out', 'cached', 'cost', 'calls'}
for m = 0, tonumber(ARGV[10] or '0') - 1 do
  local base = 11 + m * 6
  for f = 1, 5 do
    redis.call('HINCRBY', KEYS[9], ARGV[base] .. '|' .. fields[f], tonumber(ARGV[base + f]))
  end
  redis.call('EXPIRE', KEYS[9], ARGV[6])
end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*', 'type', 'finished', 'key', key, 'round', round,
  'status', ARGV[4])
local ready = {}
local p = 11 + 6 * tonumber(ARGV[10] or '0')
if KEYS[10] then
  local function has_outcome(node)
    local at = redis.call('HGET', KEYS[2], node)
    return at and tonumber(at) >= round
  end
  local released = tonumber(ARGV[p])
  for i = p + 1, p + released do
    local node = ARGV[i]
    if redis.call('HINCRBY', KEYS[10], node, -1) == 0 and not has_outcome(node) then
      ready[#ready + 1] = node
      redis.call('SADD', KEYS[8], node)
      redis.call('HSET', KEYS[11], node, now)
    end
  end
  p = p + released + 1
  for i = p + 1, p + 2 * tonumber(ARGV[p]), 2 do
    local node = ARGV[i]
    if not has_outcome(node) and redis.call('SISMEMBER', KEYS[8], node) == 0
        and not redis.call('ZSCORE', KEYS[4], node) then
      local status = cjson.decode(ARGV[i + 1])['status']
      redis.call('HSET', KEYS[2], node, round)
      redis.call('HSET', KEYS[3], node, ARGV[i + 1])
      redis.call('HINCRBY', KEYS[1], 'done', 1)
      redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*', 'type', 'finished', 'key', node, 'round', round,
        'status', status)
    end
  end
  for i = 10, 11 do redis.call('EXPIRE', KEYS[i], ARGV[6]) end
end
local done = tonumber(redis.call('HGET', KEYS[1], 'done'))
local complete = (done >= size and before < size) and 1 or 0
return {1, complete, unpack(ready)}
