-- record_spend: count what one call spent, once, in the job's usage (per model) and budget.
-- KEYS[1] usage hash    KEYS[2] budget hash    KEYS[3] reservations zset   KEYS[4] events stream
-- ARGV[1] model         ARGV[2] input tokens   ARGV[3] output tokens       ARGV[4] cached tokens
-- ARGV[5] cost (nano-USD) ARGV[6] calls        ARGV[7] reservation id ('' when none)
-- ARGV[8] key ttl (s)   ARGV[9] events maxlen  ARGV[10] branch key (or '#merge')
-- A reservation that lapsed meanwhile (given back by reserve_budget) is not given back twice.
-- Returns {spent tokens, spent cost} of the budget after this call.
local m = ARGV[1] .. '|'
local input, output = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('HINCRBY', KEYS[1], m .. 'in', input)
redis.call('HINCRBY', KEYS[1], m .. 'out', output)
redis.call('HINCRBY', KEYS[1], m .. 'cached', tonumber(ARGV[4]))
redis.call('HINCRBY', KEYS[1], m .. 'cost', tonumber(ARGV[5]))
redis.call('HINCRBY', KEYS[1], m .. 'calls', tonumber(ARGV[6]))
redis.call('EXPIRE', KEYS[1], ARGV[8])
if ARGV[7] ~= '' then
  local held = redis.call('HGET', KEYS[2], 'r:' .. ARGV[7])
  if held then
    local tokens, cost = string.match(held, '(%d+) (%d+)')
    redis.call('HINCRBY', KEYS[2], 'reserved_tokens', 0 - tonumber(tokens))
    redis.call('HINCRBY', KEYS[2], 'reserved_cost', 0 - tonumber(cost))
    redis.call('HDEL', KEYS[2], 'r:' .. ARGV[7])
    redis.call('ZREM', KEYS[3], ARGV[7])
  end
end
local spent_t = redis.call('HINCRBY', KEYS[2], 'spent_tokens', input + output)
local spent_c = redis.call('HINCRBY', KEYS[2], 'spent_cost', tonumber(ARGV[5]))
redis.call('EXPIRE', KEYS[2], ARGV[8])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[9], '*', 'type', 'spend', 'key', ARGV[10], 'model', ARGV[1],
  'tokens', input + output, 'cost', ARGV[5])
return {spent_t, spent_c}
