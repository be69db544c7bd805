-- barrier: close one partition behind a growth with preserve_key_order (docs/architecture.md
-- §10). Atomically: the marker takes the new version, the barrier hash records that version
-- (the oldest routing version produce accepts from now on: a batch routed with the old
-- partition count is refused, STALE_ROUTE) and the stream's last entry id (the barrier id),
-- and every known group gets a gate at that id: its fetch hands out nothing past it until
-- the group has drained every partition up to its barrier and lifted the gate.
-- Slot:   {topic:partition}
-- KEYS:   [1] partition stream  [2] the partition's marker  [3] barrier hash
--         [4..] the gate key of each group of the topic
-- ARGV:   [1] the topic's new metadata version
--         [2] "xx": an existing partition (its marker must exist), "": a new one (created)
-- Reply:  {"OK", barrier id}   ("0-0" for an empty stream)
--         {"NOTOPIC"}          an existing partition without a marker: nothing written
if ARGV[2] == 'xx' then
  if not redis.call('SET', KEYS[2], ARGV[1], 'XX') then return {'NOTOPIC'} end
else
  redis.call('SET', KEYS[2], ARGV[1])
end
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local id = (newest[1] and newest[1][1]) or '0-0'
redis.call('HSET', KEYS[3], 'version', ARGV[1], 'id', id)
for i = 4, #KEYS do redis.call('SET', KEYS[i], id) end
return {'OK', id}
