-- acquire: admit one call on every limit key it consumes, all or none, or say how long to wait.
-- KEYS, 8 per limit key (in this order): config hash, requests zset, tokens zset, amounts hash,
--   totals hash, leases zset, cooldown string, debt hash (see fanflow/ratelimit/keys.py)
-- ARGV[1] admission id       ARGV[2] lease ttl (ms)     ARGV[3] input tokens to reserve
-- ARGV[4] output tokens to reserve                     ARGV[5] wait hint (ms) when concurrency binds
--   (or when tokens bind while calls in flight hold reservations that will settle)
-- ARGV[6] most token-log entries a refusal scans for its wait time
-- Times are Redis server time (ms). A key without a config hash has no limit: only its cool-down
-- applies. An entry of the requests/tokens log counts while its score > now - window.
-- Returns {1, lease expiry (ms), now (ms), index of each limited key (1-based)...} when admitted,
--   {0, index of the key, reason code, wait (ms)} when refused: the longest wait over every limit
--   that refuses (the earliest time all of them admit). Reason codes: 1 requests, 2 tokens,
--   3 input_tokens, 4 output_tokens, 5 concurrency, 6 cooldown.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, lease = ARGV[1], tonumber(ARGV[2])
local need_in, need_out = tonumber(ARGV[3]), tonumber(ARGV[4])
local conc_wait, scan_cap = tonumber(ARGV[5]), tonumber(ARGV[6])
local BATCH = 100

local function parse(v)
  if not v then return 0, 0 end
  local a, b = string.match(v, '^(%d+):(%d+)$')
  return tonumber(a) or 0, tonumber(b) or 0
end

-- drop the token entries that left the window, and their amounts from the running totals
local function trim_tokens(k, cutoff)
  while true do
    local old = redis.call('ZRANGEBYSCORE', KEYS[k + 2], '-inf', cutoff, 'LIMIT', 0, BATCH)
    if #old == 0 then return end
    local vals = redis.call('HMGET', KEYS[k + 3], unpack(old))
    local din, dout = 0, 0
    for i = 1, #old do
      local a, b = parse(vals[i])
      din, dout = din + a, dout + b
    end
    redis.call('ZREM', KEYS[k + 2], unpack(old))
    redis.call('HDEL', KEYS[k + 3], unpack(old))
    redis.call('HINCRBY', KEYS[k + 4], 'in', 0 - din)
    redis.call('HINCRBY', KEYS[k + 4], 'out', 0 - dout)
    if #old < BATCH then return end
  end
end

-- when the f-th oldest request leaves the window (absolute ms), nil when there is none
local function nth_leaves(k, f, window)
  local e = redis.call('ZRANGE', KEYS[k + 1], f - 1, f - 1, 'WITHSCORES')
  if #e == 0 then return nil end
  return tonumber(e[2]) + window
end

-- when the oldest token entries that add up to f (of dimension sel) have left the window;
-- a lower bound when more than scan_cap entries would have to be read; nil when they never add up
local function amount_leaves(k, f, sel, window)
  local start, acc, last = 0, 0, nil
  while start < scan_cap do
    local e = redis.call('ZRANGE', KEYS[k + 2], start, start + BATCH - 1, 'WITHSCORES')
    if #e == 0 then return nil end
    local ids = {}
    for i = 1, #e, 2 do ids[#ids + 1] = e[i] end
    local vals = redis.call('HMGET', KEYS[k + 3], unpack(ids))
    for i = 1, #ids do
      local a, b = parse(vals[i])
      acc = acc + sel(a, b)
      last = tonumber(e[2 * i]) + window
      if acc >= f then return last end
    end
    start = start + BATCH
  end
  return last
end

-- the earliest time at which `own + debt + need <= limit` holds: own entries leave the window
-- (f = the excess), or the debt lapses at `debt_until` and fewer own entries must leave
local function earliest(excess, debt, debt_until, leaves)
  local best = leaves(excess)
  if debt > 0 then
    local rest = excess - debt
    local after = debt_until
    if rest > 0 then
      local own = leaves(rest)
      after = own and math.max(own, debt_until) or nil
    end
    if after and (not best or after < best) then best = after end
  end
  return best
end

local function total(a, b) return a + b end
local function input(a, _) return a end
local function output(_, b) return b end
local DIMS = {
  {field = 2, reason = 2, name = 'tokens', sel = total, need = need_in + need_out},
  {field = 3, reason = 3, name = 'input_tokens', sel = input, need = need_in},
  {field = 4, reason = 4, name = 'output_tokens', sel = output, need = need_out},
}

