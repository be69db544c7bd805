-- release: ack what was handled, give the partition up, and forget my consumer name
-- on this stream if it holds no pending entry (XGROUP DELCONSUMER would drop them).
-- A graceful release costs no message an attempt: each entry I read and did not
-- finish gets back the delivery count it had before I read it (the number of
-- handler invocations so far), so the next owner's re-read counts exactly one more.
-- Slot:   {topic:partition}
-- KEYS:   [1] partition stream  [2] owner key
-- ARGV:   [1] token  [2] group  [3] consumer  [4] n: how many ids to ack
--         [5 .. 4+n] entry ids to ack  [5+n ...] pairs: entry id, delivery count to set
-- Reply:  {"OK"} | {"FENCED"} (nothing acked, nothing released)
local stream, owner = KEYS[1], KEYS[2]
local token, group, consumer, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('GET', owner) ~= token then return {'FENCED'} end
if n > 0 then pcall(redis.call, 'XACK', stream, group, unpack(ARGV, 5, 4 + n)) end
for i = 5 + n, #ARGV - 1, 2 do
  -- XCLAIM of an id no longer pending does nothing; JUSTID keeps the count as set
  pcall(redis.call, 'XCLAIM', stream, group, consumer, 0, ARGV[i], 'RETRYCOUNT', ARGV[i + 1], 'JUSTID')
end
redis.call('DEL', owner)
local ok, pend = pcall(redis.call, 'XPENDING', stream, group, '-', '+', 1, consumer)
if ok and #pend == 0 then pcall(redis.call, 'XGROUP', 'DELCONSUMER', stream, group, consumer) end
return {'OK'}
