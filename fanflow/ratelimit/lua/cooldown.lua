-- cooldown: refuse every acquire on a limit key until the cool-down ends (a provider's 429).
-- KEYS[1] cooldown string   ARGV[1] duration (ms)
-- A cool-down only ever grows: a shorter one than what is left changes nothing.
-- Returns what is left of the cool-down (ms).
local ms = tonumber(ARGV[1])
local left = redis.call('PTTL', KEYS[1])
if ms > 0 and left < ms then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
  return ms
end
return math.max(left, 0)
