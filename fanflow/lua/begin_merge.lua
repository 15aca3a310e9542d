-- begin_merge: decide whether a delivered merge message should run, and if so take the merge lease.
-- KEYS[1] meta hash   KEYS[2] leases zset   KEYS[3] owners hash
-- ARGV[1] round       ARGV[2] delivery token   ARGV[3] lease ttl (ms)   ARGV[4] key ttl (s)
-- Returns one of: run | missing | stale (an older round) | done (this round's result is saved)
--   | running (another live delivery is merging: this one is a duplicate)
local round = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
if round < tonumber(redis.call('HGET', KEYS[1], 'round') or '0') then return 'stale' end
if tonumber(redis.call('HGET', KEYS[1], 'merged_round') or '-1') >= round then return 'done' end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = tonumber(redis.call('ZSCORE', KEYS[2], '#merge') or '0')
if expiry > now and redis.call('HGET', KEYS[3], '#merge') ~= ARGV[2] then return 'running' end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), '#merge')
redis.call('HSET', KEYS[3], '#merge', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return 'run'
