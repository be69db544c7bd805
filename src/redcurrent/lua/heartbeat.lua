-- heartbeat: the group coordinator. Join, beat or leave; expire dead members; on any
-- change of membership or partition count bump the epoch and compute the assignment.
-- Slot:   {topic}
-- KEYS:   [1] topic meta hash  [2] topic groups set  [3] group members hash
--         [4] group deadlines zset  [5] group state hash
--         [6] fenced-members set (instances whose group an operator deleted)
-- ARGV:   [1] group  [2] member id  [3] instance id  [4] session_ms  [5] heartbeat_ms
--         [6] op: "join" | "beat" | "leave"  [7] member info json (join)
--         [8] assignor: "round_robin" | "sticky"
-- Reply:  {"OK", epoch, partitions, created_partitions, "p,p,...", rearmed}
--         {"FENCED"}             this member is not registered (its session expired): rejoin
--         {"REPLACED"}           a newer instance of this member id registered since: stop
--                                for good (Kafka's fenced instance id), never rejoin
--         {"DELETED"}            an operator deleted this group while this instance was in
--                                it: stop for good, never recreate it
--         {"UNKNOWN_TOPIC"}
-- Members hash values are "<instance>|<info json>". Deadlines are ms by Redis's clock.
redis.replicate_commands()
local meta, groups, members, deadlines, state = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local group, mid, inst = ARGV[1], ARGV[2], ARGV[3]
local session, hb, op, assignor = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[8]

local nparts = tonumber(redis.call('HGET', meta, 'partitions'))
if not nparts then return {'UNKNOWN_TOPIC'} end
if KEYS[6] and redis.call('SISMEMBER', KEYS[6], mid .. '|' .. inst) == 1 then
  if op == 'leave' then return {'OK', 0, nparts, 0, '', 0} end
  return {'DELETED'}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SADD', groups, group)

-- A beat that changes nothing reads only its own member's partitions ("m:<member>", a
-- comma list written with the assignment), never the whole assignment: its cost does not
-- grow with the group's partitions or members (docs/scaling.md).
local st = redis.call('HMGET', state, 'epoch', 'last_tick', 'partitions', 'm:' .. mid, 'created_partitions')
local epoch = tonumber(st[1]) or 0
local last_tick = tonumber(st[2])
local changed = false
local rearmed = 0

-- Coordinator gap: Redis was down, paused or failed over. Nobody missed a beat by
-- their own clock, so re-arm every deadline instead of expiring the whole group.
if last_tick and now - last_tick > math.max(session / 2, 3 * hb) then
  local all = redis.call('ZRANGE', deadlines, 0, -1)
  for _, m in ipairs(all) do redis.call('ZADD', deadlines, now + session, m) end
  if #all > 0 then rearmed = 1 end  -- an empty group has nobody to spare: not a gap
end
redis.call('HSET', state, 'last_tick', now)

local cur = redis.call('HGET', members, mid)
local mine = cur and string.sub(cur, 1, #inst + 1) == inst .. '|'
if op == 'join' then
  if not cur then changed = true end
  redis.call('HSET', members, mid, inst .. '|' .. ARGV[7])
  redis.call('ZADD', deadlines, now + session, mid)
elseif op == 'leave' then
  if mine then
    redis.call('HDEL', members, mid)
    redis.call('ZREM', deadlines, mid)
    changed = true
  end
else
  if not cur then return {'FENCED'} end
  if not mine then return {'REPLACED'} end
  redis.call('ZADD', deadlines, now + session, mid)
end

local dead = redis.call('ZRANGEBYSCORE', deadlines, '-inf', '(' .. now)
for _, m in ipairs(dead) do
  redis.call('HDEL', members, m)
  redis.call('ZREM', deadlines, m)
  changed = true
end

local created = tonumber(st[5])
if not created then
  created = nparts
  redis.call('HSET', state, 'created_partitions', created)
end
-- No "m:<member>" (a group assigned before that field existed, or a member the last
-- assignment did not know yet): recompute.
if tonumber(st[3]) ~= nparts or (not st[4] and op ~= 'leave') then changed = true end

local assignment
local prev_raw
if changed then prev_raw = redis.call('HGET', state, 'assignment') end
if changed then
  local ids = redis.call('HKEYS', members)
  table.sort(ids)
  assignment = {}
  for _, m in ipairs(ids) do assignment[m] = {} end
  if #ids > 0 then
    if assignor == 'sticky' and prev_raw then
      local prev = cjson.decode(prev_raw)
      local base, extra = math.floor(nparts / #ids), nparts % #ids
      local held = {}
      for _, m in ipairs(ids) do
        local keep = {}
        for _, p in ipairs(prev[m] or {}) do if p < nparts then keep[#keep + 1] = p end end
        table.sort(keep)
        held[m] = keep
      end
      -- members already holding more get the extra slots first: fewest moves
      local order = {}
      for i, m in ipairs(ids) do order[i] = m end
      table.sort(order, function(a, b)
        if #held[a] ~= #held[b] then return #held[a] > #held[b] end
        return a < b
      end)
      local quota, taken = {}, {}
      for i, m in ipairs(order) do quota[m] = base + ((i <= extra) and 1 or 0) end
      for _, m in ipairs(ids) do
        for _, p in ipairs(held[m]) do
          if #assignment[m] < quota[m] and not taken[p] then
            table.insert(assignment[m], p)
            taken[p] = true
          end
        end
      end
      local i = 1
      for p = 0, nparts - 1 do
        if not taken[p] then
          while #assignment[ids[i]] >= quota[ids[i]] do i = i + 1 end
          table.insert(assignment[ids[i]], p)
        end
      end
      for _, m in ipairs(ids) do table.sort(assignment[m]) end
    else
      for p = 0, nparts - 1 do
        table.insert(assignment[ids[(p % #ids) + 1]], p)
      end
    end
  end
  epoch = epoch + 1
  local encoded = cjson.encode(assignment)
  if #ids == 0 then encoded = '{}' end
  redis.call('HSET', state, 'epoch', epoch, 'partitions', nparts, 'assignment', encoded)
  local fields = {}
  for j, m in ipairs(ids) do
    local out = {}
    for i, p in ipairs(assignment[m]) do out[i] = tostring(p) end
    fields[#fields + 1] = 'm:' .. m
    fields[#fields + 1] = table.concat(out, ',')
    if #fields >= 2000 or j == #ids then  -- unpack() has a stack limit: HSET in chunks
      redis.call('HSET', state, unpack(fields))
      fields = {}
    end
  end
  if prev_raw then  -- forget the departed members' lists
    for m, _ in pairs(cjson.decode(prev_raw)) do
      if not assignment[m] then redis.call('HDEL', state, 'm:' .. m) end
    end
  end
  if op == 'leave' then return {'OK', epoch, nparts, created, '', rearmed} end
  local out = {}
  for i, p in ipairs(assignment[mid] or {}) do out[i] = tostring(p) end
  return {'OK', epoch, nparts, created, table.concat(out, ','), rearmed}
end

if op == 'leave' then return {'OK', epoch, nparts, created, '', rearmed} end
return {'OK', epoch, nparts, created, st[4], rearmed}
