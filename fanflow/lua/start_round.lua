-- start_round: open retry round ARGV[1] over the branches listed in ARGV[4], if the job is final and
-- still at round ARGV[1] - 1 (so two concurrent retries cannot both start).
-- KEYS[1] meta hash   KEYS[2] cancel flag   KEYS[3] result string   KEYS[4] events stream
-- KEYS[5] queued set  KEYS[6] sent hash     KEYS[7] pending hash (a pipeline's)
-- ARGV[1] new round   ARGV[2] events maxlen   ARGV[3] key ttl (s)
-- ARGV[4] the round's branch keys as a JSON list (kept for the sweeper)
-- ARGV[5] a pipeline's pending counts of the round's nodes as a JSON object ('{}' for a fan-out)
-- ARGV[6..] the keys sent now (a fan-out: every one; a pipeline: the nodes with nothing pending)
-- Returns 1 when the round was opened, 0 when the job is not final or another retry won.
local status = redis.call('HGET', KEYS[1], 'status')
local current = tonumber(redis.call('HGET', KEYS[1], 'round') or '0')
if current ~= tonumber(ARGV[1]) - 1 then return 0 end
if status == false or status == 'pending' or status == 'running' then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'round', ARGV[1], 'size', #cjson.decode(ARGV[4]), 'done', 0, 'failed', 0,
  'status', 'running', 'round_keys', ARGV[4], 'round_at', now)
redis.call('HDEL', KEYS[1], 'first_error', 'finished_at')
redis.call('DEL', KEYS[2], KEYS[3], KEYS[5], KEYS[6], KEYS[7])
for node, count in pairs(cjson.decode(ARGV[5])) do
  redis.call('HSET', KEYS[7], node, count)
end
redis.call('EXPIRE', KEYS[7], ARGV[3])
for i = 6, #ARGV, 1000 do
  redis.call('SADD', KEYS[5], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('EXPIRE', KEYS[5], ARGV[3])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*', 'type', 'job', 'status', 'running', 'round', ARGV[1])
return 1
