-- observe: correct a limit key's shared state with what the provider's rate-limit headers say.
-- KEYS[1] config hash   KEYS[2] requests zset   KEYS[3] tokens zset   KEYS[4] amounts hash
-- KEYS[5] totals hash   KEYS[6] leases zset     KEYS[7] cooldown      KEYS[8] debt hash
-- ARGV[1] cool-down asked for (ms, from retry-after; -1 none)
-- then for each dimension d = 1..4 (requests, tokens, input_tokens, output_tokens), 3 values:
--   ARGV[3d - 1] remaining (-1 unknown)   ARGV[3d] reset in (ms, -1 unknown)
--   ARGV[3d + 1] reset at (ms since the epoch, -1 unknown; wins over reset in)
-- Per dimension: remaining 0 with a reset ahead cools the key down until the reset (limit or not);
-- with a limit configured, remaining below our own headroom (limit - our usage in the window)
-- records the difference as debt until the reset (no reset given: one window), counted by every
-- acquire; remaining at or above our headroom clears that debt. The debt replaces the previous
-- one, so observing the same headers twice counts once. Returns the cool-down left (ms).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function cool(ms)
  if ms > 0 and redis.call('PTTL', KEYS[7]) < ms then redis.call('SET', KEYS[7], '1', 'PX', ms) end
end
cool(tonumber(ARGV[1]))

local c = redis.call('HMGET', KEYS[1], 'requests', 'tokens', 'input_tokens', 'output_tokens', 'window_ms')
local window = tonumber(c[5] or '0')
local own = {0, 0, 0, 0}
if c[5] then
  local cutoff = now - window
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
  own[1] = redis.call('ZCARD', KEYS[2])
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
  local tot = redis.call('HMGET', KEYS[5], 'in', 'out')
  local i, o = tonumber(tot[1] or '0'), tonumber(tot[2] or '0')
  own[2], own[3], own[4] = i + o, i, o
end

local NAMES = {'requests', 'tokens', 'input_tokens', 'output_tokens'}
for d = 1, 4 do
  local remaining = tonumber(ARGV[3 * d - 1])
  if remaining >= 0 then
    local reset_in, reset_at = tonumber(ARGV[3 * d]), tonumber(ARGV[3 * d + 1])
    local until_ = -1
    if reset_at >= 0 then until_ = reset_at elseif reset_in >= 0 then until_ = now + reset_in end
    local limit = tonumber(c[d])
    if remaining == 0 and until_ > now then
      cool(until_ - now)
    elseif limit then
      if until_ <= now then until_ = now + window end
      local debt = (limit - own[d]) - remaining
      if debt > 0 then
        redis.call('HSET', KEYS[8], NAMES[d], debt, NAMES[d] .. '_until', until_)
      else
        redis.call('HDEL', KEYS[8], NAMES[d], NAMES[d] .. '_until')
      end
    end
  end
end

local untils = redis.call('HMGET', KEYS[8], 'requests_until', 'tokens_until', 'input_tokens_until',
  'output_tokens_until')
local last = 0
for d = 1, 4 do last = math.max(last, tonumber(untils[d] or '0')) end
if last > now then
  redis.call('PEXPIRE', KEYS[8], last - now + 1000)
else
  redis.call('DEL', KEYS[8])
end
return math.max(redis.call('PTTL', KEYS[7]), 0)
