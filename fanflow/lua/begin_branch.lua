-- begin_branch: decide whether a delivered branch message should run.
-- KEYS[1] meta hash        KEYS[2] rounds hash     KEYS[3] deliveries hash
-- KEYS[4] cancel flag      KEYS[5] running zset    KEYS[6] events stream
-- ARGV[1] branch key       ARGV[2] round           ARGV[3] delivery cap
-- ARGV[4] now (seconds)    ARGV[5] max concurrency (0 = unlimited)
-- ARGV[6] lease ttl (s)    ARGV[7] events maxlen   ARGV[8] key ttl (s)
-- Returns {verdict, deliveries[, cancel reason]}; verdict is one of
--   run | missing (job unknown or expired) | stale (an older round) | done (already recorded)
--   cancelled | wait (max_concurrency reached; not counted as a delivery) | capped (too many deliveries)
local key, round = ARGV[1], tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing', 0} end
local current = tonumber(redis.call('HGET', KEYS[1], 'round') or '0')
if round < current then return {'stale', 0} end
local recorded = redis.call('HGET', KEYS[2], key)
if recorded and tonumber(recorded) >= round then return {'done', 0} end
local reason = redis.call('GET', KEYS[4])
if reason then return {'cancelled', 0, reason} end
local now = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
  if not redis.call('ZSCORE', KEYS[5], key) and redis.call('ZCARD', KEYS[5]) >= limit then
    return {'wait', 0}
  end
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[6]), key)
  redis.call('EXPIRE', KEYS[5], ARGV[8])
end
local deliveries = redis.call('HINCRBY', KEYS[3], key .. ':' .. round, 1)
redis.call('EXPIRE', KEYS[3], ARGV[8])
if deliveries > tonumber(ARGV[3]) then return {'capped', deliveries} end
if redis.call('HGET', KEYS[1], 'status') == 'pending' then
  redis.call('HSET', KEYS[1], 'status', 'running')
end
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[7], '*', 'type', 'started', 'key', key, 'round', round)
return {'run', deliveries}
