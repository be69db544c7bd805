-- produce: append a batch of records to one partition, at most once per producer sequence.
-- Slot:   {topic:partition}
-- KEYS:   [1] partition stream  [2] producer sequence key (unused when ARGV[3] is "")
-- ARGV:   [1] maxlen ("" = none, approximate trim)  [2] minid ("" = none, approximate)
--         [3] producer id ("" = not idempotent)  [4] sequence of the first record
--         [5] how long the sequence is remembered, ms
--         then 7 per record: kt, k, c, v, t, h, x  ("" = field absent; kt "" = no key)
-- Reply:  {"OK", {id, ...}}          written now
--         {"DUP", {id, ...}}         this exact batch was written before: its ids
--         {"STALE", last_seq}        an older sequence: nothing written
local pid = ARGV[3]
local first = tonumber(ARGV[4])
if pid ~= '' then
  local state = redis.call('GET', KEYS[2])
  if state then
    local last, prev_first, ids = string.match(state, '^(%d+) (%d+) (.*)$')
    if first <= tonumber(last) then
      if first == tonumber(prev_first) then
        local out = {}
        for id in string.gmatch(ids, '[^,]+') do out[#out + 1] = id end
        return {'DUP', out}
      end
      return {'STALE', tonumber(last)}
    end
  end
end
local stream = KEYS[1]
local ids = {}
local n = (#ARGV - 5) / 7
for i = 0, n - 1 do
  local b = 6 + i * 7
  local f = {'f', '1', 't', ARGV[b + 4], 'c', ARGV[b + 2], 'v', ARGV[b + 3]}
  if ARGV[b] ~= '' then
    f[9] = 'kt'; f[10] = ARGV[b]; f[11] = 'k'; f[12] = ARGV[b + 1]
  end
  if ARGV[b + 5] ~= '' then f[#f + 1] = 'h'; f[#f + 1] = ARGV[b + 5] end
  if ARGV[b + 6] ~= '' then f[#f + 1] = 'x'; f[#f + 1] = ARGV[b + 6] end
  ids[i + 1] = redis.call('XADD', stream, '*', unpack(f))
end
if ARGV[1] ~= '' then redis.call('XTRIM', stream, 'MAXLEN', '~', ARGV[1]) end
if ARGV[2] ~= '' then redis.call('XTRIM', stream, 'MINID', '~', ARGV[2]) end
if pid ~= '' then
  redis.call('SET', KEYS[2], (first + n - 1) .. ' ' .. first .. ' ' .. table.concat(ids, ','),
    'PX', ARGV[5])
end
return {'OK', ids}
