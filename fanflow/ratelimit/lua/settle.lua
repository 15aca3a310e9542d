-- settle: after the call, correct its token reservation to the real usage and free its lease;
-- or, for a failed call, give the reservation back.
-- KEYS, 4 per limit key (in this order): tokens zset, amounts hash, totals hash, leases zset
-- ARGV[1] admission id   ARGV[2] 'settle' or 'release'
-- ARGV[3] real input tokens   ARGV[4] real output tokens (settle only)
-- The request stays in the requests log either way (a start is a start). A token entry that
-- already left the window is not brought back. Returns the number of token entries changed.
local id, release = ARGV[1], ARGV[2] == 'release'
local real_in, real_out = tonumber(ARGV[3]), tonumber(ARGV[4])
local changed = 0
for k = 1, #KEYS, 4 do
  redis.call('ZREM', KEYS[k + 3], id)
  local v = redis.call('HGET', KEYS[k + 1], id)
  if v then
    local a, b = string.match(v, '^(%d+):(%d+)$')
    a, b = tonumber(a) or 0, tonumber(b) or 0
    if release then
      redis.call('ZREM', KEYS[k], id)
      redis.call('HDEL', KEYS[k + 1], id)
      redis.call('HINCRBY', KEYS[k + 2], 'in', 0 - a)
      redis.call('HINCRBY', KEYS[k + 2], 'out', 0 - b)
    else
      redis.call('HSET', KEYS[k + 1], id, real_in .. ':' .. real_out)
      redis.call('HINCRBY', KEYS[k + 2], 'in', real_in - a)
      redis.call('HINCRBY', KEYS[k + 2], 'out', real_out - b)
    end
    changed = changed + 1
  end
end
return changed
