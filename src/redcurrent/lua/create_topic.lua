-- create_topic: create a topic's metadata if it does not exist.
-- Slot:   {topic}
-- KEYS:   [1] topic meta hash
-- ARGV:   [1] partitions  [2] maxlen ("" = none)  [3] retention_ms ("" = none)
--         [4] ttl_ms ("" = none)  [5] dead_letter_expired ("1"/"0")
--         [6] dedup_window_ms (how long a dedup key is remembered; absent: 600000)
--         [7] colocate_with: the anchor topic ("" or absent = none)
-- Reply:  {"CREATED", partitions, version} | {"EXISTS", partitions, version}
redis.replicate_commands()
if redis.call('EXISTS', KEYS[1]) == 1 then
  local cur = redis.call('HMGET', KEYS[1], 'partitions', 'version')
  return {'EXISTS', tonumber(cur[1]), tonumber(cur[2])}
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'partitions', ARGV[1], 'version', 1, 'created_ms', now_ms,
  'dead_letter_expired', ARGV[5])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'maxlen', ARGV[2]) end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'retention_ms', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'ttl_ms', ARGV[4]) end
if ARGV[6] and ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'dedup_window_ms', ARGV[6]) end
if ARGV[7] and ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'colocate_with', ARGV[7]) end
return {'CREATED', tonumber(ARGV[1]), 1}
