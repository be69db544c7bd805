-- produce: append batches of records to partitions, each batch at most once per producer
-- sequence. On a cluster a call carries one partition's batch (one slot, {topic:partition});
-- on a single server one call may carry the batches of several partitions, of any topics,
-- so a send_batch over 8 partitions costs one script call, not 8.
-- KEYS:   four per batch j = 0, 1, ...:
--         [4j+1] partition stream  [4j+2] producer sequence key (unused when ARGV[1] is "")
--         [4j+3] the partition's marker: the topic-version key, written by create_topic and
--                alter_partitions before the topic's metadata says the partition exists, and
--                deleted by delete_topic after the metadata. No marker: the partition is not
--                one of the topic's (deleted, or the server lost its data): write nothing.
--         [4j+4] the partition's barrier hash: its "version" is the oldest routing version
--                accepted since the last growth with preserve_key_order (none: any)
-- ARGV:   [1] producer id ("" = not idempotent)  [2] how long a sequence is remembered, ms
--         then five per batch j:
--         [5j+3] maxlen ("" = none, approximate trim)  [5j+4] minid ("" = none, approximate)
--         [5j+5] sequence of the batch's first record
--         [5j+6] the topic metadata version the batch's records were routed with
--         [5j+7] the records, framed back to back; each is a 15-byte header
--                struct ">BBI4I4I4B": key type (0 none, 1 str, 2 bytes), codec (0 json,
--                1 bytes, 2 custom), key len, value len, headers len, expiry len;
--                then the key, value, headers and expiry bytes.
--                (One argument per batch: per-argument packing is the client's cost.)
-- Reply:  one reply per batch, in the order of the batches:
--         {"OK", "id,id,...", version}    written now (the ids comma-joined: one bulk
--                                          string is far cheaper to read than one per id)
--         {"DUP", "id,id,...", version}   this exact batch was written before: its ids
--         {"STALE", last_seq}             an older sequence: nothing written
--         {"NOTOPIC"}                     no marker: nothing written
--         {"STALE_ROUTE", floor, version} routed with a version older than the partition's
--                                          barrier (a growth with preserve_key_order since):
--                                          nothing written; refresh, re-route, resend
--         version: the topic metadata version the marker holds; a producer that sees a
--         newer one than it knows refreshes its metadata at once (growth notification).
--         optional last ARGV (after the batches): "w" = announce each written batch with
--         SPUBLISH on the shard channel named like its stream (same slot), an empty
--         message; idle consumers on a cluster subscribe there (docs/architecture.md §8)
-- A batch is checked and written on its own: one batch's NOTOPIC, STALE or STALE_ROUTE does
-- not stop the others, and each keeps its own producer sequence. The route check is one
-- HGET per batch, never per record; it comes after the replay, so a resent batch that was
-- stored before the growth is answered DUP, never written again elsewhere.

local pid = ARGV[1]
local window = ARGV[2]
-- the format field: version 1, then the codec (j/b/c), then the key type (n/s/b)
local FMT = {[0] = '1jn', '1js', '1jb', '1bn', '1bs', '1bb', '1cn', '1cs', '1cb'}

-- The ids of an earlier write of this batch, from the sequence state, or STALE.
local function replay(state, first)
  local last, prev_first, kind, rest = string.match(state, '^(%d+) (%d+) (%a) (.*)$')
  if first > tonumber(last) then return nil end
  if first ~= tonumber(prev_first) then return {'STALE', tonumber(last)} end
  if kind == 'C' then
    -- compact form "ms seq0 count": the ids ms-seq0 .. ms-(seq0+count-1)
    local ms, s0, cnt = string.match(rest, '^(%d+) (%d+) (%d+)$')
    local out = {}
    for i = 0, tonumber(cnt) - 1 do out[i + 1] = ms .. '-' .. (tonumber(s0) + i) end
    return {'DUP', table.concat(out, ',')}
  end
  return {'DUP', rest}
end

local function append(stream, blob)
  local ids, pos, n = {}, 1, 0
  while pos <= #blob do
    local kt, codec, klen, vlen, hlen, xlen, p = struct.unpack('>BBI4I4I4B', blob, pos)
    local vs = p + klen
    local hs = vs + vlen
    n = n + 1
    if hlen == 0 and xlen == 0 and kt ~= 0 then
      -- the common record (a key, no headers, no TTL): no table to build and unpack
      ids[n] = redis.call('XADD', stream, '*', 'f', FMT[codec * 3 + kt],
        'v', string.sub(blob, vs, hs - 1), 'k', string.sub(blob, p, vs - 1))
    else
      local f = {'f', FMT[codec * 3 + kt], 'v', string.sub(blob, vs, hs - 1)}
      if kt ~= 0 then f[5] = 'k'; f[6] = string.sub(blob, p, vs - 1) end
      if hlen > 0 then f[#f + 1] = 'h'; f[#f + 1] = string.sub(blob, hs, hs + hlen - 1) end
      if xlen > 0 then f[#f + 1] = 'x'; f[#f + 1] = string.sub(blob, hs + hlen, hs + hlen + xlen - 1) end
      ids[n] = redis.call('XADD', stream, '*', unpack(f))
    end
    pos = hs + hlen + xlen
  end
  return ids, n
end

-- Remember a batch's ids for a retry of it. Ids made by one script call are almost
-- always one ms with consecutive sequence numbers: store that compactly.
local function remember(seq_key, first, ids, n, joined)
  local ms1, s1 = string.match(ids[1], '^(%d+)-(%d+)$')
  local msn, sn = string.match(ids[n], '^(%d+)-(%d+)$')
  local ids_state
  if ms1 == msn and tonumber(sn) - tonumber(s1) + 1 == n then
    ids_state = 'C ' .. ms1 .. ' ' .. s1 .. ' ' .. n
  else
    ids_state = 'L ' .. joined
  end
  redis.call('SET', seq_key, (first + n - 1) .. ' ' .. first .. ' ' .. ids_state, 'PX', window)
end

local announce = #ARGV == 2 + 5 * (#KEYS / 4) + 1 and ARGV[#ARGV] == 'w'
local replies = {}
for j = 0, #KEYS / 4 - 1 do
  local stream, seq_key, marker = KEYS[4 * j + 1], KEYS[4 * j + 2], KEYS[4 * j + 3]
  local maxlen, minid, first = ARGV[5 * j + 3], ARGV[5 * j + 4], tonumber(ARGV[5 * j + 5])
  local reply
  local version = redis.call('GET', marker)
  if not version then
    reply = {'NOTOPIC'}
  elseif pid ~= '' then
    local state = redis.call('GET', seq_key)
    if state then
      reply = replay(state, first)
      if reply and reply[1] == 'DUP' then reply[3] = version end
    end
  end
  if not reply then
    local floor = redis.call('HGET', KEYS[4 * j + 4], 'version')
    if floor and tonumber(ARGV[5 * j + 6]) < tonumber(floor) then
      reply = {'STALE_ROUTE', tonumber(floor), version}
    end
  end
  if not reply then
    local ids, n = append(stream, ARGV[5 * j + 7])
    if maxlen ~= '' then redis.call('XTRIM', stream, 'MAXLEN', '~', maxlen) end
    if minid ~= '' then redis.call('XTRIM', stream, 'MINID', '~', minid) end
    local joined = table.concat(ids, ',')
    if pid ~= '' and n > 0 then remember(seq_key, first, ids, n, joined) end
    if announce and n > 0 then redis.call('SPUBLISH', stream, '') end
    reply = {'OK', joined, version}
  end
  replies[j + 1] = reply
end
return replies
