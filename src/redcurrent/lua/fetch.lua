-- fetch: the fenced read. Check the owner token, ack what the caller handled, then
-- read the next entries for the group, all atomically, so a consumer that does not
-- own the partition can neither ack nor move an entry into its pending list.
-- Slot:   {topic:partition}
-- KEYS:   [1] partition stream  [2] owner key
-- ARGV:   [1] token  [2] group  [3] consumer  [4] count (0 = ack only)
--         [5] read id: ">" for new entries, or an id to re-read my own pending list after it
--         [6] "1" to restore the delivery counts of a re-read (a re-read after an ambiguous
--             or abandoned fetch by the same owner is not a new delivery), else "0"
--         [7] entry ids to ack first, joined by "," ("" for none): one argument, because
--             the client packs every argument in Python (a batch of 500 acks as 500
--             arguments cost more than decoding the batch)
-- Reply:  {"OK", last_id, id, attempts, f, v, k, h, x, t, id, ...}   flat, 8 per entry
--           last_id is the newest entry id of the stream ("0-0" if empty) when a ">" read
--           found nothing (what an idle wait blocks on), else "".
--           f is the integer 0 for an entry deleted while pending (trimmed).
--         {"FENCED"} | {"NOGROUP"}
local stream, owner = KEYS[1], KEYS[2]
local token, group, consumer, count, read_id = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
if redis.call('GET', owner) ~= token then return {'FENCED'} end
if ARGV[7] ~= '' then
  local ids, n = {}, 0
  for id in string.gmatch(ARGV[7], '[^,]+') do
    n = n + 1
    ids[n] = id
    if n == 1000 then  -- unpack() has a stack limit: ack in chunks
      if not pcall(redis.call, 'XACK', stream, group, unpack(ids)) then return {'NOGROUP'} end
      ids, n = {}, 0
    end
  end
  if n > 0 and not pcall(redis.call, 'XACK', stream, group, unpack(ids)) then return {'NOGROUP'} end
end
if count == 0 then return {'OK', ''} end
local ok, r = pcall(redis.call, 'XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
  'STREAMS', stream, read_id)
if not ok then
  if string.find(tostring(r and r.err or r), 'NOGROUP') then return {'NOGROUP'} end
  return redis.error_reply(tostring(r and r.err or r))
end
local entries = (r and r[1] and r[1][2]) or {}
local out = {'OK', ''}
if #entries == 0 then
  if read_id == '>' then
    local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
    out[2] = (last[1] and last[1][1]) or '0-0'
  end
  return out
end
local attempts = {}
if read_id ~= '>' then
  local pend = redis.call('XPENDING', stream, group, entries[1][1], entries[#entries][1],
    #entries, consumer)
  for _, p in ipairs(pend) do attempts[p[1]] = p[4] end
  if ARGV[6] == '1' then
    -- XREADGROUP counted this re-read as a delivery: put each count back, so the
    -- count stays the number of the next handler invocation (docs/architecture.md §6).
    for _, p in ipairs(pend) do
      if p[4] > 1 then
        redis.call('XCLAIM', stream, group, consumer, 0, p[1], 'RETRYCOUNT', p[4] - 1, 'JUSTID')
        attempts[p[1]] = p[4] - 1
      end
    end
  end
end
local slot = {f = 1, v = 2, k = 3, h = 4, x = 5, t = 6}
local n = 2
for _, e in ipairs(entries) do
  local vals = {'', '', '', '', '', ''}
  local fields = e[2]
  if fields then
    for i = 1, #fields, 2 do
      local s = slot[fields[i]]
      if s then vals[s] = fields[i + 1] end
    end
  else
    vals[1] = 0  -- trimmed: an integer, which no field value can be
  end
  out[n + 1] = e[1]
  out[n + 2] = attempts[e[1]] or 1
  for i = 1, 6 do out[n + 2 + i] = vals[i] end
  n = n + 8
end
return out
