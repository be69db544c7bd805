-- share_leave: a stopping share-group member forgets its consumer name on one partition
-- if it holds nothing there (XGROUP DELCONSUMER drops a consumer's pending entries, so
-- never one that has any: docs/architecture.md §12). Checked and deleted atomically.
-- Slot:   {topic:partition}
-- KEYS:   [1] partition stream
-- ARGV:   [1] Redis group name ("share:G")  [2] consumer (the member id)
-- Reply:  {"OK", 1 if forgotten else 0}
local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if not ok or p[1] then return {'OK', 0} end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return {'OK', 1}
