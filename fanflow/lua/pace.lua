-- pace: give each job its own place in line on a busy limit key, so a small job is not starved
-- behind a big one (per-job virtual clocks, as in fair queueing).
-- KEYS[1] the job's pace hash (limit key -> next slot of this job, ms)   KEYS[2] the job's sent hash
-- ARGV[1] mode: 'first' (a branch's first try: wait for the job's place in line, if it has one
--         ahead) or 'refused' (the limits refused it: take the job's next place after `wait`)
-- ARGV[2] wait (ms, 'refused')   ARGV[3] key ttl (s)   ARGV[4] branch key
-- ARGV[5..] pairs: limit key, spacing (ms) — one place in line per spacing on that key
-- Returns the countdown (ms) to the branch's place, or -1 ('first' with no line ahead).
-- A branch sent away until its place is marked sent at that time, so the sweeper leaves it alone.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local slot = now
if ARGV[1] == 'refused' then slot = now + tonumber(ARGV[2]) end
local ahead = false
for i = 5, #ARGV, 2 do
  local next_ = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if next_ > slot then slot = next_ end
  if next_ > now then ahead = true end
end
if ARGV[1] == 'first' and not ahead then return -1 end
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], slot + tonumber(ARGV[i + 1]))
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
if slot > now then redis.call('HSET', KEYS[2], ARGV[4], slot) end
return slot - now
