-- commit_outputs: the fenced commit of transactional processing (docs/exactly-once.md, "Consume → produce").
-- Atomically: check the owner token of the input partition, ack the inputs handled, and
-- append each input's output records, but only for an input this call moves out of the
-- pending list (XACK answers 1): an input already acked (a commit retried after a lost
-- reply, or a seek) writes nothing again. Not the owner: nothing acked, nothing written.
-- Slot:   {T:P} of the input partition; every output partition shares it (on a cluster
--         the outputs are partition P of topics co-located with T; on one node any keys).
-- KEYS:   [1] input partition stream  [2] its owner key
--         then three per output partition j = 0, 1, ...: [3j+3] stream
--         [3j+4] its marker (topic-version key; absent: the topic was deleted)
--         [3j+5] its barrier hash (version: the oldest routing version accepted)
-- ARGV:   [1] token  [2] group  [3] input ids to ack with no output, joined by "," ("" none)
--         [4] m, the number of output partitions; then three per partition j:
--         [3j+5] maxlen ("" none, approximate)  [3j+6] minid ("" none, approximate)
--         [3j+7] the topic metadata version its records were routed with
--         then two per input with outputs, in stream order: its id, and its records
--         framed back to back, each preceded by its output partition index j (">I2")
--         (the record framing of produce.lua: see append_record in _prelude.lua)
--         optional last: "w" = announce each written output partition with SPUBLISH on
--         the shard channel named like its stream (idle consumers on a cluster, §8)
-- Reply:  {"OK", written, skipped, {version, ...}}  written: records appended; skipped:
--           inputs with outputs that were not pending (nothing written for them);
--           the marker's version of each output partition (growth notification)
--         {"FENCED"}            not the owner: nothing acked, nothing written
--         {"NOTOPIC", j}        output partition j has no marker: nothing acked or written
--         {"STALE_ROUTE", j, floor}  routed before a growth of j's topic with
--                               preserve_key_order: nothing acked or written; re-route
-- A vanished group (Redis restarted empty) acks nothing (XACK answers 0): nothing is
-- written, and the next fetch recreates the group and hands the inputs out again.
local stream, group = KEYS[1], ARGV[2]
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {'FENCED'} end
local m = tonumber(ARGV[4])
local versions = {}
for j = 0, m - 1 do
  local version = redis.call('GET', KEYS[3 * j + 4])
  if not version then return {'NOTOPIC', j} end
  local floor = redis.call('HGET', KEYS[3 * j + 5], 'version')
  if floor and tonumber(ARGV[3 * j + 7]) < tonumber(floor) then return {'STALE_ROUTE', j, tonumber(floor)} end
  versions[j + 1] = tonumber(version)
end
if ARGV[3] ~= '' then
  local ids, n = {}, 0
  for id in string.gmatch(ARGV[3], '[^,]+') do
    n = n + 1
    ids[n] = id
    if n == 1000 then redis.call('XACK', stream, group, unpack(ids)); ids, n = {}, 0 end
  end
  if n > 0 then redis.call('XACK', stream, group, unpack(ids)) end
end
local last, announce = #ARGV, false
if (last - 4 - 3 * m) % 2 == 1 then announce, last = ARGV[last] == 'w', last - 1 end
local written, skipped, touched = 0, 0, {}
for i = 4 + 3 * m + 1, last, 2 do
  if redis.call('XACK', stream, group, ARGV[i]) == 1 then
    local blob, pos = ARGV[i + 1], 1
    while pos <= #blob do
      local j
      j, pos = struct.unpack('>I2', blob, pos)
      local _, after = append_record(KEYS[3 * j + 3], blob, pos)
      pos = after
      touched[j] = true
      written = written + 1
    end
  else
    skipped = skipped + 1
  end
end
for j in pairs(touched) do
  local maxlen, minid = ARGV[3 * j + 5], ARGV[3 * j + 6]
  if maxlen ~= '' then redis.call('XTRIM', KEYS[3 * j + 3], 'MAXLEN', '~', maxlen) end
  if minid ~= '' then redis.call('XTRIM', KEYS[3 * j + 3], 'MINID', '~', minid) end
  if announce then redis.call('SPUBLISH', KEYS[3 * j + 3], '') end
end
return {'OK', written, skipped, versions}
