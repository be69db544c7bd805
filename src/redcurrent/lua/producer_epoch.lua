-- producer_epoch: a transactional producer's epoch and the registry of its partitions.
-- Slot:   {transactional_id}
-- KEYS:   [1] the epoch (string, a counter)  [2] the partitions it ever wrote to (set of "T:P")
-- ARGV:   [1] "init": a new instance starts: bump the epoch.
--             Reply {epoch, "T:P", ...}: the new epoch and every registered partition, which
--             the new instance then fences (fence_producer) before its first write.
--         [1] "register", [2] the caller's epoch, [3...] "T:P": a partition about to get its
--             first write from this instance. Reply {"OK"}, or {"FENCED", epoch} if a newer
--             instance started (nothing registered): then the partitions it fences include
--             every one this instance registered, so none takes a write from it afterwards.
if ARGV[1] == 'init' then
  local epoch = redis.call('INCR', KEYS[1])
  local out = {epoch}
  for i, p in ipairs(redis.call('SMEMBERS', KEYS[2])) do out[i + 1] = p end
  return out
end
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur > tonumber(ARGV[2]) then return {'FENCED', cur} end
redis.call('SADD', KEYS[2], unpack(ARGV, 3))
return {'OK'}
