-- reserve_budget: reserve one call's estimated spend against the job's budget, or say why not.
-- KEYS[1] budget hash          KEYS[2] reservations zset    KEYS[3] cancel flag
-- ARGV[1] reservation id       ARGV[2] estimated tokens     ARGV[3] estimated cost (nano-USD)
-- ARGV[4] max tokens (-1: none) ARGV[5] max cost (nano-USD, -1: none)
-- ARGV[6] reservation lease (ms) ARGV[7] key ttl (s)
-- Returns {verdict, spent tokens, spent cost}: verdict 1 reserved; 0 wait (the open reservations
-- would pass the budget, but the spend so far leaves room: they settle soon); -1 exhausted (the
-- spend so far plus this estimate passes the budget: the job's cancel flag is set to 'budget').
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Give back reservations whose worker died (their lease lapsed without a settle).
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  local held = redis.call('HGET', KEYS[1], 'r:' .. id)
  if held then
    local tokens, cost = string.match(held, '(%d+) (%d+)')
    redis.call('HINCRBY', KEYS[1], 'reserved_tokens', 0 - tonumber(tokens))
    redis.call('HINCRBY', KEYS[1], 'reserved_cost', 0 - tonumber(cost))
    redis.call('HDEL', KEYS[1], 'r:' .. id)
  end
  redis.call('ZREM', KEYS[2], id)
end
local b = redis.call('HMGET', KEYS[1], 'spent_tokens', 'spent_cost', 'reserved_tokens', 'reserved_cost')
local spent_t, spent_c = tonumber(b[1] or '0'), tonumber(b[2] or '0')
local res_t, res_c = tonumber(b[3] or '0'), tonumber(b[4] or '0')
local est_t, est_c = tonumber(ARGV[2]), tonumber(ARGV[3])
local max_t, max_c = tonumber(ARGV[4]), tonumber(ARGV[5])
-- An estimate of zero (an agent cannot say what it will spend) is refused once the budget is spent.
local function over(spent, est, max)
  if max < 0 then return false end
  if est == 0 then return spent >= max end
  return spent + est > max
end
if over(spent_t, est_t, max_t) or over(spent_c, est_c, max_c) then
  redis.call('SET', KEYS[3], 'budget', 'NX', 'EX', ARGV[7])
  return {-1, spent_t, spent_c}
end
if (max_t >= 0 and spent_t + res_t + est_t > max_t) or (max_c >= 0 and spent_c + res_c + est_c > max_c) then
  return {0, spent_t, spent_c}
end
redis.call('HINCRBY', KEYS[1], 'reserved_tokens', est_t)
redis.call('HINCRBY', KEYS[1], 'reserved_cost', est_c)
redis.call('HSET', KEYS[1], 'r:' .. ARGV[1], est_t .. ' ' .. est_c)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('EXPIRE', KEYS[2], ARGV[7])
return {1, spent_t, spent_c}
