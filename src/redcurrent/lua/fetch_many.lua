-- fetch_many: the fenced ">" read of several partitions of one consumer, in one call.
-- The idle waiter pipelines it right behind its blocking XREAD (single server only: the
-- keys span slots), so the partitions the read woke get their entries in the same round
-- trip (docs/architecture.md §8). Each partition is fetch.lua's ">" read, fenced alone.
-- KEYS:   three per partition j = 0, 1, ...: [3j+1] stream  [3j+2] owner key  [3j+3] gate key
-- ARGV:   [1] token  [2] group  [3] consumer; then three per partition j:
--         [3j+4] count  [3j+5] entry ids to ack first, joined by "," ("" for none)
--         [3j+6] the id the partition waits after: it reads only if its stream has an
--                entry after that id. One non-blocking XREAD over every partition of the
--                call tells which (most reads end with most partitions idle, and every
--                read that times out with all of them); acks are applied either way.
-- Reply:  one per partition, in order: fetch.lua's reply for a ">" read ({"OK", last_id,
--         entries, {}}, {"FENCED"}, {"NOGROUP"}), or {"AGAIN"}: a growth's barrier is
--         closed there (its acks were applied, nothing was read): the partition fetches
--         on its own, with fetch.lua, which stops at the barrier. {"OK", "", {}, {}} when
--         it had nothing new (FENCED is answered only to a partition that had acks or
--         something new).
local token, group, consumer = ARGV[1], ARGV[2], ARGV[3]
local n = #KEYS / 3
local probe = {'COUNT', 1, 'STREAMS'}
for j = 0, n - 1 do
  probe[4 + j] = KEYS[3 * j + 1]
  probe[4 + n + j] = ARGV[3 * j + 6]
end
local new = {}
for _, s in ipairs(redis.call('XREAD', unpack(probe)) or {}) do new[s[1]] = true end
local NOTHING = {'OK', '', {}, {}}
local out = {}
for j = 0, n - 1 do
  local stream, owner, gate = KEYS[3 * j + 1], KEYS[3 * j + 2], KEYS[3 * j + 3]
  local acks, reply = ARGV[3 * j + 5], NOTHING
  if acks == '' and not new[stream] then
    reply = NOTHING
  elseif redis.call('GET', owner) ~= token then
    reply = {'FENCED'}
  elseif not ack_ids(stream, group, acks) then
    reply = {'NOGROUP'}
  elseif not new[stream] then
    reply = NOTHING
  elseif redis.call('EXISTS', gate) == 1 then
    reply = {'AGAIN'}
  else
    local entries, r = read_group(stream, group, consumer, tonumber(ARGV[3 * j + 4]), '>')
    reply = (entries and #entries > 0) and {'OK', '', entries, {}} or r
  end
  out[j + 1] = reply
end
return out
