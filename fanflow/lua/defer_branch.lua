-- defer_branch: give back a branch that began but could not be admitted by its limits; its
-- message is sent again with a countdown. Neither a delivery nor an attempt is counted.
-- KEYS[1] leases zset   KEYS[2] owners hash   KEYS[3] deliveries hash   KEYS[4] queued set
-- KEYS[5] sent hash
-- ARGV[1] branch key    ARGV[2] round   ARGV[3] delivery token   ARGV[4] countdown (ms)
-- Returns 1 when this delivery held the branch, 0 otherwise (nothing changed).
local key = ARGV[1]
if redis.call('HGET', KEYS[2], key) ~= ARGV[3] then return 0 end
redis.call('ZREM', KEYS[1], key)
redis.call('HDEL', KEYS[2], key)
redis.call('HINCRBY', KEYS[3], key .. ':' .. ARGV[2], -1)
redis.call('SADD', KEYS[4], key)
-- The sweeper leaves it alone until its countdown is over (its message waits in a worker).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[5], key, now + tonumber(ARGV[4]))
return 1
