-- seek: move the group's position on a partition I own (Consumer.seek), fenced like
-- fetch and ack. What the group had pending there is acked, as Kafka's seek discards
-- the fetched buffer: entries before the new position count as handled, and entries
-- at or after it are delivered again by the next ">" read (a fresh delivery, attempt 1).
-- The group's last-delivered id then moves (XGROUP SETID), so whoever owns the
-- partition next, this consumer or a takeover, reads on from the new position.
-- A group that vanished (Redis restarted empty) is created at the new position.
-- Slot:   {topic:partition}
-- KEYS:   [1] partition stream  [2] owner key
-- ARGV:   [1] token  [2] group  [3] last-delivered id to set: the id just before the
--         first entry to hand out, "0" for the beginning, or "$" for the end
-- Reply:  {"OK", {acked id, ...}} | {"FENCED"} (nothing changed)
local stream, owner = KEYS[1], KEYS[2]
local token, group, position = ARGV[1], ARGV[2], ARGV[3]
if redis.call('GET', owner) ~= token then return {'FENCED'} end
local acked = {}
local ok, pend = pcall(redis.call, 'XPENDING', stream, group, '-', '+', 1000)
while ok and #pend > 0 do
  local ids = {}
  for i, p in ipairs(pend) do
    ids[i] = p[1]
    acked[#acked + 1] = p[1]
  end
  redis.call('XACK', stream, group, unpack(ids))
  pend = redis.call('XPENDING', stream, group, '-', '+', 1000)
end
if not pcall(redis.call, 'XGROUP', 'SETID', stream, group, position) then
  redis.call('XGROUP', 'CREATE', stream, group, position, 'MKSTREAM')
end
return {'OK', acked}
