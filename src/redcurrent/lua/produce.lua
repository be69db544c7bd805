-- produce: append a batch of records to one partition, at most once per producer sequence.
-- Slot:   {topic:partition}
-- KEYS:   [1] partition stream  [2] producer sequence key (unused when ARGV[3] is "")
--         [3] the partition's marker: the topic-version key, written by create_topic and
--             alter_partitions before the topic's metadata says the partition exists, and
--             deleted by delete_topic after the metadata. No marker: the partition is not
--             one of the topic's (deleted, or the server lost its data): write nothing.
-- ARGV:   [1] maxlen ("" = none, approximate trim)  [2] minid ("" = none, approximate)
--         [3] producer id ("" = not idempotent)  [4] sequence of the first record
--         [5] how long the sequence is remembered, ms
--         [6] the records, framed back to back; each is a 15-byte header
--             struct ">BBI4I4I4B": key type (0 none, 1 str, 2 bytes), codec (0 json,
--             1 bytes, 2 custom), key len, value len, headers len, expiry len;
--             then the key, value, headers and expiry bytes.
--             (One argument per batch: per-argument packing is the client's cost.)
-- Reply:  {"OK", {id, ...}, version}          written now
--         {"DUP", {id, ...}, version}         this exact batch was written before: its ids
--         {"STALE", last_seq}                 an older sequence: nothing written
--         {"NOTOPIC"}                         no marker: nothing written
--         version: the topic metadata version the marker holds; a producer that sees a
--         newer one than it knows refreshes its metadata at once (growth notification).
local version = redis.call('GET', KEYS[3])
if not version then return {'NOTOPIC'} end
local pid = ARGV[3]
local first = tonumber(ARGV[4])
if pid ~= '' then
  local state = redis.call('GET', KEYS[2])
  if state then
    local last, prev_first, kind, rest = string.match(state, '^(%d+) (%d+) (%a) (.*)$')
    if first <= tonumber(last) then
      if first ~= tonumber(prev_first) then return {'STALE', tonumber(last)} end
      local out = {}
      if kind == 'C' then
        -- compact form "ms seq0 count": the ids ms-seq0 .. ms-(seq0+count-1)
        local ms, s0, cnt = string.match(rest, '^(%d+) (%d+) (%d+)$')
        for i = 0, tonumber(cnt) - 1 do out[i + 1] = ms .. '-' .. (tonumber(s0) + i) end
      else
        for id in string.gmatch(rest, '[^,]+') do out[#out + 1] = id end
      end
      return {'DUP', out, version}
    end
  end
end
local stream = KEYS[1]
local ids = {}
-- the format field: version 1, then the codec (j/b/c), then the key type (n/s/b)
local FMT = {[0] = '1jn', '1js', '1jb', '1bn', '1bs', '1bb', '1cn', '1cs', '1cb'}
local blob = ARGV[6]
local pos, n = 1, 0
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
if ARGV[1] ~= '' then redis.call('XTRIM', stream, 'MAXLEN', '~', ARGV[1]) end
if ARGV[2] ~= '' then redis.call('XTRIM', stream, 'MINID', '~', ARGV[2]) end
if pid ~= '' and n > 0 then
  -- Remember this batch's ids for a retry of it. Ids made by one script call are
  -- almost always one ms with consecutive sequence numbers: store that compactly.
  local ms1, s1 = string.match(ids[1], '^(%d+)-(%d+)$')
  local msn, sn = string.match(ids[n], '^(%d+)-(%d+)$')
  local ids_state
  if ms1 == msn and tonumber(sn) - tonumber(s1) + 1 == n then
    ids_state = 'C ' .. ms1 .. ' ' .. s1 .. ' ' .. n
  else
    ids_state = 'L ' .. table.concat(ids, ',')
  end
  redis.call('SET', KEYS[2], (first + n - 1) .. ' ' .. first .. ' ' .. ids_state, 'PX', ARGV[5])
end
return {'OK', ids, version}
