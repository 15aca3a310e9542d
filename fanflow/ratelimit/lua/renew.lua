-- renew: a heartbeat extends the leases (concurrency slots) of calls still in flight.
-- KEYS[i] leases zset of a limit key
-- ARGV[1] lease ttl (ms), ARGV[i + 1] the admission id holding a lease in KEYS[i]
-- A lease that already lapsed (or was settled) is not brought back.
-- Returns the number of leases renewed.
local t = redis.call('TIME')
local lease = tonumber(ARGV[1])
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + lease
local renewed = 0
for i = 1, #KEYS do
  if redis.call('ZSCORE', KEYS[i], ARGV[i + 1]) then
    redis.call('ZADD', KEYS[i], 'XX', expiry, ARGV[i + 1])
    if redis.call('PTTL', KEYS[i]) < lease + 1000 then redis.call('PEXPIRE', KEYS[i], lease + 1000) end
    renewed = renewed + 1
  end
end
return renewed
