-- alter_partitions: grow a topic's partition count (never shrink).
-- Slot:   {topic}
-- KEYS:   [1] topic meta hash
-- ARGV:   [1] new partition count
-- Reply:  {"OK", old, new, version} | {"SAME", old} | {"SHRINK", old} | {"UNKNOWN"}
local cur = redis.call('HGET', KEYS[1], 'partitions')
if not cur then return {'UNKNOWN'} end
local old = tonumber(cur)
local new = tonumber(ARGV[1])
if new < old then return {'SHRINK', old} end
if new == old then return {'SAME', old} end
redis.call('HSET', KEYS[1], 'partitions', new)
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
return {'OK', old, new, version}
