-- fence_producer: raise a partition's fence of a transactional producer to a new epoch, so
-- the produce script refuses (FENCED) every batch of an older instance there.
-- Slot:   {topic:partition}
-- KEYS:   [1] the partition's fence of the producer (Keys.producer_fence)
--         [2] the partition's marker: no marker, no partition (its topic was deleted):
--             nothing to fence, and no key is left behind for it
-- ARGV:   [1] the new epoch
-- Reply:  the fence's epoch before (0: none; -1: no such partition)
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return cur
