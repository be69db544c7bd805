-- fetch: the fenced read. Check the owner token, ack what the caller handled, then
-- read the next entries for the group, all atomically, so a consumer that does not
-- own the partition can neither ack nor move an entry into its pending list.
-- Slot:   {topic:partition}
-- KEYS:   [1] partition stream  [2] owner key  [3] the group's gate key on this partition
-- ARGV:   [1] token  [2] group  [3] consumer  [4] count (0 = ack only)
--         [5] read id: ">" for new entries, or an id to re-read my own pending list after it
--         [6] "1" to restore the delivery counts of a re-read (a re-read after an ambiguous
--             or abandoned fetch by the same owner is not a new delivery), else "0"
--         [7] entry ids to ack first, joined by "," ("" for none): one argument, because
--             the client packs every argument in Python (a batch of 500 acks as 500
--             arguments cost more than decoding the batch)
--         [8] the gate to lift ("" or absent: none): the barrier id of a growth with
--             preserve_key_order, once the caller has seen every partition of the topic
--             drained up to its own barrier (drained.lua). Lifted only if this partition is
--             drained too; fenced like everything here (docs/architecture.md §10).
-- Reply:  {"OK", last_id, entries, counts}; {"OK", ""} for count 0 (acks only)
--           entries: XREADGROUP's own entries, untouched: {{id, {field, value, ...}}, ...};
--           the fields are false (nil) for an entry deleted while pending (trimmed).
--           Returning them as they are costs the script nothing per entry; reshaping
--           them in Lua cost more than the read itself (measured with INFO commandstats).
--           counts: the delivery count of each entry, in order, for a re-read of my own
--           pending list; {} for a ">" read (every count is 1).
--           last_id is the newest entry id of the stream ("0-0" if empty) when a ">" read
--           found nothing (what an idle wait blocks on), else "".
--         {"BARRIER", gate, drained}  a ">" read with the gate closed: nothing up to the
--                      barrier id is left to deliver (drained: 1 if nothing at or below it
--                      is pending either), so nothing was read; acks were applied
--         {"FENCED"}   not the owner: nothing acked, nothing read
--         {"NOGROUP"}  the group vanished (Redis restarted empty): the caller recreates it
local stream, owner = KEYS[1], KEYS[2]
local token, group, consumer, count, read_id = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
if redis.call('GET', owner) ~= token then return {'FENCED'} end
if not ack_ids(stream, group, ARGV[7]) then return {'NOGROUP'} end
if count == 0 then return {'OK', ''} end
local gate = read_id == '>' and redis.call('GET', KEYS[3])
if gate then
  -- A growth's drain barrier: hand out nothing past the barrier id until lifted.
  local last, drained = gate_state(stream, group, gate)
  if not last then return {'NOGROUP'} end
  if drained and ARGV[8] == gate then
    redis.call('DEL', KEYS[3])
  else
    local upto = redis.call('XRANGE', stream, '(' .. last, gate, 'COUNT', count)
    if #upto == 0 then return {'BARRIER', gate, drained and 1 or 0} end
    count = #upto
  end
end
local entries, r = read_group(stream, group, consumer, count, read_id)
if not entries or #entries == 0 then return r end
if read_id == '>' then return {'OK', '', entries, {}} end
local pend = redis.call('XPENDING', stream, group, entries[1][1], entries[#entries][1],
  #entries, consumer)
local attempts = {}
for _, p in ipairs(pend) do
  local n = p[4]
  if ARGV[6] == '1' and n > 1 then
    -- XREADGROUP counted this re-read as a delivery: put each count back, so the
    -- count stays the number of the next handler invocation (docs/architecture.md §6).
    n = n - 1
    redis.call('XCLAIM', stream, group, consumer, 0, p[1], 'RETRYCOUNT', n, 'JUSTID')
  end
  attempts[p[1]] = n
end
local counts = {}
for i, e in ipairs(entries) do counts[i] = attempts[e[1]] or 1 end
return {'OK', '', entries, counts}