local n = #KEYS / 8
local best_wait, best_idx, best_reason = -1, 0, 0
local admitted, plans = {}, {}
local function refuse(j, reason, at)
  local w = at - now
  if w < 1 then w = 1 end
  if w > best_wait then best_wait, best_idx, best_reason = w, j, reason end
end

for j = 1, n do
  local k = (j - 1) * 8 + 1
  local cd = redis.call('PTTL', KEYS[k + 6])
  if cd > 0 then refuse(j, 6, now + cd) end
  local c = redis.call('HMGET', KEYS[k], 'requests', 'tokens', 'input_tokens', 'output_tokens',
    'concurrency', 'window_ms')
  if c[6] then
    local window = tonumber(c[6])
    local cutoff = now - window
    local has_tokens = (c[2] or c[3] or c[4]) and true or false
    local debt = nil
    if c[1] or has_tokens then
      debt = redis.call('HMGET', KEYS[k + 7], 'requests', 'requests_until', 'tokens', 'tokens_until',
        'input_tokens', 'input_tokens_until', 'output_tokens', 'output_tokens_until')
    end
    local function debt_of(d)
      local until_ = tonumber(debt[2 * d] or '0')
      if until_ <= now then return 0, 0 end
      return tonumber(debt[2 * d - 1] or '0'), until_
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 1], '-inf', cutoff)
    if c[1] then
      local limit = tonumber(c[1])
      local count = redis.call('ZCARD', KEYS[k + 1])
      local d, d_until = debt_of(1)
      if count + d + 1 > limit then
        local at = earliest(count + d + 1 - limit, d, d_until, function(f)
          if f > count then return nil end
          return nth_leaves(k, f, window)
        end)
        refuse(j, 1, at or (now + window))
      end
    end
    if has_tokens then
      trim_tokens(k, cutoff)
      local tot = redis.call('HMGET', KEYS[k + 4], 'in', 'out')
      local own_in, own_out = tonumber(tot[1] or '0'), tonumber(tot[2] or '0')
      for dn, dim in ipairs(DIMS) do
        local limit = tonumber(c[dim.field])
        if limit then
          local own = dim.sel(own_in, own_out)
          local need = math.min(dim.need, limit)
          local d, d_until = debt_of(dn + 1)
          if own + d + need > limit then
            local at = earliest(own + d + need - limit, d, d_until, function(f)
              if f > own then return nil end
              return amount_leaves(k, f, dim.sel, window)
            end)
            at = at or (now + window)
            -- Calls in flight hold reservations (prompt + max_tokens) that shrink to their real
            -- usage when they settle: look again soon rather than when the window ages them out.
            if at > now + conc_wait and redis.call('ZCOUNT', KEYS[k + 5], now, '+inf') > 0 then
              at = now + conc_wait
            end
            refuse(j, dim.reason, at)
          end
        end
      end
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 5], '-inf', now)
    if c[5] then
      local in_flight = redis.call('ZCARD', KEYS[k + 5])
      if in_flight + 1 > tonumber(c[5]) then
        local e = redis.call('ZRANGE', KEYS[k + 5], 0, 0, 'WITHSCORES')
        local at = now + conc_wait
        if #e > 0 then at = math.min(at, tonumber(e[2])) end
        refuse(j, 5, at)
      end
    end
    admitted[#admitted + 1] = j
    plans[#plans + 1] = {k, window, has_tokens}
  end
end

if best_idx > 0 then return {0, best_idx, best_reason, best_wait} end

local expiry = now + lease
for _, p in ipairs(plans) do
  local k, window, has_tokens = p[1], p[2], p[3]
  redis.call('ZADD', KEYS[k + 1], now, id)
  redis.call('PEXPIRE', KEYS[k + 1], window + 1000)
  if has_tokens then
    redis.call('ZADD', KEYS[k + 2], now, id)
    redis.call('HSET', KEYS[k + 3], id, need_in .. ':' .. need_out)
    redis.call('HINCRBY', KEYS[k + 4], 'in', need_in)
    redis.call('HINCRBY', KEYS[k + 4], 'out', need_out)
    for i = 2, 4 do redis.call('PEXPIRE', KEYS[k + i], window + 1000) end
  end
  redis.call('ZADD', KEYS[k + 5], expiry, id)
  if redis.call('PTTL', KEYS[k + 5]) < lease + 1000 then
    redis.call('PEXPIRE', KEYS[k + 5], lease + 1000)
  end
end
local out = {1, expiry, now}
for _, j in ipairs(admitted) do out[#out + 1] = j end
return out
