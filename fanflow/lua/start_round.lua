-- start_round: open retry round ARGV[1] over ARGV[2] branches, if the job is final and still at
-- round ARGV[1] - 1 (so two concurrent retries cannot both start).
-- KEYS[1] meta hash   KEYS[2] cancel flag   KEYS[3] result string   KEYS[4] events stream
-- ARGV[1] new round   ARGV[2] number of branches in the round   ARGV[3] events maxlen
-- Returns 1 when the round was opened, 0 when the job is not final or another retry won.
local status = redis.call('HGET', KEYS[1], 'status')
local current = tonumber(redis.call('HGET', KEYS[1], 'round') or '0')
if current ~= tonumber(ARGV[1]) - 1 then return 0 end
if status == false or status == 'pending' or status == 'running' then return 0 end
redis.call('HSET', KEYS[1], 'round', ARGV[1], 'size', ARGV[2], 'done', 0, 'failed', 0, 'status', 'running')
redis.call('HDEL', KEYS[1], 'first_error', 'finished_at')
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'type', 'job', 'status', 'running', 'round', ARGV[1])
return 1
