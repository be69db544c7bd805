-- _prelude: not a script. scripts.py puts this text in front of every script it loads,
-- so the helpers below exist once. Keep it to local functions: it runs on every call.

-- The text of an error caught by pcall(redis.call, ...): Redis 7+ raises a table
-- {err = "..."}, Redis 6.2 the string itself.
local function error_text(e) return tostring(e and e.err or e) end

-- Where `group` stands on `stream` against a growth's barrier id `gate` (docs/architecture.md
-- §10): its last-delivered id (nil: no such group or stream), and whether it is drained:
-- nothing at or below the barrier is left to deliver, and nothing at or below it is pending.
local function gate_state(stream, group, gate)
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
  if not ok then return nil, false end
  for _, g in ipairs(groups) do
    local name, last
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
    end
    if name == group then
      if #redis.call('XRANGE', stream, '(' .. last, gate, 'COUNT', 1) > 0 then return last, false end
      return last, #redis.call('XPENDING', stream, group, '-', gate, 1) == 0
    end
  end
  return nil, false
end

-- The stream entry format field of a framed record: version 1, then the codec (j/b/c),
-- then the key type (n/s/b); indexed by codec * 3 + key type.
local RECORD_FMT = {[0] = '1jn', '1js', '1jb', '1bn', '1bs', '1bb', '1cn', '1cs', '1cb'}

-- XADD one framed record whose header is already unpacked: key type `kt` (no dedup
-- flag), `codec`, and the positions of its key (`p`), value (`vs`) and headers (`hs`)
-- in `blob`, with the headers' and expiry's lengths. Returns its id.
local function xadd_record(stream, blob, kt, codec, p, vs, hs, hlen, xlen)
  if kt ~= 0 and xlen == 0 then
    -- a key and no TTL (the usual shapes): no table to build and unpack
    if hlen == 0 then
      return redis.call('XADD', stream, '*', 'f', RECORD_FMT[codec * 3 + kt], 'v', string.sub(blob, vs, hs - 1),
        'k', string.sub(blob, p, vs - 1))
    end
    return redis.call('XADD', stream, '*', 'f', RECORD_FMT[codec * 3 + kt], 'v', string.sub(blob, vs, hs - 1),
      'k', string.sub(blob, p, vs - 1), 'h', string.sub(blob, hs, hs + hlen - 1))
  end
  local f = {'f', RECORD_FMT[codec * 3 + kt], 'v', string.sub(blob, vs, hs - 1)}
  if kt ~= 0 then f[5] = 'k'; f[6] = string.sub(blob, p, vs - 1) end
  if hlen > 0 then f[#f + 1] = 'h'; f[#f + 1] = string.sub(blob, hs, hs + hlen - 1) end
  if xlen > 0 then f[#f + 1] = 'x'; f[#f + 1] = string.sub(blob, hs + hlen, hs + hlen + xlen - 1) end
  return redis.call('XADD', stream, '*', unpack(f))
end

-- XADD the record framed at `pos` of `blob` to `stream`; returns its id and the position
-- after it. The framing (produce.lua's, docs/message-format.md) is a 15-byte header,
-- struct ">BBI4I4I4B": key type (0 none, 1 str, 2 bytes), codec (0 json, 1 bytes,
-- 2 custom), key len, value len, headers len, expiry len; then the key, value, headers
-- and expiry bytes.
local function append_record(stream, blob, pos)
  local kt, codec, klen, vlen, hlen, xlen, p = struct.unpack('>BBI4I4I4B', blob, pos)
  local vs = p + klen
  local hs = vs + vlen
  return xadd_record(stream, blob, kt, codec, p, vs, hs, hlen, xlen), hs + hlen + xlen
end

-- XACK the ids joined by "," in `csv` (one argument: the client packs every argument in
-- Python); false if the group is gone. unpack() has a stack limit: ack in chunks.
local function ack_ids(stream, group, csv)
  if csv == '' then return true end
  local ids, n = {}, 0
  for id in string.gmatch(csv, '[^,]+') do
    n = n + 1
    ids[n] = id
    if n == 1000 then
      if not pcall(redis.call, 'XACK', stream, group, unpack(ids)) then return false end
      ids, n = {}, 0
    end
  end
  return n == 0 or (pcall(redis.call, 'XACK', stream, group, unpack(ids)))
end

-- The group read of fetch.lua and fetch_many.lua: XREADGROUP's entries (untouched) and,
-- when there are none, the fetch reply to give ({"OK", last_id, {}, {}}: last_id is the
-- stream's newest id for a ">" read, what an idle wait blocks on). nil and the reply
-- ({"NOGROUP"} or the error) when the read failed.
local function read_group(stream, group, consumer, count, read_id)
  local ok, r = pcall(redis.call, 'XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
    'STREAMS', stream, read_id)
  if not ok then
    if string.find(error_text(r), 'NOGROUP') then return nil, {'NOGROUP'} end
    return nil, redis.error_reply(error_text(r))
  end
  local entries = (r and r[1] and r[1][2]) or {}
  if #entries > 0 then return entries end
  local last = ''
  if read_id == '>' then
    local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
    last = (newest[1] and newest[1][1]) or '0-0'
  end
  return entries, {'OK', last, entries, {}}
end
