-- requeue: put one dead letter back on its partition, at most once per dead-letter id.
-- Slot:   {topic:partition}
-- KEYS:   [1] partition stream  [2] requeued-ids set of the group
-- ARGV:   [1] dead-letter id  [2] how long requeued ids are remembered, ms
--         [3...] field, value pairs of the new entry
-- Reply:  {"OK", new id} | {"DONE"} (already requeued before: nothing written)
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return {'DONE'} end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
-- Wake the partition's idle consumers on a cluster (docs/architecture.md §8): SPUBLISH on
-- the shard channel named like the stream; Redis 6.2 has no SPUBLISH, and needs none.
pcall(redis.call, 'SPUBLISH', KEYS[1], '')
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {'OK', id}
