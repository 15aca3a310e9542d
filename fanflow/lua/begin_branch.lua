-- begin_branch: decide whether a delivered branch message should run, and if so take its lease.
-- KEYS[1] meta hash        KEYS[2] rounds hash     KEYS[3] deliveries hash   KEYS[4] cancel flag
-- KEYS[5] leases zset      KEYS[6] events stream   KEYS[7] owners hash       KEYS[8] queued set
-- KEYS[9] started hash (branch key -> when this delivery began running, ms)
-- ARGV[1] branch key       ARGV[2] round           ARGV[3] delivery cap
-- ARGV[4] delivery token   ARGV[5] max concurrency (0 = unlimited)
-- ARGV[6] lease ttl (ms)   ARGV[7] events maxlen   ARGV[8] key ttl (s)
-- Times are Redis server time (ms), never a worker's clock.
-- Returns {verdict, deliveries[, cancel reason]}; verdict is one of
--   run | missing (job unknown or expired) | stale (an older round) | done (already recorded)
--   running (another live delivery holds the lease: this one is a duplicate)
--   cancelled | wait (max_concurrency reached; not counted) | capped (too many deliveries)
local key, round = ARGV[1], tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing', 0} end
local current = tonumber(redis.call('HGET', KEYS[1], 'round') or '0')
if round < current then return {'stale', 0} end
local recorded = redis.call('HGET', KEYS[2], key)
if recorded and tonumber(recorded) >= round then return {'done', 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = tonumber(redis.call('ZSCORE', KEYS[5], key) or '0')
local held = expiry > now
if held and redis.call('HGET', KEYS[7], key) ~= ARGV[4] then return {'running', 0} end
local reason = redis.call('GET', KEYS[4])
if reason then
  redis.call('SREM', KEYS[8], key)
  return {'cancelled', 0, reason}
end
local limit = tonumber(ARGV[5])
if limit > 0 and not held then
  local live = redis.call('ZCOUNT', KEYS[5], '(' .. now, '+inf')
  local merge = tonumber(redis.call('ZSCORE', KEYS[5], '#merge') or '0')
  if merge > now then live = live - 1 end
  if live >= limit then return {'wait', 0} end
end
local deliveries = redis.call('HINCRBY', KEYS[3], key .. ':' .. round, 1)
redis.call('EXPIRE', KEYS[3], ARGV[8])
redis.call('SREM', KEYS[8], key)
if deliveries > tonumber(ARGV[3]) then
  redis.call('ZREM', KEYS[5], key)
  redis.call('HDEL', KEYS[7], key)
  return {'capped', deliveries}
end
redis.call('ZADD', KEYS[5], now + tonumber(ARGV[6]), key)
redis.call('HSET', KEYS[7], key, ARGV[4])
for i = 5, 7, 2 do redis.call('EXPIRE', KEYS[i], ARGV[8]) end
redis.call('HSET', KEYS[1], 'last_begin_at', now)
redis.call('HSET', KEYS[9], key, now)
redis.call('EXPIRE', KEYS[9], ARGV[8])
if redis.call('HGET', KEYS[1], 'status') == 'pending' then
  redis.call('HSET', KEYS[1], 'status', 'running')
end
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[7], '*', 'type', 'started', 'key', key, 'round', round)
return {'run', deliveries}
