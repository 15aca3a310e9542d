-- status: what one limit key holds right now (trims the window logs and lapsed leases first).
-- KEYS[1] config hash   KEYS[2] requests zset   KEYS[3] tokens zset   KEYS[4] amounts hash
-- KEYS[5] totals hash   KEYS[6] leases zset     KEYS[7] cooldown      KEYS[8] debt hash
-- Returns {requests, input tokens, output tokens, in flight, cool-down left (ms),
--   then the live debt of requests, tokens, input_tokens, output_tokens} (Redis server time);
--   an empty list when the key has no limit.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = redis.call('HGET', KEYS[1], 'window_ms')
if not window then return {} end
local cutoff = now - tonumber(window)
while true do
  local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', cutoff, 'LIMIT', 0, 100)
  if #old == 0 then break end
  local vals = redis.call('HMGET', KEYS[4], unpack(old))
  local din, dout = 0, 0
  for i = 1, #old do
    local a, b = string.match(vals[i] or '0:0', '^(%d+):(%d+)$')
    din, dout = din + (tonumber(a) or 0), dout + (tonumber(b) or 0)
  end
  redis.call('ZREM', KEYS[3], unpack(old))
  redis.call('HDEL', KEYS[4], unpack(old))
  redis.call('HINCRBY', KEYS[5], 'in', 0 - din)
  redis.call('HINCRBY', KEYS[5], 'out', 0 - dout)
  if #old < 100 then break end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
local tot = redis.call('HMGET', KEYS[5], 'in', 'out')
local out = {
  redis.call('ZCARD', KEYS[2]), tonumber(tot[1] or '0'), tonumber(tot[2] or '0'),
  redis.call('ZCARD', KEYS[6]), math.max(redis.call('PTTL', KEYS[7]), 0),
}
local debt = redis.call('HMGET', KEYS[8], 'requests', 'requests_until', 'tokens', 'tokens_until',
  'input_tokens', 'input_tokens_until', 'output_tokens', 'output_tokens_until')
for d = 1, 4 do
  if tonumber(debt[2 * d] or '0') > now then
    out[#out + 1] = tonumber(debt[2 * d - 1] or '0')
  else
    out[#out + 1] = 0
  end
end
return out
