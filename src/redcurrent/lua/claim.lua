-- claim: take ownership of a partition for a group, fenced by the owner key.
-- Succeeds only if the owner key is absent, already mine, or held by an older
-- instance of the same (static) member. Then takes over every pending entry of the
-- group on this stream (XAUTOCLAIM to me, JUSTID so delivery counts are kept) and
-- forgets other consumer names that hold nothing (never one with pending entries).
-- Slot:   {topic:partition}
-- KEYS:   [1] partition stream  [2] owner key  [3] the partition's barrier hash
--         [4] the group's gate key: a group created here after a growth with
--             preserve_key_order gets its gate at the barrier id (docs/architecture.md §10)
-- ARGV:   [1] token "<member>|<instance>"  [2] member prefix "<member>|"  [3] session_ms
--         [4] group  [5] consumer name  [6] start id if the group is missing ("$" or "0")
-- Reply:  {"OK", group_created (0/1), {deleted id, ...}} | {"BUSY", pttl_ms}
local stream, owner = KEYS[1], KEYS[2]
local token, prefix, session, group, consumer, start =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local cur = redis.call('GET', owner)
if cur and cur ~= token and string.sub(cur, 1, #prefix) ~= prefix then
  return {'BUSY', redis.call('PTTL', owner)}
end
redis.call('SET', owner, token, 'PX', session)

local created = 0
local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', stream, group, start, 'MKSTREAM')
if ok then
  created = 1
  local barrier = redis.call('HGET', KEYS[3], 'id')
  if barrier then redis.call('SET', KEYS[4], barrier) end
elseif not string.find(error_text(err), 'BUSYGROUP') then
  return redis.error_reply(error_text(err))
end

local deleted = {}
local cursor = '0-0'
repeat
  local r = redis.call('XAUTOCLAIM', stream, group, consumer, 0, cursor, 'COUNT', 1000, 'JUSTID')
  cursor = r[1]
  if r[3] then
    for _, id in ipairs(r[3]) do deleted[#deleted + 1] = id end
  end
until cursor == '0-0'

local consumers = redis.call('XINFO', 'CONSUMERS', stream, group)
for _, c in ipairs(consumers) do
  local name, pending
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1] elseif c[i] == 'pending' then pending = c[i + 1] end
  end
  if name ~= consumer and pending == 0 then
    redis.call('XGROUP', 'DELCONSUMER', stream, group, name)
  end
end
return {'OK', created, deleted}
