-- save_result: store a round's merged result once, finish the job's status and wake every waiter.
-- KEYS[1] meta hash   KEYS[2] result string   KEYS[3] final stream   KEYS[4] events stream
-- KEYS[5] leases zset KEYS[6] owners hash
-- ARGV[1] round       ARGV[2] JobResult JSON  ARGV[3] status   ARGV[4] key ttl (s)
-- ARGV[5] events maxlen   ARGV[6] finished_at (the result's own timestamp)
-- Returns 1 when saved, 0 when this round (or a newer one) already has its result.
local round = tonumber(ARGV[1])
if tonumber(redis.call('HGET', KEYS[1], 'merged_round') or '-1') >= round then return 0 end
if round < tonumber(redis.call('HGET', KEYS[1], 'round') or '0') then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[4])
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished_at', ARGV[6], 'merged_round', round)
redis.call('HINCRBY', KEYS[1], 'merges', 1)
redis.call('ZREM', KEYS[5], '#merge')
redis.call('HDEL', KEYS[6], '#merge')
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 100, '*', 'status', ARGV[3], 'round', round)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'type', 'job', 'status', ARGV[3], 'round', round)
return 1
