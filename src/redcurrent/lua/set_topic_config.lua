-- set_topic_config: change per-topic settings and bump the metadata version.
-- Slot:   {topic}
-- KEYS:   [1] topic meta hash
-- ARGV:   pairs of field, value; an empty value deletes the field
-- Reply:  {"OK", version} | {"UNKNOWN"}
if redis.call('EXISTS', KEYS[1]) == 0 then return {'UNKNOWN'} end
for i = 1, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return {'OK', redis.call('HINCRBY', KEYS[1], 'version', 1)}
