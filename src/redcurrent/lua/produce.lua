-- produce: append batches of records to partitions, each batch at most once per producer
-- sequence. On a cluster a call carries one partition's batch (one slot, {topic:partition}),
-- or a transaction's batches when all their keys are in one slot; on a single server one
-- call may carry the batches of several partitions, of any topics, so a send_batch over 8
-- partitions costs one script call, not 8.
-- KEYS:   six per batch j = 0, 1, ...:
--         [6j+1] partition stream  [6j+2] producer sequence key (unused when ARGV[1] is "")
--         [6j+3] the partition's marker: the topic-version key, written by create_topic and
--                alter_partitions before the topic's metadata says the partition exists, and
--                deleted by delete_topic after the metadata. No marker: the partition is not
--                one of the topic's (deleted, or the server lost its data): write nothing.
--         [6j+4] the partition's barrier hash: its "version" is the oldest routing version
--                accepted since the last growth with preserve_key_order (none: any)
--         [6j+5] the partition's fence of this transactional producer: the highest epoch
--                it has seen (unused when ARGV[3] is "")
--         [6j+6] the partition's dedup-key prefix: a record's dedup key D is the key
--                prefix .. D (Keys.dedup; same hash tag, so the same slot)
-- ARGV:   [1] producer id ("" = not idempotent)  [2] how long a sequence is remembered, ms
--         [3] the producer's epoch ("" = no transactional_id)
--         [4] "T": a transaction: every batch is checked before any is written, and one
--             refusal writes nothing at all (the others answer ABORTED); "": each batch
--             on its own
--         then six per batch j:
--         [6j+5] maxlen ("" = none, approximate trim)  [6j+6] minid ("" = none, approximate)
--         [6j+7] sequence of the batch's first record
--         [6j+8] the topic metadata version the batch's records were routed with
--         [6j+9] the topic's dedup window in ms, or "" when no record of the batch has a
--                dedup key (then the plain loop runs: no per-record dedup work)
--         [6j+10] the records, framed back to back, each in one of two frames:
--                format 2 (the common record: no headers, no TTL, no dedup key), a
--                12-byte header struct ">BI4I4": 50 (the byte "2"), the field name's
--                length, the value's length; then the field name ("2", the codec letter,
--                the key type letter, the key bytes) and the value. Written as an entry
--                of that one field (docs/message-format.md).
--                format 1, a 15-byte header struct ">BBI4I4I4B": key type (0 none, 1 str,
--                2 bytes; +128: a dedup key follows the record), codec (0 json, 1 bytes,
--                2 custom), key len, value len, headers len, expiry len; then the key,
--                value, headers and expiry bytes; with +128, then a 2-byte length and
--                the dedup key. Written as an entry of fields f, v, k, h, x.
--                The first byte tells them apart: a key type is never 50.
--                (One argument per batch: per-argument packing is the client's cost.)
-- Reply:  one reply per batch, in the order of the batches:
--         {"OK", "id,id,...", version}    written now (the ids comma-joined: one bulk
--                                          string is far cheaper to read than one per id);
--                                          a record whose dedup key was seen within the
--                                          window is not written: its id is the first one's
--         {"DUP", "id,id,...", version}   this exact batch was written before: its ids
--         {"STALE", last_seq}             an older sequence: nothing written
--         {"NOTOPIC"}                     no marker: nothing written
--         {"STALE_ROUTE", floor, version} routed with a version older than the partition's
--                                          barrier (a growth with preserve_key_order since):
--                                          nothing written; refresh, re-route, resend
--         {"FENCED", epoch}               a newer instance of this transactional_id (epoch)
--                                          started: nothing written
--         {"ABORTED"}                     a transaction another batch of which was refused:
--                                          nothing written
--         version: the topic metadata version the marker holds; a producer that sees a
--         newer one than it knows refreshes its metadata at once (growth notification).
--         optional last ARGV (after the batches): "w" = announce each written batch with
--         SPUBLISH on the shard channel named like its stream (same slot), an empty
--         message; idle consumers on a cluster subscribe there (docs/architecture.md §8)
-- Outside a transaction a batch is checked and written on its own: one batch's NOTOPIC,
-- STALE, STALE_ROUTE or FENCED does not stop the others, and each keeps its own producer
-- sequence. The route check is one HGET per batch, never per record; it comes after the
-- replay, so a resent batch that was stored before the growth is answered DUP, never
-- written again elsewhere.
-- Transactional producers (ARGV[3] set): the sequence state also holds the epoch that
-- wrote it and a digest of the batch. A batch of a newer epoch starts a new sequence,
-- except when it is exactly the last batch an older epoch stored (same digest): that is
-- a new instance retrying what a crashed one sent, answered DUP (docs/exactly-once.md).

local pid = ARGV[1]
local window = ARGV[2]
local epoch = ARGV[3]
local txn = ARGV[4] == 'T'

-- The ids of a stored batch, from its sequence state (without the epoch prefix).
local function stored_ids(state)
  local kind, rest = string.match(state, '^%d+ %d+ (%a) (.*)$')
  if kind == 'C' then
    -- compact form "ms seq0 count": the ids ms-seq0 .. ms-(seq0+count-1)
    local ms, s0, cnt = string.match(rest, '^(%d+) (%d+) (%d+)$')
    local out = {}
    for i = 0, tonumber(cnt) - 1 do out[i + 1] = ms .. '-' .. (tonumber(s0) + i) end
    return table.concat(out, ',')
  end
  return rest
end

-- The ids of an earlier write of this batch, from the sequence state, or STALE.
local function replay(state, first)
  local last, prev_first = string.match(state, '^(%d+) (%d+) ')
  if first > tonumber(last) then return nil end
  if first ~= tonumber(prev_first) then return {'STALE', tonumber(last)} end
  return {'DUP', stored_ids(state)}
end

-- The plain batch's loop. A format-2 record is one field: the XADD takes its name and
-- value as they are framed. This is the hottest loop of the library: a Lua call or a
-- table per record is measurable here, so the format-1 record is inlined too.
local unpack_, sub = struct.unpack, string.sub
local function append(stream, blob)
  local ids, pos, n, last = {}, 1, 0, #blob
  while pos <= last do
    local kind, nlen, vlen, p = unpack_('>BI4I4', blob, pos)
    n = n + 1
    if kind == 50 then
      local vs = p + nlen
      pos = vs + vlen
      ids[n] = redis.call('XADD', stream, '*', sub(blob, p, vs - 1), sub(blob, vs, pos - 1))
    else
      local kt, codec, klen, hlen, xlen
      kt, codec, klen, vlen, hlen, xlen, p = unpack_('>BBI4I4I4B', blob, pos)
      local vs = p + klen
      local hs = vs + vlen
      ids[n] = xadd_record(stream, blob, kt, codec, p, vs, hs, hlen, xlen)
      pos = hs + hlen + xlen
    end
  end
  return ids, n
end

-- append, for a batch with dedup keys: a record whose key (prefix .. D) exists is not
-- written and takes the stored id; otherwise it is written and its id kept for `dwin` ms.
-- Only format-1 records carry a dedup key; a format-2 record is written as in append.
local function append_dedup(stream, blob, prefix, dwin)
  local ids, pos, n = {}, 1, 0
  while pos <= #blob do
    local kind, nlen, vlen, p = unpack_('>BI4I4', blob, pos)
    n = n + 1
    if kind == 50 then
      local vs = p + nlen
      pos = vs + vlen
      ids[n] = redis.call('XADD', stream, '*', sub(blob, p, vs - 1), sub(blob, vs, pos - 1))
    else
      local kt, codec, klen, hlen, xlen
      kt, codec, klen, vlen, hlen, xlen, p = unpack_('>BBI4I4I4B', blob, pos)
      local vs = p + klen
      local hs = vs + vlen
      local xe = hs + hlen + xlen
      local dkey
      if kt >= 128 then
        kt = kt - 128
        local dlen = unpack_('>H', blob, xe)
        dkey = prefix .. sub(blob, xe + 2, xe + 1 + dlen)
        pos = xe + 2 + dlen
      else
        pos = xe
      end
      local seen = dkey and redis.call('GET', dkey)
      if seen then
        ids[n] = seen
      else
        ids[n] = xadd_record(stream, blob, kt, codec, p, vs, hs, hlen, xlen)
        if dkey then redis.call('SET', dkey, ids[n], 'PX', dwin) end
      end
    end
  end
  return ids, n
end

-- Remember a batch's ids for a retry of it. Ids made by one script call are almost
-- always one ms with consecutive sequence numbers: store that compactly (never for a
-- batch with dedup keys: a deduplicated record's id is an older one).
local function remember(seq_key, first, ids, n, joined, plain, prefix)
  local ms1, s1 = string.match(ids[1], '^(%d+)-(%d+)$')
  local msn, sn = string.match(ids[n], '^(%d+)-(%d+)$')
  local ids_state
  if plain and ms1 == msn and tonumber(sn) - tonumber(s1) + 1 == n then
    ids_state = 'C ' .. ms1 .. ' ' .. s1 .. ' ' .. n
  else
    ids_state = 'L ' .. joined
  end
  redis.call('SET', seq_key, prefix .. (first + n - 1) .. ' ' .. first .. ' ' .. ids_state, 'PX', window)
end

-- Check batch j: its refusal or replay reply, or nil (write it). Also returns the
-- sequence-state prefix to remember it with (transactional producers: "epoch digest ").
local function check(j)
  local k, a = 6 * j, 6 * j
  local version = redis.call('GET', KEYS[k + 3])
  if not version then return {'NOTOPIC'}, '' end
  local first = tonumber(ARGV[a + 7])
  local prefix = ''
  if epoch ~= '' then
    local seen = tonumber(redis.call('GET', KEYS[k + 5]) or '0')
    local mine = tonumber(epoch)
    if mine < seen then return {'FENCED', seen}, '' end
    if mine > seen then redis.call('SET', KEYS[k + 5], epoch) end
    local digest = redis.sha1hex(ARGV[a + 10])
    prefix = epoch .. ' ' .. digest .. ' '
    local state = redis.call('GET', KEYS[k + 2])
    if state then
      local e, d, rest = string.match(state, '^(%d+) (%x+) (.*)$')
      if tonumber(e) == mine then
        local reply = replay(rest, first)
        if reply then
          if reply[1] == 'DUP' then reply[3] = version end
          return reply, prefix
        end
      elseif d == digest then
        -- the older epoch's last batch, sent again by this one: its ids, and the state is
        -- now this epoch's (as if this batch had written them), so its next batch follows
        local ids = stored_ids(rest)
        local _, commas = string.gsub(ids, ',', '')
        redis.call('SET', KEYS[k + 2], prefix .. (first + commas) .. ' ' .. first .. ' L ' .. ids, 'PX', window)
        return {'DUP', ids, version}, prefix
      end
    end
  elseif pid ~= '' then
    local state = redis.call('GET', KEYS[k + 2])
    if state then
      local reply = replay(state, first)
      if reply then
        if reply[1] == 'DUP' then reply[3] = version end
        return reply, prefix
      end
    end
  end
  local floor = redis.call('HGET', KEYS[k + 4], 'version')
  if floor and tonumber(ARGV[a + 8]) < tonumber(floor) then
    return {'STALE_ROUTE', tonumber(floor), version}, prefix
  end
  return nil, prefix, version
end

local announce = false
local function write(j, prefix, version)
  local k, a = 6 * j, 6 * j
  local stream, maxlen, minid = KEYS[k + 1], ARGV[a + 5], ARGV[a + 6]
  local dwin = ARGV[a + 9]
  local ids, n
  if dwin == '' then
    ids, n = append(stream, ARGV[a + 10])
  else
    ids, n = append_dedup(stream, ARGV[a + 10], KEYS[k + 6], dwin)
  end
  if maxlen ~= '' then redis.call('XTRIM', stream, 'MAXLEN', '~', maxlen) end
  if minid ~= '' then redis.call('XTRIM', stream, 'MINID', '~', minid) end
  local joined = table.concat(ids, ',')
  if pid ~= '' and n > 0 then
    remember(KEYS[k + 2], tonumber(ARGV[a + 7]), ids, n, joined, dwin == '', prefix)
  end
  if announce and n > 0 then redis.call('SPUBLISH', stream, '') end
  return {'OK', joined, version}
end

local replies = {}
local count = #KEYS / 6
announce = #ARGV == 4 + 6 * count + 1 and ARGV[#ARGV] == 'w'
if txn then
  -- every batch checked first; one refusal writes nothing at all
  local checked, refused = {}, false
  for j = 0, count - 1 do
    local reply, prefix, version = check(j)
    checked[j + 1] = {reply, prefix, version}
    if reply and reply[1] ~= 'DUP' then refused = true end
  end
  for j = 0, count - 1 do
    local c = checked[j + 1]
    if refused then
      replies[j + 1] = (c[1] and c[1][1] ~= 'DUP') and c[1] or {'ABORTED'}
    else
      replies[j + 1] = c[1] or write(j, c[2], c[3])
    end
  end
  return replies
end
for j = 0, count - 1 do
  local reply, prefix, version = check(j)
  replies[j + 1] = reply or write(j, prefix, version)
end
return replies
