-- release: ack what was handled, give the partition up, and forget my consumer name
-- on this stream if it holds no pending entry (XGROUP DELCONSUMER would drop them).
-- Slot:   {topic:partition}
-- KEYS:   [1] partition stream  [2] owner key
-- ARGV:   [1] token  [2] group  [3] consumer  [4...] entry ids to ack
-- Reply:  {"OK"} | {"FENCED"} (nothing acked, nothing released)
local stream, owner = KEYS[1], KEYS[2]
local token, group, consumer = ARGV[1], ARGV[2], ARGV[3]
if redis.call('GET', owner) ~= token then return {'FENCED'} end
if #ARGV > 3 then pcall(redis.call, 'XACK', stream, group, unpack(ARGV, 4)) end
redis.call('DEL', owner)
local ok, pend = pcall(redis.call, 'XPENDING', stream, group, '-', '+', 1, consumer)
if ok and #pend == 0 then pcall(redis.call, 'XGROUP', 'DELCONSUMER', stream, group, consumer) end
return {'OK'}
