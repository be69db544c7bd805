-- refresh: extend my lease on a partition. Never recreates an expired owner key
-- (that would revive a zombie's lease); the caller claims again instead.
-- Slot:   {topic:partition}
-- KEYS:   [1] owner key
-- ARGV:   [1] token  [2] session_ms
-- Reply:  {"OK"} | {"ABSENT"} (the key expired: claim again) | {"FENCED"} (another owner)
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'OK'}
end
if not cur then return {'ABSENT'} end
return {'FENCED'}
