-- sweep_job: find what a job needs delivered again: branches whose worker died (lapsed lease),
-- branches sent but never begun while the job stalled (a message lost between the broker's pop
-- and its unacked record), and a merge that never ran or whose worker died.
-- KEYS[1] meta hash   KEYS[2] leases zset   KEYS[3] owners hash   KEYS[4] queued set
-- KEYS[5] sent hash
-- ARGV[1] grace (ms): how long a sent branch or a finished round may wait before it is suspected
-- Returns {state, round, lapsed keys (JSON list), suspect keys (JSON list), merge ('1'|'0')}
-- where state is gone | final | active. Lapsed leases are dropped here and their keys marked
-- queued (they are sent again at once); suspects are only returned (the caller asks the broker
-- whether their messages still exist before sending them again, then marks them sent).
local meta = KEYS[1]
if redis.call('EXISTS', meta) == 0 then return {'gone', 0, '[]', '[]', '0'} end
local round = tonumber(redis.call('HGET', meta, 'round') or '0')
local merged = tonumber(redis.call('HGET', meta, 'merged_round') or '-1')
if merged >= round then return {'final', round, '[]', '[]', '0'} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local grace = tonumber(ARGV[1])
local lapsed, merge = {}, '0'
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('ZREM', KEYS[2], member)
  redis.call('HDEL', KEYS[3], member)
  if member == '#merge' then
    merge = '1'
  else
    lapsed[#lapsed + 1] = member
    redis.call('SADD', KEYS[4], member)
  end
  redis.call('HSET', KEYS[5], member, now)
end
local suspects = {}
local function stamp(field) return tonumber(redis.call('HGET', meta, field) or '0') end
local quiet = math.max(stamp('round_at'), stamp('last_begin_at'), stamp('last_outcome_at'))
if now - quiet > grace then
  for _, key in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    if now - tonumber(redis.call('HGET', KEYS[5], key) or '0') > grace then
      suspects[#suspects + 1] = key
    end
  end
end
local size, done = stamp('size'), stamp('done')
if merge == '0' and done >= size and now - stamp('last_outcome_at') > grace
    and tonumber(redis.call('ZSCORE', KEYS[2], '#merge') or '0') <= now
    and now - tonumber(redis.call('HGET', KEYS[5], '#merge') or '0') > grace then
  merge = '1'
  redis.call('HSET', KEYS[5], '#merge', now)
end
return {'active', round, cjson.encode(lapsed), cjson.encode(suspects), merge}
