-- share_fetch: acquire entries of one partition for a share-group member. First the
-- entries whose acquisition lock expired (pending longer than lock_ms: their holder did
-- not acknowledge or renew in time, or released them), then new ones. Acquiring an entry
-- makes it pending to me with idle 0: that is my lock (docs/share-groups.md).
-- A re-acquisition counts one more delivery (RETRYCOUNT); a ">" read sets 1.
-- Slot:   {topic:partition}
-- KEYS:   [1] partition stream
-- ARGV:   [1] Redis group name ("share:G")  [2] consumer (the member id)
--         [3] count (0: only make sure the group exists)  [4] lock_ms
--         [5] XAUTOCLAIM cursor ("0-0" to start over)  [6] start id if the group is missing ("$" or "0")
-- Reply:  {"OK", next cursor, entries, counts, deleted}
--           entries: {{id, {field, value, ...}}, ...}, re-acquired ones first; fields are
--           false (nil) for an entry deleted while pending (Redis 6.2: trimmed)
--           counts: the delivery count of each entry, in order
--           deleted: ids XAUTOCLAIM found trimmed away and dropped (Redis 7+; {} on 6.2)
local stream = KEYS[1]
local group, consumer, count, lock_ms, cursor, start =
  ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]

local function create()
  local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', stream, group, start, 'MKSTREAM')
  if not ok and not string.find(error_text(err), 'BUSYGROUP') then return error_text(err) end
  return nil
end

if count == 0 then
  local err = create()
  if err then return redis.error_reply(err) end
  return {'OK', cursor, {}, {}, {}}
end

-- JUSTID, then the count and the fields one by one: Redis 6.2's XAUTOCLAIM answers a nil in
-- place of an entry deleted while pending, id and all, so the id would be lost.
local ok, r = pcall(redis.call, 'XAUTOCLAIM', stream, group, consumer, lock_ms, cursor, 'COUNT', count, 'JUSTID')
if not ok then
  if not string.find(error_text(r), 'NOGROUP') then return redis.error_reply(error_text(r)) end
  local err = create()  -- a new share group, a new partition, or a server that lost its data
  if err then return redis.error_reply(err) end
  r = redis.call('XAUTOCLAIM', stream, group, consumer, lock_ms, cursor, 'COUNT', count, 'JUSTID')
end
local entries, counts = {}, {}
for _, id in ipairs(r[2]) do
  local p = redis.call('XPENDING', stream, group, id, id, 1, consumer)
  local n = ((p[1] and p[1][4]) or 0) + 1  -- this acquisition is a delivery
  redis.call('XCLAIM', stream, group, consumer, 0, id, 'RETRYCOUNT', n, 'JUSTID')
  local e = redis.call('XRANGE', stream, id, id)
  entries[#entries + 1] = {id, (e[1] and e[1][2]) or false}
  counts[#counts + 1] = n
end
local deleted = r[3] or {}
if #entries < count then
  local new = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count - #entries,
    'STREAMS', stream, '>')
  for _, e in ipairs((new and new[1] and new[1][2]) or {}) do
    entries[#entries + 1] = e
    counts[#counts + 1] = 1
  end
end
return {'OK', r[1], entries, counts, deleted}
