-- renew_leases: a worker's heartbeat extends the leases it still holds on one job.
-- KEYS[1] leases zset   KEYS[2] owners hash
-- ARGV[1] lease ttl (ms), then pairs: ARGV[2k] member (branch key or '#merge'), ARGV[2k+1] token
-- A lease is renewed only while this delivery owns it and it is still there (not recorded).
-- Returns the members whose lease this worker no longer holds.
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  local member, token = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', KEYS[2], member) == token then
    redis.call('ZADD', KEYS[1], 'XX', expiry, member)
  else
    lost[#lost + 1] = member
  end
end
return lost
