-- share_settle: what a share-group member does with an entry it holds, fenced by its
-- lock: the entry must be pending to this member, with the delivery count the member
-- was handed (a later delivery, even to the same member, is another lock), and idle
-- for less than lock_ms (Redis's clock decides expiry). Otherwise nothing changes.
-- Slot:   {topic:partition}
-- KEYS:   [1] partition stream
-- ARGV:   [1] Redis group name ("share:G")  [2] consumer (the member id)  [3] entry id
--         [4] the delivery count the member holds  [5] lock_ms
--         [6] op: "accept"  XACK: done
--                 "renew"   idle back to 0 (XCLAIM to me, JUSTID: the count stays)
--                 "release" handed to the released consumer name with an idle past any
--                           lock (XCLAIM IDLE): the next acquisition, by any member, takes
--                           it at once and counts a delivery; it is no longer this member's
--                 "return"  as release, and the delivery count put back by one: an entry
--                           acquired and never handed out (a member stopping)
--                 "check"   nothing: only whether the lock holds
--         [7] the released consumer name (keys.SHARE_RELEASED)
-- Reply:  {"OK"} | {"FENCED"} (the lock is not this member's, or expired: nothing changed)
local stream, group, consumer, id = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local held, lock_ms, op, released = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7]
-- An idle time no lock is as long as (31 years), and below Redis's clock, which XCLAIM
-- needs (a larger IDLE would be reset to 0).
local RELEASED_IDLE = 1000000000000

local ok, p = pcall(redis.call, 'XPENDING', stream, group, id, id, 1, consumer)
if not ok or not p[1] or p[1][4] ~= held or p[1][3] >= lock_ms then return {'FENCED'} end
if op == 'accept' then
  redis.call('XACK', stream, group, id)
elseif op == 'renew' then
  redis.call('XCLAIM', stream, group, consumer, 0, id, 'JUSTID')
elseif op == 'release' then
  redis.call('XCLAIM', stream, group, released, 0, id, 'IDLE', RELEASED_IDLE, 'JUSTID')
elseif op == 'return' then
  redis.call('XCLAIM', stream, group, released, 0, id, 'IDLE', RELEASED_IDLE,
    'RETRYCOUNT', math.max(0, held - 1), 'JUSTID')
elseif op ~= 'check' then
  return redis.error_reply('share_settle: unknown op ' .. op)
end
return {'OK'}
